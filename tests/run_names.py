"""Names of the shares and segments tests choose, unique to this run of the
suite: two suites of one user running at once (two worktrees, CI beside a
developer) never meet on a name, and the end-of-session leftover check
(conftest) counts only this run's.  Workers started by a test inherit the
prefix through the environment, so a name computed there is the same."""

from __future__ import annotations

import os

PREFIX = os.environ.setdefault("ACCORD_TEST_RUN", f"test-{os.getpid()}-")


def share_name(label: str) -> str:
    """``test-<pid of the pytest process>-<label>``."""
    return PREFIX + label


def ours(name: str) -> bool:
    """Whether a share name (or a segment's, less its ``accord.<uid>.``)
    is this run's: an anonymous share's carries our pid, a named one this
    run's prefix."""
    return name.startswith((f"anon-{os.getpid()}-", PREFIX))


def our_segments() -> list[str]:
    """This run's segments in /dev/shm."""
    stem = f"accord.{os.getuid()}."
    return sorted(n for n in os.listdir("/dev/shm") if n.startswith(stem) and ours(n[len(stem) :]))
