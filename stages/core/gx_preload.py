"""A Great Expectations preloader: GX is imported once per `dvc repro`, not once per stage.

A speed path for the quality gate, which stays the reference: `core.gate.validate` in the stage's
own process (runtime.gx_preload: false, or SOQA_GX_SERVER=0) gives the same report and the same
failure (tests/core/test_gx_preload.py), and any trouble with the server falls back to it.

Importing great_expectations costs 1.5-3 s (pydantic models of ~60 expectation classes; its
scipy.stats and altair, another second, are deferred: see core.gx_import), and each
of the seven data stages is its own process: on the 150k-post benchmark that was 16-30 s of a
42-58 s run spent importing the same library seven times. So the first stage starts this server
in the background (it imports GX while the stage transforms its rows),
and every stage's quality gate asks it to validate: the server forks a child per request, the
child already holds GX, runs exactly the gate `core.gate.validate` runs in-process (same
code, same data read from the stage's temporary outputs, same metrics and failure files) and
answers with the outcome. A forked child starts from a clean copy of the server, so nothing
leaks between validations, and its memory is returned when it exits.

The server belongs to one project folder and one version of the code: its socket's name hashes
the project root, the interpreter and every `stages/**/*.py` file, so an edited suite is never
checked by an old server (the old one exits when idle). It exits after SOQA_GX_SERVER_IDLE
seconds (default 20) without a request. Anything wrong with the server itself (cannot start,
dies, protocol error) makes the stage validate in-process instead, so a gate is never skipped;
SOQA_GX_SERVER=0 always validates in-process.

    python -m stages.core.gx_preload --root DIR --socket PATH   # started by the stages, not by hand
"""
from __future__ import annotations

import argparse
import contextlib
import errno
import fcntl
import hashlib
import importlib
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

from stages.core.errors import StageError

IDLE_SECONDS = float(os.environ.get("SOQA_GX_SERVER_IDLE", "20"))
START_TIMEOUT = 120.0       # GX import on a loaded 2-core machine took up to 10 s; be generous
START_GRACE = 10.0          # a started server holds its lock within this long, or it failed
_HEADER = struct.Struct("!I")


class ServerUnavailable(Exception):
    """The server could not answer: the caller validates in-process instead."""


def enabled(setting: bool = True) -> bool:
    """runtime.gx_preload, unless SOQA_GX_SERVER=0 turns it off for this process."""
    return setting and os.environ.get("SOQA_GX_SERVER", "1") not in ("0", "false", "False", "no")


CODE_DIR = Path(__file__).resolve().parents[1]      # stages/


def _code_key(root: Path, code_dir: Path = CODE_DIR) -> str:
    h = hashlib.sha256()
    h.update(str(root.resolve()).encode())
    h.update(sys.executable.encode())
    for p in sorted(code_dir.rglob("*.py")):
        h.update(p.name.encode())
        h.update(p.read_bytes())
    return h.hexdigest()[:20]


def socket_path(root: Path | None = None) -> Path:
    """Where the server for this project and this code listens (short: AF_UNIX paths are <108 bytes)."""
    base = Path(tempfile.gettempdir()) / f"soqa-gx-{os.getuid()}"
    base.mkdir(mode=0o700, exist_ok=True)
    if base.stat().st_uid != os.getuid():     # someone else's folder: never talk to their socket
        raise ServerUnavailable(f"{base} belongs to another user")
    return base / f"{_code_key(root or Path.cwd())}.sock"


def _lock_path(sock: Path) -> Path:
    return sock.with_suffix(".lock")


def _server_running(sock: Path) -> bool:
    """True while a server holds the lock of this socket (it holds it for its whole life)."""
    lock = _lock_path(sock)
    try:
        fd = os.open(lock, os.O_RDWR)       # no lock file: no server (only a server creates it)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return True
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    finally:
        os.close(fd)


def start(root: Path | None = None) -> None:
    """Start the server for this project in the background unless one runs (returns at once)."""
    root = (root or Path.cwd()).resolve()
    try:
        sock = socket_path(root)
        if _server_running(sock):
            return
        log = open(sock.with_suffix(".log"), "ab")
    except (OSError, ServerUnavailable):
        return          # no server: the stage validates in-process
    with log:
        # Its own session and no inherited pipes: `dvc repro` or a test capturing a stage's output
        # must not wait for the server to close them.
        subprocess.Popen([sys.executable, "-m", "stages.core.gx_preload", "--root", str(root), "--socket", str(sock)],
                         cwd=root, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                         start_new_session=True, close_fds=True)


# ----------------------------------------------------------------------------- wire format
def _send(conn: socket.socket, obj: Any) -> None:
    data = json.dumps(obj).encode()
    conn.sendall(_HEADER.pack(len(data)) + data)


