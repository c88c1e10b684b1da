"""`soqa ask` against a tiny T5 that has learned a few answers: every question gets its own
answer back, code blocks are highlighted, questions come from arguments, files and stdin, and a
missing model is a clear one-line error with a non-zero exit."""
from __future__ import annotations

import io
import re
from pathlib import Path

import pytest

from conftest import run
from stages.app import ask, cli
from tiny_t5 import PAIRS, build_tiny_t5, one_torch_thread

ANSI = re.compile(r"\x1b\[[0-9;]*m")


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    with one_torch_thread():
        yield


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_t5(tmp_path_factory.mktemp("ask") / "qa-t5")


NO_PARAMS = ["--params", "no-such-params.yaml"]      # the model's own generation settings


def _ask(argv: list[str], stdin: str = "", color: bool = False) -> tuple[int, str]:
    """Run `soqa ask ...` in-process; (exit status, what it printed). Without --params in argv, the
    model's own generation settings (not the repository's params.yaml)."""
    import argparse

    from rich.console import Console

    out = io.StringIO()
    console = Console(file=out, width=100, force_terminal=color, color_system="truecolor" if color else None,
                      highlight=False)
    ap = argparse.ArgumentParser()
    ask.add_arguments(ap)
    rc = ask.run(ap.parse_args(argv if "--params" in argv else NO_PARAMS + argv), stdin=io.StringIO(stdin),
                 console=console)
    return rc, out.getvalue()


def _sections(text: str) -> dict[str, str]:
    """Printed output split at the question rules: {question: the answer text below it}."""
    parts = re.split(r"^(.+?) ─+\s*$", ANSI.sub("", text), flags=re.M)
    return {parts[i].strip(): parts[i + 1] for i in range(1, len(parts) - 1, 2)}


def test_each_question_gets_its_learned_answer(model_dir: Path) -> None:
    questions = list(PAIRS)
    rc, out = _ask(["--model", str(model_dir), *questions])
    assert rc == 0
    sections = _sections(out)
    assert list(sections) == questions
    assert "pip install numpy" in sections["How to install Numpy?"]
    assert "c = a + b" in sections["How to add 2 lists together?"]
    assert "A tuple is immutable, a list is not." in sections["What is the difference between list and tuple?"]
    # Rendered, not raw: the fences are gone, the code stays.
    assert "```" not in out


def test_raw_prints_the_model_text_verbatim(model_dir: Path) -> None:
    rc, out = _ask(["--model", str(model_dir), "--raw", "How to add 2 lists together?"])
    assert rc == 0
    assert PAIRS["How to add 2 lists together?"] in out


def test_code_blocks_are_highlighted(model_dir: Path) -> None:
    rc, out = _ask(["--model", str(model_dir), "How to add 2 lists together?"], color=True)
    assert rc == 0
    code_line = next(ln for ln in out.splitlines() if "c" in ANSI.sub("", ln) and "+" in ANSI.sub("", ln)
                     and "Concatenate" not in ln)
    prose_line = next(ln for ln in out.splitlines() if "Concatenate" in ln)
    # The code block sits on the theme's background (a 24-bit background colour) with coloured tokens.
    assert "48;2;" in code_line and len(set(re.findall(r"38;2;[0-9;]+?m", code_line))) >= 2
    assert "48;2;" not in prose_line.split("Concatenate")[0]


def test_questions_from_file_and_stdin(model_dir: Path, tmp_path: Path) -> None:
    qfile = tmp_path / "questions.txt"
    qfile.write_text("# the seed's questions\nHow to install Numpy?\n\nHow to add 2 lists together?\n")
    rc, out = _ask(["--model", str(model_dir), "-f", str(qfile), "-"],
                   stdin="What is the difference between list and tuple?\n\n")
    assert rc == 0
    sections = _sections(out)
    assert list(sections) == ["How to install Numpy?", "How to add 2 lists together?",
                              "What is the difference between list and tuple?"]
    # Piped input without "-" is read too.
    rc, out = _ask(["--model", str(model_dir)], stdin="How to install Numpy?\n")
    assert rc == 0 and list(_sections(out)) == ["How to install Numpy?"]


def test_flags_override_the_model_generation_settings(model_dir: Path) -> None:
    rc, out = _ask(["--model", str(model_dir), "--raw", "--max-new-tokens", "3", "How to add 2 lists together?"])
    assert rc == 0
    answer = _sections(out)["How to add 2 lists together?"].strip()
    assert answer and PAIRS["How to add 2 lists together?"].startswith(answer)
    assert len(answer) < len(PAIRS["How to add 2 lists together?"]) / 2


