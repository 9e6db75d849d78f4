"""Starting a coordinator process: what every process-based backend shares.

The owner runs ``python -m accord.backends.<name>._coordinator``, writes its
configuration (JSON, one line) and any extra bytes to its stdin, and waits
for one line on its stdout: ``READY [json]`` once it serves, else
``ERROR ...``.  `spawn` is the owner's side; `launch_config` the fields
every coordinator reads.
"""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
from collections.abc import Callable
from typing import Any

from .._errors import CoordinatorStartFailed

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
