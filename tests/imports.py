"""The import graph of stages/, read from the source (imports inside functions included)."""
from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
STAGES = REPO / "stages"


def module_files() -> dict[str, Path]:
    """Module name -> file, for every module under stages/."""
    out = {}
    for p in sorted(STAGES.rglob("*.py")):
        parts = p.relative_to(REPO).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = p
    return out


def imports(path: Path, modules: dict[str, Path]) -> list[tuple[str, str, int]]:
    """(imported module, imported name or "", line) for every stages.* import in a file."""
    name = next(n for n, p in modules.items() if p == path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out += [(a.name, "", node.lineno) for a in node.names if a.name.split(".")[0] == "stages"]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            if base.split(".")[0] != "stages":
                continue
            for a in node.names:
                sub = f"{base}.{a.name}"
                out.append((sub, "", node.lineno) if sub in modules else (base, a.name, node.lineno))
    return out


def graph() -> dict[str, set[str]]:
    """Module -> the stages modules it imports."""
    modules = module_files()
    return {name: {m for m, _, _ in imports(path, modules) if m in modules} for name, path in modules.items()}


def closure(start: str, g: dict[str, set[str]] | None = None) -> set[str]:
    """`start` and every stages module it imports, directly or not."""
    g = g or graph()
    seen, todo = set(), [start]
    while todo:
        m = todo.pop()
        if m not in seen:
            seen.add(m)
            todo += g.get(m, ())
    return seen


def code_files(modules: set[str]) -> set[str]:
    """The repo-relative files of these modules, leaving out package files that hold only a docstring."""
    files = module_files()
    out = set()
    for m in modules:
        p = files[m]
        tree = ast.parse(p.read_text(encoding="utf-8"))
        if p.name == "__init__.py" and all(isinstance(n, ast.Expr) for n in tree.body):
            continue
        out.add(str(p.relative_to(REPO)))
    return out
