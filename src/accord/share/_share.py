"""`Share`: the container users put objects in."""

from __future__ import annotations

import concurrent.futures
import contextlib
import os
import secrets
import subprocess
import threading
import weakref

from .._core import _protocol as P
from .._core._errors import RestartRefused
from .._core._fastread import ShareBase
from .._core._values import private
from ..backends import _registry
from ..backends._protocol import BackendInfo, CoordinatorProcess
from ..backends._replies import raise_all
from . import _proxy
from ._async import AsyncView
from ._augmented import DONE, Augmenting, is_augmented
from ._link import Link, _unsettled, settle_within
from ._proxy import Proxy, read_only

_MISSING = object()
_get = object.__getattribute__  # the generic lookup, whatever the name

# Attribute names that are the Share's own API; shared objects with these
# names are reached with share["name"].
RESERVED = frozenset(
    {
        "close",
        "flush",
        "apply",
        "update",
        "lock",
        "get",
        "connect",
        "coordinator_pid",
        "restart",
        "aio",
    }
)


class Share(ShareBase):
    """A set of named Python objects shared by processes on one machine.

    Assign any picklable object as an attribute; every process the share is
    handed to (as an argument, through ``multiprocessing`` or
    ``concurrent.futures``, or by ``Share.connect(name)``) reads and changes
    the same object::

        >>> from accord import Share
        >>> with Share() as share:
        ...     share.counter = 0
        ...     share.results = []
        ...     share.counter += 1          # one atomic command
        ...     share.results.append("a")   # queued, returns at once
        ...     share.results.pop()          # waits for the value
        ...     share.counter
        'a'
        1

    Guarantees (for every process, on every object):

    * **No lost updates**: each write — assignment, ``+=`` and the other
      augmented assignments, item assignment, method call — is applied once,
      by the share's coordinator, in the order each process issued it.
    * **No stale reads**: a read includes every write to what it reads that
      any process queued before the read began.
    * **Values and errors come back**: a method that returns a value runs on
      the coordinator and returns its result; its exception is raised here,
      with the coordinator's traceback as ``__cause__``.  A method that
      returns nothing is fire-and-forget; its error is raised by this
      process's next read that waits or call that returns a value,
      `flush()`, `close()` or the end of the ``with`` block (several: an
      ExceptionGroup), else printed at exit — never lost.
    * **Nothing hangs**: if the coordinator dies, operations raise
      `CoordinatorLost` within about a second.

    The process that creates a share owns it: `close()` (or leaving the
    ``with`` block, or interpreter exit) stops its coordinator and removes
    every shared-memory segment and socket it made.

    The backend decides who can use it: ``"shm"`` (processes of this
    machine, the default), ``"memory"`` (threads of this process), or a
    Redis URL (processes anywhere; ``Share.connect(url, name=..., key=...)``)::

        >>> import threading
        >>> with Share(backend="memory") as share:
        ...     share.hits = 0
        ...     def work():
        ...         for _ in range(100):
        ...             share.hits += 1
        ...     threads = [threading.Thread(target=work) for _ in range(4)]
        ...     for t in threads: t.start()
        ...     for t in threads: t.join()
        ...     share.hits
        400
    """

    # `_link` and `_reader` are ShareBase's (C): its attribute hook serves
    # `share.name` for an unchanged value without running Python code.
    __slots__ = ("__weakref__", "_finalizer", "_owner_pid", "_window")

    def __init__(
        self,
        name: str | None = None,
        *,
        backend: str = "shm",
        key: bytes | str | None = None,
        commit_window: float = 0.002,
    ) -> None:
        """Create a share and start its coordinator.

        `name` lets unrelated processes attach with ``Share.connect(name)``
        (``Share.connect(url, name=name)`` for a redis share); it must be
        unique among live shares.  `backend` is ``"shm"`` or ``"shm://NAME"``
        (one machine, the default), ``"memory"`` or ``"memory://"`` (threads of
        this process) or a Redis URL (``redis://[user:password@]host:port/db``,
        ``rediss://`` for TLS; see the README's "Backends").  `key` (for
        redis; default ``$ACCORD_KEY``, else a random one) signs everything
        stored in Redis.  `commit_window` is the longest time (seconds) a
        changed object waits to be committed when no reader asks for it.
        """
        chosen, url, name = _registry.for_share(backend, name)
        if commit_window < 0:
            raise ValueError("commit_window must be >= 0")
        info, process = chosen.create(name, url, key, commit_window)
        _bind(self, Link(info))
        object.__setattr__(self, "_owner_pid", os.getpid())
        object.__setattr__(self, "_window", commit_window)
        self._adopt(info, process)

    def _adopt(self, info: BackendInfo, process: CoordinatorProcess) -> None:
        info.client().owner_process = process
        object.__setattr__(
            self, "_finalizer", weakref.finalize(self, _shutdown, info, process, os.getpid())
        )

    @classmethod
    def connect(
        cls, target: str, name: str | None = None, *, key: bytes | str | None = None
    ) -> Share:
        """Attach to a live share created elsewhere.

        ``Share.connect(name)`` for a share made with ``Share(name=name)`` by
        a process of this user on this machine; ``Share.connect(url,
        name=name, key=key)`` for one made with ``Share(name=name,
        backend=url, key=key)``, from any machine (`key` defaults to
        ``$ACCORD_KEY``).
        """
        chosen, url, name = _registry.for_connect(target, name)
        return cls._attach(chosen.attach(url, name, key))

    @classmethod
    def _attach(cls, info: BackendInfo) -> Share:
        share = object.__new__(cls)
        _bind(share, Link(info))
        object.__setattr__(share, "_owner_pid", None)
        object.__setattr__(share, "_finalizer", None)
        object.__setattr__(share, "_window", None)
        return share

    def __reduce__(self):
        return Share._attach, (self._link.info,)

    # -- the shared names ----------------------------------------------------

    # `share.name`: ShareBase's attribute hook (C) answers "" and "_..." names
    # as any object does, and an unchanged immutable value from what this
    # process last read of it when nothing it could miss happened since
    # (see accord/_core/_fastread.c); everything else comes here.
    def _accord_slow(self, name: str):
        if name in RESERVED:
            return _get(self, name)
        return _get(self, "_link").get_name(name)

    def __setattr__(self, name: str, value) -> None:
        if value is DONE or _is_own_proxy(self, name, value):
            return  # the second half of `share.x += y`, already applied
        _check_attribute_name(name, "store it with share[{name!r}] = ...")
        _get(self, "_link").assign((name,), value)

    def __delattr__(self, name: str) -> None:
        # As for assignment: `del share.close` must not delete a shared
        # object named "close" that `share.close` never reads.
        _check_attribute_name(name, "delete it with del share[{name!r}]")
        self._link.delete((name,))

    def __getitem__(self, name: str):
        link = _get(self, "_link")
        if is_augmented():
            return Augmenting(link, (name,))
        return link.get((_check_name(name),))

    def __setitem__(self, name: str, value) -> None:
        if value is DONE or _is_own_proxy(self, name, value):
            return
        _get(self, "_link").assign((_check_name(name),), value)

    def __delitem__(self, name: str) -> None:
        self._link.delete((_check_name(name),))

    def __contains__(self, name: str) -> bool:
        link = self._link
        link.wait_for(link.read_slots((name,)))
        try:
            link.value_at((name,))
        except AttributeError:
            return False
        return True

    def __iter__(self):
        """The names in the share, sorted."""
        return iter(self._link.names())

    def __repr__(self) -> str:
        info = self._link.info
        return f"<accord.Share {info.name!r} coordinator pid {info.pid}>"

    # -- API -------------------------------------------------------------------

    @property
    def coordinator_pid(self) -> int:
        """Process id of the coordinator (for monitoring)."""
        return self._link.info.pid

    def flush(self) -> None:
        """Wait until every write this process queued is applied and visible.

        Raises the errors of this process's fire-and-forget commands that
        nothing raised yet (an ExceptionGroup if several)."""
        link = self._link
        client = link.client
        errors = client.replies.take_deferred()
        _unsettled.pop(id(client), None)
        try:
            link.request(P.FLUSH, ())
        finally:
            # The flush's reply came after every earlier command ran, and
            # the errors of those that failed before it -- to the client of
            # the restarted share if the request followed a restart (the new
            # coordinator hands over those of the commands it replayed).
            errors += client.replies.take_deferred()
            current = link._client
            if current is not None and current is not client:
                errors += current.replies.take_deferred()
            raise_all(errors)

    def get(self, name, default=_MISSING, *, copy: bool = True):
        """A private copy of a shared object (a name or a proxy), current as of now.

        With ``copy=False``, the committed object itself, shared with every
        later read of the same version: nothing is copied (on the shm
        backend a numpy array or a DataFrame's columns are read-only views
        of shared memory, which never change while you hold them).  Its
        arrays are read-only; do not change anything else in it either.
        """
        path = _path_of(name)
        try:
            if not copy:
                return read_only(self._link.value(path))
            return private(self._link.value(path))
        except (AttributeError, KeyError, IndexError):
            if default is _MISSING:
                raise
            return default

    @property
    def aio(self) -> AsyncView:
        """The share for asyncio: ``await`` any expression written after ``.aio``.

        ``await share.aio.counter``, ``await share.aio.jobs.pop()``,
        ``await share.aio.flush()``: each runs in a worker thread, so the
        event loop is never held up by a read that waits for queued writes
        or by a call the coordinator answers.  (Locks: ``async with
        share.lock(name)``.)

            >>> import asyncio
            >>> from accord import Share
            >>> async def main(share):
            ...     share.jobs.append("b")       # writes never wait
            ...     return await share.aio.jobs.pop(), await share.aio.jobs
            >>> with Share() as share:
            ...     share.jobs = ["a"]
            ...     asyncio.run(main(share))
            ('b', ['a'])
        """
        return AsyncView(self)

    def apply(self, target, fn, /, *args, **kwargs):
        """Run ``fn(obj, *args, **kwargs)`` on the coordinator, atomically.

        `target` is a name or a proxy.  No other write to any object runs
        while `fn` does; mutations of `obj` persist; `fn`'s result is
        returned.  Use it for read-modify-write across statements::

            share.apply("stock", lambda s, n: s.take(n) if s.count >= n else None, 3)
        """
        return self._link.apply(_path_of(target), fn, args, kwargs, replace=False)

    def update(self, target, fn, /, *args, **kwargs):
        """Replace the object by ``fn(obj, *args, **kwargs)``, atomically; return it.

        The form for immutable values: ``share.update("best", max, score)``.
        """
        return self._link.apply(_path_of(target), fn, args, kwargs, replace=True)

    def lock(self, name: str) -> ShareLock:
        """A lock with this name, held across all processes of the share.

        ``with share.lock("stock"): ...`` excludes other holders of the same
        lock (not writers that do not take it).  It is released if its
        holder's process dies.
        """
        return ShareLock(self._link, name)

    def close(self) -> None:
        """Stop using the share.  In the creating process: stop the coordinator
        and remove its shared memory and socket.

        Waits (up to `SETTLE_TIMEOUT` seconds) for this process's
        fire-and-forget commands to run, then raises their errors that
        nothing raised yet (an ExceptionGroup if several); they are not
        committed for other readers (call `flush()` first for that)."""
        link = self._link
        if link.closed:
            return
        errors = settle_within(link._client, SETTLE_TIMEOUT)
        try:
            if self._owner_pid == os.getpid() and self._finalizer is not None:
                self._finalizer()
        finally:
            link.closed = True
            link.reader.arm(None)
        raise_all(errors)

    def restart(self) -> list[str]:
        """Start a new coordinator from the last committed state.

        For the creating process, after `CoordinatorLost`.  Every object is
        restored as it was last committed, then every write that was queued
        and is not in that state is applied, exactly once, in the order it
        was issued (shm: from the dead coordinator's command rings; redis:
        from its stream, see the README) before this returns.  A write that returned is
        never lost or applied twice; a call that raised `CoordinatorLost`
        after its command was queued (`exc.queued`) is applied once, its
        result lost.  An object the coordinator died while committing is
        lost, with the writes to it: its name is returned.  Proxies of this
        share keep working; other processes reattach on their next operation.
        """
        if self._owner_pid != os.getpid():
            raise RestartRefused("only the process that created a share can restart it")
        link = self._link
        client = link.info.client()
        process = client.owner_process
        if process is not None and client.lost is not None:
            # Its socket closed as it died; the process itself may take a
            # moment more to end.
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=2.0)
        if process is not None and process.poll() is None:
            raise RestartRefused(
                f"the coordinator (pid {link.info.pid}) is running; restart() recovers "
                "a share whose coordinator died"
            )
        info, process, lost = _registry.backend(link.info.backend).restart(link.info, self._window)
        self._finalizer.detach()
        if info is not link.info:
            link.rebind(info)
        self._adopt(info, process)
        return lost

    def __enter__(self) -> Share:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc is None:
            self.close()  # raises what fire-and-forget commands raised
            return
        try:
            self.close()
        except BaseException as errors:  # the block's own error goes on; note these
            exc.add_note(f"(also, leaving `with Share()`: {errors!r})")


