"""accord: Python objects shared by processes, without lost updates or stale reads.

>>> from accord import Share
>>> with Share() as share:
...     share.counter = 0
...     share.counter += 1
...     share.counter
1
"""

from ._errors import (
    AccordError,
    CoordinatorLost,
    RemoteTraceback,
    ShareClosed,
    TaskTimeout,
    UnshareableError,
    WorkerLost,
)
from .share import Proxy, Share, ShareLock
from .spawn import Pool

__version__ = "0.1.0"

__all__ = [
    "AccordError",
    "CoordinatorLost",
    "Pool",
    "Proxy",
    "RemoteTraceback",
    "Share",
    "ShareClosed",
    "ShareLock",
    "TaskTimeout",
    "UnshareableError",
    "WorkerLost",
]
