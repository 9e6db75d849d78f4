"""``accord coordinator URL --name NAME``: run a share's coordinator as a service.

The coordinator of a redis share can run anywhere that reaches the Redis
server — on a machine of its own, under systemd or a batch scheduler.  It
waits until no other coordinator holds the share (so a second one is a hot
standby), takes it over from the last committed state, and runs until the
share is closed.  The share's key comes from ``$ACCORD_KEY`` or
``--key-file``; classes of shared objects must be importable here
(``PYTHONPATH``) unless they were shipped by value.

`main(argv)` is the whole command; `add_arguments`/`run` let another CLI
(``accord``) register it as a subcommand.
"""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "url", help="the Redis URL the share was created with (redis://, rediss://)"
    )
    parser.add_argument("--name", required=True, help="the share's name")
    parser.add_argument(
        "--key-file", type=Path, help="file holding the share's key (default: $ACCORD_KEY)"
    )
    parser.add_argument(
        "--wait",
        type=float,
        default=None,
        help="give up if another coordinator still holds the share after this many "
        "seconds (default: wait for ever, as a standby)",
    )
    parser.add_argument(
        "--commit-window", type=float, default=0.002, help="seconds (default 0.002)"
    )


def run(
    url: str,
    name: str,
    key_file: Path | None = None,
    wait: float | None = None,
    commit_window: float = 0.002,
) -> int:
    """Coordinate share `name` at `url` until it is closed; the exit status."""
    from ._errors import AccordError
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="accord coordinator", description=__doc__.splitlines()[0])
    add_arguments(parser)
    args = parser.parse_args(argv)
    return run(args.url, args.name, args.key_file, args.wait, args.commit_window)


if __name__ == "__main__":
    sys.exit(main())