SETTLE_TIMEOUT = 10.0


class ShareLock:
    """A named lock held across the processes of a share.

    Returned by `Share.lock`; use it as a context manager, or call
    `acquire(timeout=...)` and `release()`.  Each thread holds it on its own
    behalf; it is not reentrant; it is released if its holder's process dies.

        >>> from accord import Share
        >>> with Share() as share:
        ...     share.stock = 3
        ...     with share.lock("stock"):
        ...         if share.stock > 0:
        ...             share.stock -= 1
        ...     share.stock
        2
    """

    def __init__(self, link: Link, name: str) -> None:
        self._link = link
        self._name = name
        self._tokens = threading.local()
        self._task_tokens: dict = {}  # asyncio task -> token, for `async with`

    def acquire(self, timeout: float | None = None) -> bool:
        if getattr(self._tokens, "token", None) is not None:
            raise RuntimeError(f"lock {self._name!r} is already held by this thread")
        token = secrets.randbits(63)
        granted = self._link.request(P.ACQUIRE, (self._name, token, timeout))
        if granted:
            self._tokens.token = token
        return granted

    def release(self) -> None:
        token = getattr(self._tokens, "token", None)
        if token is None:
            raise RuntimeError(f"lock {self._name!r} is not held by this thread")
        self._tokens.token = None
        self._link.send(P.RELEASE, (self._name, token))

    def __enter__(self) -> ShareLock:
        self.acquire()
        return self

    def __exit__(self, *exc_info) -> None:
        self.release()

    async def __aenter__(self) -> ShareLock:
        """``async with share.lock(name)``: waits on a thread of its own, not in the loop.

        Held on behalf of the asyncio task that entered it."""
        import asyncio  # here: most programs never need it, and it is slow to import

        token = secrets.randbits(63)
        # On a thread of its own, not in the loop's executor: a wait for a
        # lock has no bound, and waiters filling the executor's few threads
        # would starve the holder's own `await share.aio...` (a deadlock).
        granted = concurrent.futures.Future()
        threading.Thread(
            target=_run_into,
            args=(granted, self._link.request, P.ACQUIRE, (self._name, token, None)),
            name="accord-lock-wait",
            daemon=True,
        ).start()
        request = asyncio.wrap_future(granted)
        try:
            await asyncio.shield(request)
        except asyncio.CancelledError:
            # Granted after all, to a task that left: give it back then (from
            # the waiting thread: the loop may be closed by then).
            granted.add_done_callback(
                lambda f: f.exception() or self._link.send(P.RELEASE, (self._name, token))
            )
            raise
        self._task_tokens[asyncio.current_task()] = token
        return self

    async def __aexit__(self, *exc_info) -> None:
        import asyncio

        token = self._task_tokens.pop(asyncio.current_task(), None)
        if token is None:
            raise RuntimeError(f"lock {self._name!r} is not held by this task")
        self._link.send(P.RELEASE, (self._name, token))


