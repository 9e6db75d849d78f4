"""Recovering from a dead coordinator with Share.restart().

    python examples/recover.py

The coordinator is killed on purpose; the next operation raises
CoordinatorLost; ``restart()`` starts a new coordinator from the last
committed state and the program carries on.
"""

from __future__ import annotations

import os
import signal

from accord import CoordinatorLost, Share


def main() -> None:
    with Share() as share:
        share.scores = [3, 1, 4]
        share.flush()  # committed: it survives the coordinator
        os.kill(share.coordinator_pid, signal.SIGKILL)
        try:
            while True:
                share.flush()  # raises once the coordinator is gone
        except CoordinatorLost as exc:
            print(f"lost: {exc}")
        lost = share.restart()
        share.scores.append(1)
        assert lost == [] and share.scores == [3, 1, 4, 1]
        print(f"restarted (coordinator pid {share.coordinator_pid}); scores: {share.scores}")


if __name__ == "__main__":
    main()
