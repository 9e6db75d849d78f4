"""The exceptions accord raises.  All derive from `AccordError`."""

from __future__ import annotations


class AccordError(Exception):
    """Base class of every error accord raises itself.

    >>> from accord import AccordError, Share
    >>> try:
    ...     Share.connect("no-such-share")
    ... except AccordError as exc:
    ...     print(exc)
    no share named 'no-such-share' is running for this user
    """


class CoordinatorLost(AccordError):
    """The share's coordinator is gone: it died, or the share was closed.

    Raised by every pending and later operation on the share within about a
    second of the coordinator's death.  To recover, the creating process
    calls `Share.restart()`, which starts a new coordinator from the last
    committed state; other processes follow it on their next operation.

        >>> import os, signal
        >>> from accord import CoordinatorLost, Share
        >>> with Share() as share:
        ...     share.items = [1, 2]
        ...     share.flush()
        ...     os.kill(share.coordinator_pid, signal.SIGKILL)
        ...     try:
        ...         while True:
        ...             share.flush()  # raises once the coordinator is gone
        ...     except CoordinatorLost:
        ...         print("lost", share.restart(), share.items)
        lost [] [1, 2]
    """


class ShareClosed(CoordinatorLost):
    """The share was closed with `close()`; it cannot be used any more.

    >>> from accord import Share, ShareClosed
    >>> share = Share()
    >>> share.x = 1
    >>> share.close()
    >>> try:
    ...     share.x
    ... except ShareClosed:
    ...     print("closed")
    closed
    """


class UnshareableError(AccordError, TypeError):
    """A value cannot be shared because it cannot be serialized.

    Raised at assignment time; the message names the attribute (down to the
    nested attribute or item that failed) and the reason.

        >>> import threading
        >>> from accord import Share, UnshareableError
        >>> with Share() as share:
        ...     try:
        ...         share.cfg = {"guard": threading.Lock()}
        ...     except UnshareableError as exc:
        ...         print(exc)  # doctest: +ELLIPSIS
        cannot share share.cfg['guard']: TypeError: cannot pickle '_thread.lock' object...
    """


class RemoteTraceback(Exception):
    """Holds the formatted traceback of an exception raised on the coordinator.

    Attached as ``__cause__`` of the exception re-raised in the caller, so
    tracebacks show where on the coordinator the error happened.

        >>> from accord import RemoteTraceback, Share
        >>> with Share() as share:
        ...     share.items = []
        ...     try:
        ...         share.items.pop()
        ...     except IndexError as exc:
        ...         print(isinstance(exc.__cause__, RemoteTraceback), "pop" in str(exc.__cause__))
        True True
    """

    def __init__(self, tb: str) -> None:
        super().__init__(tb)
        self.tb = tb

    def __str__(self) -> str:
        return self.tb


class WorkerLost(AccordError):
    """A pool worker died while running a task; the pool replaced it.

    Raised by the task's future when its worker was killed, crashed or
    called ``os._exit`` (after its retries, if any, are spent).  The pool
    keeps working with a new worker.

        >>> import os
        >>> from accord import Pool, WorkerLost
        >>> with Pool(workers=1) as pool:
        ...     try:
        ...         pool.submit(os._exit, 3).result()
        ...     except WorkerLost as exc:
        ...         print(exc)  # doctest: +ELLIPSIS
        ...     print(pool.submit(abs, -2).result())
        worker process ... exited with code 3 while running _exit(3); it was replaced
        2
    """


class TaskTimeout(AccordError, TimeoutError):
    """A task ran longer than its ``timeout=``; its worker was ended and replaced.

    >>> import time
    >>> from accord import Pool, TaskTimeout
    >>> with Pool(workers=1) as pool:
    ...     try:
    ...         pool.submit(time.sleep, 30, timeout=0.2).result()
    ...     except TaskTimeout as exc:
    ...         print(exc)
    sleep(30) ran longer than its timeout of 0.2 s; its worker was ended and replaced
    """
