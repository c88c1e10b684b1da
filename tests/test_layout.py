"""The layout shows the design: imports flow core <- curate/model <- app, with no cycles (imports
inside functions count too), and a leading underscore means private to its file."""
from __future__ import annotations

from imports import graph, imports, module_files

LAYER = {"core": 0, "curate": 1, "model": 1, "app": 2}


def _layer(module: str) -> str:
    return module.split(".")[1] if module.count(".") >= 1 else ""


def test_no_module_imports_a_private_name_of_another():
    modules = module_files()
    found = [f"{path.relative_to(path.parents[2])}:{line}: {mod}.{name}"
             for path in modules.values() for mod, name, line in imports(path, modules)
             if name.startswith("_") or mod.rpartition(".")[2].startswith("_") and mod.rpartition(".")[2] != "__main__"]
    assert found == []


def test_imports_flow_one_way_between_layers():
    g = graph()
    wrong = []
    for mod, deps in g.items():
        if _layer(mod) not in LAYER:
            continue
        for dep in deps:
            here, there = _layer(mod), _layer(dep)
            if there in LAYER and (LAYER[there] > LAYER[here] or (LAYER[there] == LAYER[here] and there != here)):
                wrong.append(f"{mod} -> {dep}")
    assert wrong == []


def test_no_import_cycles():
    g = graph()
    cycles = []
    state: dict[str, int] = {}       # 1: on the current path, 2: done

    def visit(m: str, path: list[str]) -> None:
        state[m] = 1
        for d in sorted(g.get(m, ())):
            if state.get(d) == 1:
                cycles.append(" -> ".join(path[path.index(d):] + [d]))
            elif d not in state:
                visit(d, path + [d])
        state[m] = 2

    for m in sorted(g):
        if m not in state:
            visit(m, [m])
    assert cycles == []


def test_every_module_is_in_a_layer():
    assert {_layer(m) for m in module_files() if m != "stages"} == set(LAYER)


def test_the_checker_sees_what_it_must(tmp_path, monkeypatch):
    """The graph reader finds function-level imports, private names and package-relative imports."""
    import imports as imp

    pkg = tmp_path / "stages" / "core"
    pkg.mkdir(parents=True)
    (tmp_path / "stages" / "__init__.py").write_text("")
    (pkg / "__init__.py").write_text('"""doc"""\n')
    (pkg / "a.py").write_text("def f():\n    from stages.core.b import _hidden\n")
    (pkg / "b.py").write_text("from .a import f\n_hidden = 1\n")
    monkeypatch.setattr(imp, "REPO", tmp_path)
    monkeypatch.setattr(imp, "STAGES", tmp_path / "stages")
    g = imp.graph()
    assert g["stages.core.a"] == {"stages.core.b"} and g["stages.core.b"] == {"stages.core.a"}
    mods = imp.module_files()
    assert ("stages.core.b", "_hidden", 2) in imp.imports(mods["stages.core.a"], mods)
