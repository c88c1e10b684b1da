"""`soqa ask`: questions in, the trained model's answers out, code blocks highlighted.

    soqa ask "How to install numpy?"
    soqa ask -f questions.txt            # one question a line (# comments and blank lines skipped)
    printf 'q1\\nq2\\n' | soqa ask         # questions from stdin (or `soqa ask -`)

The model (models/qa-t5/, written by the train stage) writes Stack Overflow-style markdown:
prose, ``` fenced code, `inline` code, "- " list items. Answers are rendered with rich:
fenced code is syntax-highlighted, inline code styled. The generation settings are read now
from the `generate:` section of params.yaml (--params; the ones the evaluate stage uses), the
model's own defaults where there is no such file; the flags override them for one call.
A toy model (stages/model/caution.py) answers under a one-line caution.
"""
from __future__ import annotations

import argparse
import os
import re
import sys
from pathlib import Path
from typing import Any, Iterable, Sequence, TextIO

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")   # see stages/model/evaluate.py; before torch is imported
MODEL_DIR = Path("models") / "qa-t5"
PARAMS_FILE = Path("params.yaml")
NO_MODEL_HINT = "run `dvc repro` (or `make repro`) to train one first, or pass --model FOLDER"
_LANGUAGE_TAG = re.compile(r"[A-Za-z0-9_+#.-]{1,20}")


class AskError(RuntimeError):
    """A problem the user can fix (no model, no questions): printed as one line, exit status 1."""


# ----------------------------------------------------------------------------- questions
def parse_questions(lines: Iterable[str]) -> list[str]:
    """One question a line; blank lines and lines starting with # are skipped."""
    return [s for s in (ln.strip() for ln in lines) if s and not s.startswith("#")]


def collect_questions(args: argparse.Namespace, stdin: TextIO) -> list[str]:
    """Questions from the arguments, then from each --file, then from stdin ("-" or piped input)."""
    questions: list[str] = []
    read_stdin = "-" in args.questions or (not args.questions and not args.file and not stdin.isatty())
    questions += [q.strip() for q in args.questions if q != "-" and q.strip()]
    for path in args.file or []:
        if not path.is_file():
            raise AskError(f"question file {path} not found")
        questions += parse_questions(path.read_text(encoding="utf-8").splitlines())
    if read_stdin:
        questions += parse_questions(stdin.read().splitlines())
    if not questions:
        raise AskError('no question given: soqa ask "How to install numpy?" (or -f FILE, or questions on stdin)')
    return questions


# ----------------------------------------------------------------------------- answering
def load_model(model_dir: Path) -> tuple[Any, Any]:
    """(model, tokenizer) from `model_dir`, or AskError saying how to get one."""
    if not (model_dir / "config.json").is_file():
        raise AskError(f"no trained model at {model_dir}: {NO_MODEL_HINT}")
    from transformers.utils import logging as hf_logging

    from stages.core.errors import StageError
    from stages.model.evaluate import load_trained

    hf_logging.disable_progress_bar()        # "Loading weights" bars: noise above the answers
    try:
        return load_trained(model_dir)
    except (OSError, ValueError, StageError) as exc:
        raise AskError(f"the model at {model_dir} could not be loaded ({str(exc).splitlines()[0][:200]}): "
                       f"{NO_MODEL_HINT}") from None


def generation_settings(model: Any, params_file: Path, overrides: dict[str, Any]) -> dict[str, Any]:
    """params.yaml's `generate:` settings (what evaluate uses), else the model's own; flags on top."""
    from stages.core.params import load_params
    from stages.model.evaluate import GENERATE_KEYS

    if params_file.is_file():
        section = load_params(params_file).get("generate") or {}
        settings = {k: section[k] for k in GENERATE_KEYS if k in section}
    else:
        gc = model.generation_config
        settings = {k: getattr(gc, k) for k in GENERATE_KEYS if getattr(gc, k, None) is not None}
    settings.update({k: v for k, v in overrides.items() if v is not None})
    return settings


def model_caution(model: Any, model_dir: Path) -> str | None:
    """The caution line for a toy model (None for a real one), from the train stage's summary."""
    from stages.model.caution import caution, read_summary

    return caution(read_summary(model_dir, sum(p.numel() for p in model.parameters())))


def answer_questions(model: Any, tokenizer: Any, questions: Sequence[str], settings: dict[str, Any],
                     batch_size: int | None = None) -> list[str]:
    """The model's answers, in question order, generated in length-sorted batches."""
    from stages.model.evaluate import batch_size as auto_batch_size
    from stages.model.evaluate import decode_answers, generate_ids, generation_config
    from stages.model.prompt import format_source

    max_source = min(int(getattr(tokenizer, "model_max_length", 512) or 512), 4096)
    ids = tokenizer([format_source(q, None, include_body=False) for q in questions], truncation=True,
                    max_length=max_source)["input_ids"]
    gen = generate_ids(model, ids, generation_config(model, settings), batch_size or auto_batch_size("auto"),
                       tokenizer.pad_token_id, tokenizer.eos_token_id)
    return decode_answers(tokenizer, gen.sequences)


