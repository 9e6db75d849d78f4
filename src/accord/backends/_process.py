"""Starting a coordinator process: what every process-based backend shares.

The owner runs ``python -m accord.backends.<name>._coordinator``, writes its
configuration (JSON, one line) and any extra bytes to its stdin, and waits
for one line on its stdout: ``READY [json]`` once it serves, else
``ERROR ...``.  `spawn` is the owner's side, `coordinator_main` the
coordinator's; `launch_config` the fields every coordinator reads.
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import traceback
from collections.abc import Callable
from typing import Any

from .._core import _logging
from .._core._coordinator import Stop
from .._core._errors import CoordinatorStartFailed

START_TIMEOUT = 30.0  # seconds a coordinator may take to say READY


def launch_config(window: float, **fields: Any) -> dict[str, Any]:
    """A coordinator's configuration: `fields`, and what every coordinator
    needs (its owner, to exit with it; this process's import path, to
    unpickle the user's classes; the commit window)."""
    return {
        **fields,
        "owner_pid": os.getpid(),
        "sys_path": [p or os.getcwd() for p in sys.path],
        "window": window,
    }


def spawn(
    module: str, config: dict, extra: bytes, name: str, undo: Callable[[], Any]
) -> tuple[subprocess.Popen, bytes]:
    """Start a coordinator process (`python -m module`, `config` as JSON on
    its stdin, then `extra`); wait for its READY line: (process, line).
    On failure, kill it, call `undo()` and raise CoordinatorStartFailed."""
    process = subprocess.Popen(
        [sys.executable, "-m", module],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        close_fds=True,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(config["sys_path"])},
    )
    assert process.stdin is not None and process.stdout is not None  # both are PIPEs
    try:
        process.stdin.write(json.dumps(config).encode() + b"\n" + extra)
        process.stdin.close()
        line = _readline(process, START_TIMEOUT)
    except BaseException:
        process.kill()
        process.wait()
        undo()
        raise
    finally:
        process.stdout.close()
    if not line.startswith(b"READY"):
        process.kill()
        process.wait()
        undo()
        raise CoordinatorStartFailed(
            f"the coordinator of share {name!r} failed to start: {line.decode().strip()!r}"
        )
    return process, line


def _readline(process: subprocess.Popen, timeout: float) -> bytes:
    assert process.stdout is not None  # a PIPE
    ready, _, _ = select.select([process.stdout], [], [], timeout)
    if not ready:
        raise CoordinatorStartFailed(f"the coordinator did not start within {timeout} s")
    return process.stdout.readline()


def _stop(signum, frame):
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # once: let the stop finish
    raise Stop


def coordinator_main(serve: Callable[[dict, bytes, Callable[..., None]], Any]) -> None:
    """A coordinator process's ``main()``: read what the owner wrote
    (`spawn`), then ``serve(config, extra, ready)``, which calls
    ``ready(payload=None)`` once it serves (READY, with `payload` as JSON)
    and returns, or raises `Stop`, when the share closes.

    The owner decides when a coordinator stops: SIGINT (a Ctrl-C to the
    owner's process group) is ignored, SIGTERM raises `Stop` (once).  An
    error before READY becomes one ``ERROR`` line, which `spawn` raises in
    the owner; any error also goes to stderr, and the exit status is 1.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, _stop)
    _logging.to_stderr()
    config = json.loads(sys.stdin.buffer.readline())
    sys.path[:] = config["sys_path"]
    extra = sys.stdin.buffer.read()
    started = []

    def ready(payload: Any = None) -> None:
        print("READY" if payload is None else f"READY {json.dumps(payload)}", flush=True)
        # The owner stops reading here: what is printed later (by a shared
        # object's method, say) goes to stderr instead of a closed pipe.
        os.dup2(2, 1)
        started.append(True)

    try:
        serve(config, extra, ready)
    except Stop:
        pass
    except BaseException as exc:
        if not started:
            print(f"ERROR {type(exc).__name__}: {exc}", flush=True)
        traceback.print_exc()
        sys.exit(1)
