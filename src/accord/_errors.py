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


class WritesLost(CoordinatorLost):
    """Writes this process sent may have been lost with a dead coordinator.

    `Share.restart()` starts from the last committed state: a write the dead
    coordinator had not committed yet (applied or still queued) is gone,
    although the call that sent it returned normally.  Every process that
    sent such writes gets this error once, at its first operation after the
    restart; that operation is not performed.  `names` are the shared
    objects those writes went to and `count` how many there were: re-read
    them and redo what is needed.
    """

    def __init__(self, message: str, names: tuple[str, ...] = (), count: int = 0) -> None:
        super().__init__(message)
        self.names = names
        self.count = count

    def __reduce__(self):
        return type(self), (self.args[0], self.names, self.count)


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


class ForeignSegment(AccordError):
    """A shared-memory segment is not one this user's accord made.

    accord creates every segment new (``O_CREAT|O_EXCL``, mode 0600) and,
    before reading a byte of one, checks that it belongs to this user, has
    no group or other permission bits and has the size accord gave it.  A
    segment that fails (another local user created the name first, or
    re-created it after the share's own one was removed) is never read:
    this error is raised instead.

        >>> import os
        >>> from accord import ForeignSegment
        >>> from accord.backends.shm._segment import Segment
        >>> name = f"accord-doc-{os.getpid()}"
        >>> fd = os.open(f"/dev/shm/{name}", os.O_CREAT | os.O_RDWR, 0o644)
        >>> os.ftruncate(fd, 4096); os.fchmod(fd, 0o644); os.close(fd)
        >>> try:
        ...     Segment.attach(name)
        ... except ForeignSegment as exc:
        ...     print("refused:", "mode is 644" in str(exc))
        refused: True
        >>> os.unlink(f"/dev/shm/{name}")
    """


class CommandQuarantined(AccordError):
    """A command was skipped because coordinators kept dying while applying it.

    Code run on the coordinator that ends its process (``os._exit``, a crash
    in a C extension) cannot be caught there.  On the redis backend, whose
    commands wait in Redis for the next coordinator, such a command would
    kill every coordinator that takes the share over; after a few deaths in a
    row, each while applying that one command, it is skipped instead, and its
    sender gets this error (raised by the call, or by the next blocking call
    for a fire-and-forget one).  The share's other objects and commands are
    unaffected.
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
