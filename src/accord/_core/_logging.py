"""accord's loggers: ``accord.share``, ``accord.backends``, ``accord.spawn``, ``accord.work``.

Nothing is configured in the user's process: records go wherever the
application's logging sends them (Python's last-resort handler prints
warnings and errors to stderr when it configured nothing).  A coordinator
process, which has no application, prints them on its stderr -- the owner's
-- as ``accord: message``.
"""

from __future__ import annotations

import logging
import sys


def to_stderr() -> None:
    """In a coordinator process: accord's records go to stderr, one line each."""
    root = logging.getLogger("accord")
    if not root.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("accord: %(message)s"))
        root.addHandler(handler)
        root.setLevel(logging.INFO)
        root.propagate = False
