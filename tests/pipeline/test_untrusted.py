"""Untrusted content: no code paths that execute data, and HTML parsing that never reaches the network.

Dumps, model files and params come from people the user does not know. So nothing in stages/
unpickles (pickle, torch.load without weights_only, pandas.read_pickle, numpy allow_pickle),
runs downloaded code (trust_remote_code) or loads YAML with a code-building loader; and turning a
body's HTML into text fetches none of the URLs it names.
"""
from __future__ import annotations

import ast
import socket
from pathlib import Path

import pandas as pd
import pytest

from conftest import REPO, Listener
from stages.curate import strip_html as strip_mod

STAGE_FILES = sorted((REPO / "stages").rglob("*.py"))
UNPICKLING_MODULES = {"pickle", "cPickle", "_pickle", "dill", "cloudpickle", "shelve", "marshal", "joblib"}


def _call_name(node: ast.Call) -> str:
    """Dotted name of what is called: torch.load, pd.read_pickle, yaml.load, ..."""
    parts = []
    f = node.func
    while isinstance(f, ast.Attribute):
        parts.append(f.attr)
        f = f.value
    if isinstance(f, ast.Name):
        parts.append(f.id)
    return ".".join(reversed(parts))


def _kw(node: ast.Call, name: str) -> ast.expr | None:
    return next((k.value for k in node.keywords if k.arg == name), None)


def _is_true(node: ast.expr | None) -> bool:
    return isinstance(node, ast.Constant) and node.value is True


def unsafe_loads(source: str, filename: str) -> list[str]:
    """Every place in `source` that could execute what it loads."""
    found = []
    for node in ast.walk(ast.parse(source, filename)):
        where = f"{filename}:{getattr(node, 'lineno', '?')}"
        if isinstance(node, ast.Import):
            found += [f"{where}: import {a.name}" for a in node.names if a.name.split(".")[0] in UNPICKLING_MODULES]
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in UNPICKLING_MODULES:
            found.append(f"{where}: from {node.module} import ...")
        elif isinstance(node, ast.Call):
            name = _call_name(node)
            last = name.rsplit(".", 1)[-1]
            if name.endswith("torch.load") and not _is_true(_kw(node, "weights_only")):
                found.append(f"{where}: {name} without weights_only=True")
            if last in ("read_pickle", "to_pickle") or last == "load" and name.split(".")[0] in ("pickle", "dill", "joblib"):
                found.append(f"{where}: {name}")
            if last == "load" and name.split(".")[0] in ("np", "numpy") and _is_true(_kw(node, "allow_pickle")):
                found.append(f"{where}: {name}(allow_pickle=True)")
            if name in ("yaml.load", "yaml.load_all", "yaml.unsafe_load", "yaml.full_load"):
                found.append(f"{where}: {name} (use yaml.safe_load)")
            if _kw(node, "trust_remote_code") is not None and not (
                    isinstance(_kw(node, "trust_remote_code"), ast.Constant) and _kw(node, "trust_remote_code").value is False):
                found.append(f"{where}: {name}(trust_remote_code=...)")
            if _kw(node, "safe_serialization") is not None and not _is_true(_kw(node, "safe_serialization")):
                found.append(f"{where}: {name}(safe_serialization=...) saves a pickle")
            if _kw(node, "use_safetensors") is not None and not _is_true(_kw(node, "use_safetensors")):
                found.append(f"{where}: {name}(use_safetensors=...) may load a pickle")
        elif isinstance(node, ast.Dict):
            # trust_remote_code passed through a kwargs dict is just as bad.
            for k in node.keys:
                if isinstance(k, ast.Constant) and k.value == "trust_remote_code":
                    found.append(f"{where}: 'trust_remote_code' key")
    return found


def test_no_unpickling_or_remote_code_in_stages() -> None:
    assert STAGE_FILES, "no stage modules found"
    found = []
    for path in STAGE_FILES:
        found += unsafe_loads(path.read_text(encoding="utf-8"), str(path.relative_to(REPO)))
    assert found == []


