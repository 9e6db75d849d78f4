"""The exceptions `accord.work` raises.  All derive from `accord.AccordError`."""

from __future__ import annotations

from .._core._errors import AccordError


class WorkError(AccordError):
    """Base class of the errors of `accord.work`."""


class InvalidWork(WorkError, ValueError):
    """The items or tasks cannot be distributed as given.

    Duplicate keys, a dependency on a task that is not in the graph, a cycle,
    or options that contradict each other.  Raised when the queue or graph is
    built, before any item is handed out.

        >>> from accord.work import InvalidWork, Task, TaskGraph
        >>> try:
        ...     TaskGraph([Task("a", deps=["b"]), Task("b", deps=["a"])], db="sqlite://")
        ... except InvalidWork as exc:
        ...     print(exc)
        the task graph has a cycle: a -> b -> a
    """


class DatabaseUnavailable(WorkError):
    """The database URL cannot be opened (bad URL, missing directory, no server).

    >>> from accord.work import DatabaseUnavailable, WorkQueue
    >>> try:
    ...     WorkQueue([1, 2], db="sqlite:////no/such/dir/run.sqlite")
    ... except DatabaseUnavailable as exc:
    ...     print(exc)  # doctest: +ELLIPSIS
    cannot open sqlite:////no/such/dir/run.sqlite: the directory /no/such/dir does not exist
    """


class WorkFailed(WorkError):
    """An item failed and the queue's ``failure_policy`` is ``"stop"``.

    Raised by every worker of that name when it asks for its next item; the
    message names the failed items and their errors.  `accord reset DB
    --failed` (or ``queue.reset_failed()``) puts them back in the queue.
    """