def test_generation_settings_come_from_params_yaml_at_ask_time(model_dir: Path, tmp_path: Path) -> None:
    params = tmp_path / "params.yaml"
    params.write_text("generate:\n  max_new_tokens: 3\n  num_beams: 1\n  no_repeat_ngram_size: 0\n"
                      "  repetition_penalty: 1.0\n")
    question = "How to add 2 lists together?"
    rc, out = _ask(["--model", str(model_dir), "--params", str(params), "--raw", question])
    assert rc == 0
    answer = _sections(out)[question].strip()
    assert answer and PAIRS[question].startswith(answer) and len(answer) < len(PAIRS[question]) / 2
    settings = ask.generation_settings(None, params, {"num_beams": 2})
    assert settings == {"max_new_tokens": 3, "num_beams": 2, "no_repeat_ngram_size": 0, "repetition_penalty": 1.0}


def test_a_toy_model_answers_under_a_caution(model_dir: Path, tmp_path: Path) -> None:
    rc, out = _ask(["--model", str(model_dir), "How to install Numpy?"])
    first = out.splitlines()[0]
    assert rc == 0 and first.startswith("caution: a toy model (") and "training unknown" in first
    assert "pretrained checkpoint" in first and "GPU" in first
    # With the train stage's summary beside the weights, the line says what it was trained on.
    import shutil

    trained = shutil.copytree(model_dir, tmp_path / "qa-t5")
    (trained / "training.json").write_text('{"init": "scratch", "preset": "tiny", "parameters": 426368, '
                                           '"train_pairs": 39, "steps": 15}')
    rc, out = _ask(["--model", str(trained), "--raw", "How to install Numpy?"])
    assert rc == 0 and "(426,368 parameters, trained from scratch (preset tiny) on 39 question-answer pairs)" in out


def test_clear_errors(model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    rc, out = _ask(["--model", str(tmp_path / "nothing-here"), "How to install Numpy?"])
    assert rc == 1 and out == ""
    err = capsys.readouterr().err
    assert "no trained model at" in err and "dvc repro" in err
    rc, _ = _ask(["--model", str(model_dir)])
    assert rc == 1 and "no question given" in capsys.readouterr().err
    rc, _ = _ask(["--model", str(model_dir), "-f", str(tmp_path / "missing.txt")])
    assert rc == 1 and "missing.txt not found" in capsys.readouterr().err


def test_soqa_ask_without_a_trained_model(tmp_path: Path) -> None:
    """The installed `soqa` command, in a project where nothing was trained yet."""
    proc = run(["soqa", "ask", "How to install numpy?"], tmp_path, check=False)
    assert proc.returncode == 1
    assert "no trained model at models/qa-t5" in proc.stderr and "dvc repro" in proc.stderr
    assert "Traceback" not in proc.stderr and proc.stdout == ""


def test_cli_routes_ask(model_dir: Path, capsys: pytest.CaptureFixture) -> None:
    assert cli.main(["ask", "--model", str(model_dir), *NO_PARAMS, "--raw", "How to install Numpy?"]) == 0
    assert PAIRS["How to install Numpy?"] in capsys.readouterr().out


@pytest.mark.parametrize("text, expected", [
    ("Use pip:\n\n```\npip install numpy\n```", "Use pip:\n\n```bash\npip install numpy\n```"),
    ("```\nx = [1, 2]\n```", "```python\nx = [1, 2]\n```"),
    ("```python\nprint(1)\n```", "```python\nprint(1)\n```"),
    ("Try ``` c = a + b ``` here", "Try\n\n```python\nc = a + b\n```\n\nhere"),     # fences mid-line
    ("open it:\n```\nwith open('f') as f:\n    f.read()",
     "open it:\n\n```python\nwith open('f') as f:\n    f.read()\n```"),
    ("```\n>>> [1] + [2]\n[1, 2]\n```", "```pycon\n>>> [1] + [2]\n[1, 2]\n```"),
    ("```\n$ python -m venv env\n```", "```console\n$ python -m venv env\n```"),
    ("no code at all", "no code at all"),
    ("empty block ``````", "empty block"),
])
def test_to_markdown(text: str, expected: str) -> None:
    assert ask.to_markdown(text) == expected
