"""``accord coordinator URL --name NAME``: run a share's coordinator as a service.

The coordinator of a redis share can run anywhere that reaches the Redis
server — on a machine of its own, under systemd or a batch scheduler.  It
waits until no other coordinator holds the share (so a second one is a hot
standby), takes it over from the last committed state, and runs until the
share is closed.  The share's key comes from ``$ACCORD_KEY`` or
``--key-file``; classes of shared objects must be importable here
(``PYTHONPATH``) unless they were shipped by value.

`run` is the command's body; ``accord coordinator`` (src/accord/cli.py)
parses the arguments.
"""

from __future__ import annotations

import signal
import sys
from pathlib import Path


def run(
    url: str,
    name: str,
    key_file: Path | None = None,
    wait: float | None = None,
    commit_window: float = 0.002,
) -> int:
    """Coordinate share `name` at `url` until it is closed; the exit status."""
    from ._core._errors import AccordError
    from .backends.redis._coordinator import serve
    from .backends.redis._launch import info_for

    key = key_file.read_bytes().strip() if key_file is not None else None
    try:
        info = info_for(url, name, key, create=False)
    except (AccordError, ValueError) as exc:
        print(f"accord coordinator: {exc}", file=sys.stderr)
        return 2

    def ready(lost):
        print(f"accord coordinator: holding {info.where()}", file=sys.stderr, flush=True)
        for each in lost:
            print(f"accord coordinator: could not restore share.{each}", file=sys.stderr)

    def stop(signum, frame):
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # once: let the stop finish
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    try:
        why = serve(info, commit_window, wait=wait, ready=ready)
    except KeyboardInterrupt:
        why = "stopped by a signal"
    except AccordError as exc:
        print(f"accord coordinator: {exc}", file=sys.stderr)
        return 1
    print(f"accord coordinator: {why}", file=sys.stderr)
    return 0
