"""Workers: `Pool` starts processes or sub-interpreters that run tasks."""

from ._pool import Pool, TaskFuture

__all__ = ["Pool", "TaskFuture"]