@pytest.mark.parametrize("snippet, expected", [
    ("import pickle", 1),
    ("from joblib import load", 1),
    ("import torch\nstate = torch.load(p)", 1),
    ("import torch\nstate = torch.load(p, weights_only=False)", 1),
    ("import torch\nstate = torch.load(p, weights_only=True)", 0),
    ("df = pd.read_pickle(p)", 1),
    ("a = np.load(p, allow_pickle=True)", 1),
    ("a = np.load(p)", 0),
    ("cfg = yaml.load(fh, Loader=yaml.Loader)", 1),
    ("cfg = yaml.safe_load(fh)", 0),
    ("m = AutoModel.from_pretrained(p, trust_remote_code=True)", 1),
    ("m = AutoModel.from_pretrained(p, **{'trust_remote_code': True})", 1),
    ("m.save_pretrained(p, safe_serialization=False)", 1),
    ("m.save_pretrained(p)", 0),
    ("# pickle is mentioned in a comment only\nx = 1", 0),
])
def test_the_scan_catches_each_unsafe_load(snippet: str, expected: int) -> None:
    # The scan above is only worth something if it finds what it looks for.
    assert len(unsafe_loads(snippet, "snippet.py")) == expected


def hostile_bodies(host: str) -> list[str]:
    """HTML that names remote resources in every way a browser or an XML/HTML library might follow."""
    u = f"http://{host}"
    return [
        f'<p>see <img src="{u}/img.png" srcset="{u}/2x.png 2x"> visible01</p>',
        f'<link rel="stylesheet" href="{u}/s.css"><p>visible02</p>',
        f'<script src="{u}/x.js"></script><script>fetch("{u}/inline")</script><p>visible03</p>',
        f'<iframe src="{u}/frame"></iframe><object data="{u}/obj"></object><embed src="{u}/e"><p>visible04</p>',
        f'<style>@import url("{u}/i.css"); p {{ background: url({u}/bg.png) }}</style><p>visible05</p>',
        f'<base href="{u}/"><meta http-equiv="refresh" content="0;url={u}/r"><p>visible06</p>',
        f'<svg><image href="{u}/svg.png"/><use xlink:href="{u}/sprite.svg#a"/></svg><p>visible07</p>',
        f'<video poster="{u}/p.jpg"><source src="{u}/v.mp4"></video><audio src="{u}/a.mp3"></audio><p>visible08</p>',
        f'<!DOCTYPE html SYSTEM "{u}/html.dtd"><p>visible09</p>',
        f'<!DOCTYPE p [<!ENTITY xxe SYSTEM "{u}/xxe">]><p>&xxe; visible10</p>',
        f'<?xml-stylesheet href="{u}/x.xsl"?><p>visible11</p><pre><code>&lt;img src="{u}/code.png"&gt;</code></pre>',
        f'<form action="{u}/post"><input src="{u}/in.png" type="image"></form><a href="{u}/link">visible12</a>',
    ]


@pytest.mark.parametrize("engine", sorted(strip_mod.ENGINES))
def test_html_parsing_fetches_nothing(engine: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Sockets are blocked in this process, and a local listener would see any C-level fetch (libxml2)."""
    listener = Listener()
    bodies = hostile_bodies(listener.host)

    def refuse(*args, **kwargs):
        raise AssertionError(f"network access while parsing HTML: {args!r}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    df = pd.DataFrame({"id": pd.array(range(1, len(bodies) + 1), dtype="Int64"), "body": bodies})
    res = strip_mod.transform_frame("answers", df, engine)
    monkeypatch.undo()
    try:
        assert listener.connections() == 0
    finally:
        listener.sock.close()
    texts = res.kept["body"].tolist()
    assert len(texts) == len(bodies) and res.rejected.empty
    # The visible text survives; script and style bodies and the URLs of resources do not
    # become prose (a URL may stay only as literal code).
    joined = "\n".join(texts)
    for i, text in enumerate(texts, start=1):
        assert f"visible{i:02d}" in text, text
    assert "fetch(" not in joined and "@import" not in joined
    assert all(listener.host not in t for t in texts if "```" not in t), texts