# ----------------------------------------------------------------------------- rendering
def _code_language(code: str, default: str) -> str:
    first = code.lstrip().split("\n", 1)[0]
    if first.startswith(">>>"):
        return "pycon"
    if re.match(r"(\$ |pip3? |python3? -m |conda |sudo |apt(-get)? )", first):
        return "console" if first.startswith("$ ") else "bash"
    return default


def to_markdown(answer: str, default_language: str = "python") -> str:
    """An answer as markdown rich renders well: every ``` block closed, on lines of its own, tagged.

    Text between an odd and the next even ``` is code, wherever the fences sit (a model may put
    them mid-line, or leave the last one open). A bare word right after an opening fence is
    its language tag when it names a known lexer; untagged blocks get a guess (shell commands,
    >>> sessions, else Python: these are Python answers).
    """
    from pygments.lexers import find_lexer_class_by_name
    from pygments.util import ClassNotFound

    parts = answer.split("```")
    out: list[str] = []
    for i, part in enumerate(parts):
        if i % 2 == 0:
            if part.strip():
                out.append(part.strip())
            continue
        tag, newline, rest = part.partition("\n")
        language = ""
        if newline and _LANGUAGE_TAG.fullmatch(tag.strip()):
            try:
                find_lexer_class_by_name(tag.strip())
                language, part = tag.strip(), rest
            except ClassNotFound:
                pass
        code = part.strip("\n") if "\n" in part.strip() else part.strip()   # a one-line block: trim spaces too
        if not code.strip():
            continue
        out.append(f"```{language or _code_language(code, default_language)}\n{code}\n```")
    return "\n\n".join(out)


def render(questions: Sequence[str], answers: Sequence[str], console: Any, raw: bool = False) -> None:
    """Each question as a heading line, then its answer (markdown with highlighted code, or raw text)."""
    from rich.markdown import Markdown
    from rich.rule import Rule
    from rich.text import Text

    for q, a in zip(questions, answers):
        console.print(Rule(Text(q, style="bold cyan"), align="left"))
        if raw:
            console.print(a, markup=False, highlight=False)
        elif a.strip():
            console.print(Markdown(to_markdown(a), code_theme="monokai", inline_code_lexer="python"))
        else:
            console.print(Text("(the model gave an empty answer)", style="dim italic"))
        console.print()


# ----------------------------------------------------------------------------- command
def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("questions", nargs="*", metavar="QUESTION",
                   help='questions to answer; "-" (or piping into soqa ask) reads more from stdin, one a line')
    p.add_argument("-f", "--file", type=Path, action="append", metavar="FILE",
                   help="a file of questions, one a line (# comments and blank lines skipped); repeatable")
    p.add_argument("--model", type=Path, default=MODEL_DIR, help=f"trained model folder (default {MODEL_DIR})")
    p.add_argument("--params", type=Path, default=PARAMS_FILE,
                   help=f"generation settings: the `generate:` section of this file (default {PARAMS_FILE}; "
                        "without it, the model's own)")
    p.add_argument("--max-new-tokens", type=int, help="answer length limit (default: generate.max_new_tokens)")
    p.add_argument("--num-beams", type=int, help="beam search width (default: generate.num_beams)")
    p.add_argument("--no-repeat-ngram-size", type=int, help="forbid repeating n-grams of this size (0: off)")
    p.add_argument("--repetition-penalty", type=float, help="penalty on tokens already generated (1.0: off)")
    p.add_argument("--raw", action="store_true", help="print the answers as plain text, no markdown rendering")


def run(args: argparse.Namespace, stdin: TextIO | None = None, console: Any = None) -> int:
    from stages.core.errors import StageError
    from stages.core.console import console_err

    stdin = sys.stdin if stdin is None else stdin
    if console is None:
        from rich.console import Console

        console = Console(highlight=False)
    try:
        questions = collect_questions(args, stdin)
        model, tokenizer = load_model(args.model)
        from stages.model.evaluate import set_cpu_threads

        set_cpu_threads(model, "auto")
        settings = generation_settings(model, args.params, {
            "max_new_tokens": args.max_new_tokens, "num_beams": args.num_beams,
            "no_repeat_ngram_size": args.no_repeat_ngram_size, "repetition_penalty": args.repetition_penalty})
        answers = answer_questions(model, tokenizer, questions, settings)
        warning = model_caution(model, args.model)
    except (AskError, StageError) as exc:
        console_err().print(f"[bold red]error[/] {exc}", soft_wrap=True, highlight=False)
        return 1
    if warning:
        from rich.text import Text

        console.print(Text(warning, style="bold yellow"), soft_wrap=True)
    render(questions, answers, console, raw=args.raw)
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="soqa ask", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(ap)
    return run(ap.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
