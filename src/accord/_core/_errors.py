"""Everything accord raises for a caller to catch; all derive from `AccordError`.

Each class is named for what happened, so callers catch a type rather than
match a message.  Every one is exported from `accord` and reports
``__module__ == "accord"`` (tracebacks and pickles name the public path).
Exceptions that only steer accord's own control flow are private to the
modules that raise them.
"""

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
    committed state and applies every write that was queued and is not in
    it, exactly once; other processes follow it on their next operation.

    `queued` tells whether the operation that raised it was queued first (a
    call that waited for a result while the coordinator died): an shm
    `restart()` then applies it once, and its result is lost.  Otherwise it
    was not queued, and is not applied.

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

    # True when the command never left this process: it may safely be sent
    # again to a restarted coordinator.
    undelivered: bool = False
    # True when the command was queued before the coordinator was lost (see above).
    queued: bool = False


class WritesLost(CoordinatorLost):
    """Writes this process sent were lost with a dead coordinator.

    No backend raises it now: an shm `Share.restart()` applies every queued
    write exactly once, and a redis share replays its stream.  It is kept
    so that code catching it still runs.  `names` are the shared objects
    such writes went to and `count` how many there were.
    """

    def __init__(self, message: str, names: tuple[str, ...] = (), count: int = 0) -> None:
        super().__init__(message)
        self.names = names
        self.count = count

    def __reduce__(self):
        return type(self), (self.args[0], self.names, self.count)


class CoordinatorStalled(AccordError, TimeoutError):
    """The coordinator is alive but has applied none of this process's
    commands for minutes: its command ring stayed full.

    Usually a command that never returns (a user method or `apply()`
    function stuck in a loop or waiting on something) holds up every command
    queued behind it.  The command that raised this was not queued; find
    the stuck call (`accord status`, py-spy on the coordinator's pid), then
    close the share or `restart()` it once that coordinator is gone.
    """


class ShareClosed(AccordError):
    """The share was closed with `close()`; it cannot be used any more.

    Not a `CoordinatorLost`: a deliberate close is not a failure that
    `Share.restart()` could repair.

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

    undelivered: bool = False  # as CoordinatorLost's


class ShareNotFound(AccordError, LookupError):
    """No share of that name is running (never created, closed, or expired).

    >>> from accord import Share, ShareNotFound
    >>> try:
    ...     Share.connect("no-such-share")
    ... except ShareNotFound as exc:
    ...     print(exc)
    no share named 'no-such-share' is running for this user
    """


class ShareExists(AccordError):
    """A share of that name is already running: attach to it or choose another name."""


class CoordinatorStartFailed(AccordError):
    """A new coordinator process did not start (it failed, or not in time).

    The message carries what the coordinator reported.
    """


class RestartRefused(AccordError):
    """`Share.restart()` cannot apply here.

    Only the process that created a share can restart it, only once its
    coordinator has died, and not for the memory backend (whose coordinator
    is a thread of the creating process).
    """


class UsedFromOwnCoordinator(AccordError, RuntimeError):
    """A share was used by code running on its own coordinator.

    A shared object's method or an `apply()` function runs on the
    coordinator; using the same share from there would wait for itself.
    """


class ShareNotPortable(AccordError):
    """A memory-backend share was handed to another process.

    The memory backend lives in the threads of one process; create the share
    with ``Share(backend="shm")`` (or a redis URL) to hand it to processes.
    """


class UnsafeRuntimeDir(AccordError, PermissionError):
    """accord's private directory for sockets and keys is not owned by this user.

    Remove it and retry; accord recreates it with mode 0700.
    """


class SnapshotNotSettled(AccordError, TimeoutError):
    """A snapshot being rewritten did not settle in time although its coordinator is alive.

    The coordinator may be overloaded; retry the read.  If it persists, it is
    a bug: please report it.
    """


class SegmentCorrupt(AccordError):
    """A shared-memory segment of the share holds what accord did not write
    (a truncated record, a length past its end).  Nothing in it was unpickled."""


class AuthenticationError(AccordError):
    """The other end of a connection does not hold the share's key."""


class KeyRequired(AccordError, ValueError):
    """Attaching to a share needs its key: pass ``key=...`` or set $ACCORD_KEY."""


class TamperedPayload(AccordError):
    """A payload read from a network backend was not signed with the share's key.

    Nothing in it was unpickled.  Also raised when attaching with a key other
    than the one the share was created with.
    """


class BackendUnavailable(AccordError, ConnectionError):
    """The backend (Redis) could not be reached within the share's timeout.

    The share resumes by itself once the backend is back: retry the operation.
    """


class BackendRefused(AccordError, PermissionError):
    """The backend refused accord's credentials or lacks a permission it needs.

    The message says which, and what to grant.
    """


class RemoteError(AccordError):
    """An exception on the coordinator (or in a worker) that could not be sent back as itself.

    The message carries its type and text; its traceback is attached as the
    ``__cause__`` (a `RemoteTraceback`).
    """


class AugmentedAssignmentUnsupported(AccordError, RuntimeError):
    """``share.x += 1`` cannot be made atomic on the running Python.

    accord recognises augmented assignments from CPython's bytecode; on an
    interpreter whose bytecode it does not recognise, such a statement raises
    this instead of silently becoming a read and then a write.  Use
    ``share.apply(name, fn)`` or ``share.lock(name)``.
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
        >>> from accord._core._segment import Segment
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


class Unconfirmed(AccordError):
    """Fire-and-forget commands whose outcome could not be learnt in time.

    Their coordinator or backend did not answer before a close, the end of a
    `Pool` task or interpreter exit: whether they succeeded is unknown.
    """


class ErrorsDropped(AccordError):
    """More fire-and-forget commands of this process failed than accord keeps
    errors for; the message says how many were not kept."""


class TemporaryTarget(AccordError):
    """A write would land on a temporary object, made anew at each access
    (pandas copy-on-write), and be lost: write through its parent instead."""


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


# Tracebacks, reprs and pickles name the public path, as the user imports it.
for _cls in list(globals().values()):
    if isinstance(_cls, type) and issubclass(_cls, BaseException):
        _cls.__module__ = "accord"
del _cls