def _recv_exact(conn: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = conn.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("connection closed mid-message")
        buf += chunk
    return bytes(buf)


def _recv(conn: socket.socket) -> Any:
    (n,) = _HEADER.unpack(_recv_exact(conn, _HEADER.size))
    return json.loads(_recv_exact(conn, n))


# ----------------------------------------------------------------------------- client
def validate(module: str, params: dict[str, Any], out: Path, workers: int) -> None:
    """Run `core.gate.validate` in the server; StageError as in-process, ServerUnavailable if it cannot."""
    root = Path.cwd().resolve()
    try:
        sock_path = socket_path(root)
    except OSError as exc:
        raise ServerUnavailable(f"socket folder: {exc}") from exc
    request = {"cwd": str(root), "module": module, "params": params, "out": str(Path(out).resolve()),
               "workers": workers}
    deadline = time.monotonic() + START_TIMEOUT
    spawned_at: float | None = None
    dropped = 0
    while True:
        if time.monotonic() > deadline:
            raise ServerUnavailable("server did not answer in time")
        conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            conn.connect(str(sock_path))
        except OSError as exc:
            conn.close()
            if exc.errno not in (errno.ENOENT, errno.ECONNREFUSED):
                raise ServerUnavailable(f"connect: {exc}") from exc
            if not _server_running(sock_path):
                # A server takes its lock within a second of starting; one that never does failed.
                if spawned_at is not None and time.monotonic() - spawned_at > START_GRACE:
                    raise ServerUnavailable("server exited without listening (see its .log)") from exc
                if spawned_at is None:
                    start(root)
                    spawned_at = time.monotonic()
            time.sleep(0.02)
            continue
        try:
            with conn:
                _send(conn, request)
                reply = _recv(conn)
        except TypeError as exc:        # params that JSON cannot carry: validate in-process
            raise ServerUnavailable(f"request: {exc}") from exc
        except (OSError, ValueError, struct.error) as exc:
            # A server that timed out idle just as we connected drops the connection: ask a new one.
            dropped += 1
            if dropped > 1:
                raise ServerUnavailable(f"protocol: {exc}") from exc
            spawned_at = None
            continue
        if reply.get("status") == "ok":
            return
        if reply.get("status") == "stage_error":
            raise StageError(reply["message"])
        raise ServerUnavailable(f"server failed: {reply.get('message', reply)}")


# ----------------------------------------------------------------------------- server
def _handle(conn: socket.socket) -> None:
    """In a forked child: one request, one reply."""
    from stages.core import gate
    from stages.core.executors import InProcess, make_executor

    try:
        req = _recv(conn)
        os.chdir(req["cwd"])
        stage = importlib.import_module(req["module"]).STAGE
        executor = make_executor(int(req["workers"])) if stage.suite.row_tables else InProcess()
        try:
            gate.validate(stage, req["params"], Path(req["out"]), executor)
        finally:
            executor.close()
        reply = {"status": "ok"}
    except StageError as exc:
        reply = {"status": "stage_error", "message": str(exc)}
    except BaseException:   # the client falls back to in-process validation, which shows the traceback
        reply = {"status": "crash", "message": traceback.format_exc(limit=5)}
    _send(conn, reply)


def _reap(children: set[int]) -> None:
    """Collect finished children (each is one validation)."""
    for pid in list(children):
        with contextlib.suppress(ChildProcessError):
            if os.waitpid(pid, os.WNOHANG)[0] == 0:
                continue
        children.discard(pid)


def serve(root: Path, sock_path: Path) -> None:
    lock_fd = os.open(_lock_path(sock_path), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return                          # another server for this key won the race
    sys.path.insert(0, str(root))
    from stages.core import gate  # noqa: F401  (imported before the fork: children start with it)
    from stages.core.gx_import import import_gx
    from stages.core.memory import keep_freed_memory

    keep_freed_memory()                 # its validation children read every output (see core.memory)
    import_gx()                         # the point of it all: GX imported before any request
    with contextlib.suppress(FileNotFoundError):
        sock_path.unlink()
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(sock_path))
    server.listen(8)
    # `kill` (the benchmark does it) still removes the socket and the lock on the way out.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    # Wake every second to reap finished validations (their CPU time then shows in this process's
    # children times, which the benchmark reads) and to count idle time.
    server.settimeout(1.0)
    children: set[int] = set()
    idle_since = time.monotonic()
    try:
        while True:
            try:
                conn, _ = server.accept()
            except socket.timeout:
                _reap(children)
                if children:
                    idle_since = time.monotonic()   # a validation still runs: not idle
                elif time.monotonic() - idle_since > IDLE_SECONDS:
                    break
                continue
            idle_since = time.monotonic()
            conn.settimeout(None)
            pid = os.fork()
            if pid == 0:
                code = 0
                try:
                    signal.signal(signal.SIGTERM, signal.SIG_DFL)
                    # The lock is the server's alone: a child outliving a killed server must not
                    # keep the next one from starting.
                    os.close(lock_fd)
                    server.close()
                    _handle(conn)
                except BaseException:
                    code = 1
                finally:
                    os._exit(code)
            conn.close()
            children.add(pid)
            _reap(children)
    finally:
        # Leave nothing behind but a log with something in it. (A client racing this exit may
        # start a second server on a fresh lock file; the loser idles out unused.)
        with contextlib.suppress(FileNotFoundError):
            sock_path.unlink()
        server.close()
        log = sock_path.with_suffix(".log")
        with contextlib.suppress(OSError):
            if log.stat().st_size == 0:
                log.unlink()
        with contextlib.suppress(FileNotFoundError):
            _lock_path(sock_path).unlink()
        os.close(lock_fd)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--root", type=Path, required=True)
    ap.add_argument("--socket", type=Path, required=True)
    args = ap.parse_args()
    serve(args.root.resolve(), args.socket)


if __name__ == "__main__":
    main()
