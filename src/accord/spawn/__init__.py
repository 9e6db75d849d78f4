"""Workers: `Pool` starts processes or sub-interpreters that run tasks.

The pool's modules load on first use: a worker imports only `_worker` and
`_wire` from here, which keeps sub-interpreter start-up short.
"""

from __future__ import annotations

# Not `from typing import TYPE_CHECKING`: typing alone takes longer to import
# than the rest of this module (type checkers know this spelling too).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from ._pool import Pool, TaskFuture

__all__ = ["Pool", "TaskFuture"]


def __getattr__(name: str):
    if name not in __all__:
        raise AttributeError(f"module 'accord.spawn' has no attribute {name!r}")
    from . import _pool

    return getattr(_pool, name)
