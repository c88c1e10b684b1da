"""Dependencies that mean something: each dvc.yaml stage depends on its own code, the core modules
it imports, its inputs and the params it reads; nothing lists the runtime settings, so changing
them reruns nothing."""
from __future__ import annotations

import importlib
from pathlib import Path

import pytest
import yaml

from conftest import REPO, run
from imports import closure, code_files, graph

# Runtime-only code: the GX preloader runs the same gate (core/gate.py, a dependency) in another process;
# the Ray executor runs the same jobs on a cluster (same bytes: tests/core/test_ray_executor.py).
RUNTIME_ONLY = {"stages/core/gx_preload.py", "stages/core/ray_executor.py"}
DVC = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]


def _module(cmd: str) -> str:
    assert cmd.startswith("python -m "), cmd
    return cmd.split()[2]


def _code_deps(deps: list) -> set[str]:
    return {d for d in deps if d.startswith("stages/")}


@pytest.mark.parametrize("name", sorted(DVC))
def test_code_deps_are_exactly_the_modules_the_stage_imports(name):
    stage = DVC[name]
    module = _module(stage["cmd"])
    main = module if (REPO / (module.replace(".", "/") + ".py")).exists() else f"{module}.__main__"
    expected = code_files(closure(main, graph())) - RUNTIME_ONLY
    if name == "evaluate":       # loaded by path (evaluate.load), not imported
        from stages.model.evaluate import ROUGE_MODULE

        expected.add(str((ROUGE_MODULE / "rouge.py").relative_to(REPO)))
    assert _code_deps(stage["deps"]) == expected


@pytest.mark.parametrize("name", sorted(DVC))
def test_no_stage_lists_a_runtime_setting(name):
    params = DVC[name].get("params", [])
    assert not [p for p in params if str(p).split(".")[0] == "runtime"]
    assert not [d for d in DVC[name]["deps"] if d in RUNTIME_ONLY]


@pytest.mark.parametrize("name", ["ingest", "strip_html", "validate_utf", "filter_upvotes", "dedup", "top_answers", "split",
                                  "shard"])
def test_a_data_stage_entry_is_its_declaration(name):
    stage = DVC[name]
    decl = importlib.import_module(_module(stage["cmd"])).STAGE
    assert decl.name == name and decl.module == _module(stage["cmd"])
    assert [d for d in stage["deps"] if not d.startswith("stages/")] == list(decl.reads)
    assert stage.get("params", []) == list(decl.params)
    assert stage["outs"] == [decl.writes, f"data/rejects/{name}.parquet"]


@pytest.mark.slow
def test_changing_runtime_settings_reruns_nothing(project: Path):
    run(["dvc", "repro", "shard"], project)
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["runtime"] = {"workers": 1, "batch_rows": 7, "executor": "local", "gx_preload": False}
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    assert "up to date" in run(["dvc", "status", "--with-deps", "shard"], project).stdout
    params["filter"]["min_score"] = 3       # a result knob: the check above can fail
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    assert "filter_upvotes" in run(["dvc", "status", "--with-deps", "shard"], project).stdout