def _run_into(future: concurrent.futures.Future, fn, *args) -> None:
    """``fn(*args)``, its result or error put into `future`."""
    try:
        future.set_result(fn(*args))
    except BaseException as exc:
        future.set_exception(exc)


def _bind(share: Share, link: Link) -> None:
    share._accord_bind(link, link.reader)


def _is_own_proxy(share: Share, name: str, value) -> bool:
    # `share.lst += [1]` reads a proxy, applies += to it (one AUGMENT
    # command) and stores the proxy back: that store must do nothing.
    return (
        type(value) is Proxy
        and _get(value, "_accord_path") == (name,)
        and _get(value, "_accord_link") is _get(share, "_link")
    )


def _check_attribute_name(name: str, instead: str) -> None:
    if not name:
        raise AttributeError("share names are non-empty strings")
    if name in RESERVED or name.startswith("_"):
        raise AttributeError(
            f"{name!r} is {'part of the Share API' if name in RESERVED else 'private'}; "
            + instead.format(name=name)
        )


def _check_name(name) -> str:
    if not isinstance(name, str) or not name:
        raise TypeError(f"share names are non-empty strings, not {name!r}")
    return name


def _path_of(target) -> tuple:
    if isinstance(target, Proxy):
        return target._accord_path
    return (_check_name(target),)


def _shutdown(info: BackendInfo, process: CoordinatorProcess, owner_pid: int) -> None:
    """Stop the coordinator and remove everything it made (owner only)."""
    if os.getpid() != owner_pid:
        return  # a forked child must not close its parent's share
    # A signal, not a command: it must work even when every queue is stuck.
    if process.poll() is None:
        process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
    info.remove()


# A pickled proxy travels with a handle of its share (see _proxy.attach_share).
_proxy.attach_share = Share._attach
