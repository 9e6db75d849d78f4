"""accord: Python objects shared by processes, without lost updates or stale reads.

>>> from accord import Share
>>> with Share() as share:
...     share.counter = 0
...     share.counter += 1
...     share.counter
1
"""

from __future__ import annotations

import importlib

from ._core._errors import (
    AccordError,
    AugmentedAssignmentUnsupported,
    AuthenticationError,
    BackendRefused,
    BackendUnavailable,
    CommandQuarantined,
    CoordinatorLost,
    CoordinatorStalled,
    CoordinatorStartFailed,
    ErrorsDropped,
    ForeignSegment,
    KeyRequired,
    RemoteError,
    RemoteTraceback,
    RestartRefused,
    SegmentCorrupt,
    ShareClosed,
    ShareExists,
    ShareNotFound,
    ShareNotPortable,
    SnapshotNotSettled,
    TamperedPayload,
    TaskTimeout,
    TemporaryTarget,
    Unconfirmed,
    UnsafeRuntimeDir,
    UnshareableError,
    UsedFromOwnCoordinator,
    WorkerLost,
    WritesLost,
)

# Not `from typing import TYPE_CHECKING`: typing alone takes longer to import
# than the rest of this module (type checkers know this spelling too).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from .share import Proxy, Share, ShareLock
    from .spawn import Pool

__version__ = "0.1.0"

__all__ = [
    "AccordError",
    "AugmentedAssignmentUnsupported",
    "AuthenticationError",
    "BackendRefused",
    "BackendUnavailable",
    "CommandQuarantined",
    "CoordinatorLost",
    "CoordinatorStalled",
    "CoordinatorStartFailed",
    "ErrorsDropped",
    "ForeignSegment",
    "KeyRequired",
    "Pool",
    "Proxy",
    "RemoteError",
    "RemoteTraceback",
    "RestartRefused",
    "SegmentCorrupt",
    "Share",
    "ShareClosed",
    "ShareExists",
    "ShareLock",
    "ShareNotFound",
    "ShareNotPortable",
    "SnapshotNotSettled",
    "TamperedPayload",
    "TaskTimeout",
    "TemporaryTarget",
    "Unconfirmed",
    "UnsafeRuntimeDir",
    "UnshareableError",
    "UsedFromOwnCoordinator",
    "WorkerLost",
    "WritesLost",
]

# Imported on first use: a pool worker, and a sub-interpreter above all,
# starts faster when `import accord` does not import every layer.
_LAZY = {"Proxy": ".share", "Share": ".share", "ShareLock": ".share", "Pool": ".spawn"}


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module 'accord' has no attribute {name!r}")
    value = getattr(importlib.import_module(_LAZY[name], __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
