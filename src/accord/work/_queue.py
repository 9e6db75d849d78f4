"""`WorkQueue`, and the iteration it shares with `TaskGraph`."""

from __future__ import annotations

import atexit
import collections
import contextlib
import logging
import os
import random
import secrets
import socket
import sqlite3
import sys
import threading
import time
import traceback
from collections.abc import Callable, Hashable, Iterable, Iterator, Sequence
from typing import Any, Generic, Literal, TypedDict, TypeVar, Unpack

from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from tqdm import tqdm

from . import _history
from ._db import open_engine
from ._errors import DatabaseUnavailable, InvalidWork, WorkFailed
from ._heartbeat import Heartbeat
from ._history import HistoryEntry
from ._lock import WorkLock
from ._store import COMPLETED, DONE, FAILED, WAIT, Claimed, Entry, Stopped, Store

log = logging.getLogger("accord.work")

T = TypeVar("T")

FailurePolicy = Literal["continue", "stop"]

# Why a failure was recorded when the loop body did not finish.  A generator
# is closed the same way by `break` and by an exception leaving the loop, so
# the two cannot be told apart here; an exception nobody catches replaces
# this text with its traceback (see _record_uncaught).
LEFT_LOOP = "the loop body did not finish (an exception or break left the loop)"


class WorkOptions(TypedDict, total=False):
    """The options `WorkQueue` and `TaskGraph` share (defaults in `WorkQueue`'s docs)."""

    failure_policy: FailurePolicy
    heartbeat_timeout: float
    heartbeat_interval: float | None
    max_retries: int
    max_workers: int | None
    progress: bool | None
    retry_failed: bool
    reconnect_timeout: float
    claim_batch: int | None
    worker: str | None


class _Work(Generic[T]):
    """Iteration over registered entries, one claimed item at a time."""

    _kind = "queue"

    def __init__(
        self,
        entries: Sequence[Entry],
        objects: dict[str, T],
        *,
        db: str,
        name: str,
        labels: Iterable[str] = (),
        failure_policy: FailurePolicy = "continue",
        heartbeat_timeout: float = 60.0,
        heartbeat_interval: float | None = None,
        max_retries: int = 2,
        max_workers: int | None = None,
        progress: bool | None = None,
        retry_failed: bool = False,
        reconnect_timeout: float = 300.0,
        claim_batch: int | None = None,
        worker: str | None = None,
    ) -> None:
        if isinstance(labels, str):
            raise InvalidWork(f"labels must be a collection of labels, not the string {labels!r}")
        if failure_policy not in ("continue", "stop"):
            raise InvalidWork(
                f"failure_policy must be 'continue' or 'stop', not {failure_policy!r}"
            )
        if heartbeat_interval is None:
            heartbeat_interval = heartbeat_timeout / 4
        if not 0 < heartbeat_interval < heartbeat_timeout:
            raise InvalidWork(
                f"heartbeat_interval ({heartbeat_interval}) must be positive and shorter "
                f"than heartbeat_timeout ({heartbeat_timeout})"
            )
        if claim_batch is not None and claim_batch < 1:
            raise InvalidWork(f"claim_batch must be >= 1 (or None: adapted), not {claim_batch}")
        if reconnect_timeout < 0:
            raise InvalidWork(f"reconnect_timeout must be >= 0, not {reconnect_timeout}")
        if max_retries < 0 or (max_workers is not None and max_workers < 1):
            raise InvalidWork("max_retries must be >= 0 and max_workers >= 1 (or None)")
        self.name = name
        self.failure_policy = failure_policy
        self.heartbeat_timeout = heartbeat_timeout
        self.heartbeat_interval = heartbeat_interval
        self.max_retries = max_retries
        self.max_workers = max_workers
        self.retry_failed = retry_failed
        self.reconnect_timeout = reconnect_timeout
        self.claim_batch = claim_batch
        self.labels = frozenset(labels)
        self.progress = sys.stderr.isatty() if progress is None else progress
        self.worker = (
            worker
            or os.environ.get("ACCORD_WORKER")
            or (f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(2)}")
        )
        self._objects = objects
        self._requirements = {e.key: e.requirements for e in entries}
        self._fingerprints = {e.key: e.fingerprint for e in entries}
        self._engine = open_engine(db)
        try:
            self._store = Store(self._engine, name, self._kind)
            self.invalidated = self._store.register(entries)
        except BaseException:
            self._engine.dispose()
            raise
        self._closing = False
        self._lock: WorkLock | None = None

    # -- the loop -----------------------------------------------------------

    def __iter__(self) -> Iterator[T]:
        return self._run()

    def __len__(self) -> int:
        return len(self._objects)

    def _configure(self, store: Store) -> None:
        acceptable = {
            r
            for r in set(self._requirements.values())
            if set(filter(None, r.split(","))) <= self.labels
        }
        store.max_retries = self.max_retries
        store.retry_failed = self.retry_failed
        store.keys_given = len(self._objects)
        store.stop_on_failure = self.failure_policy == "stop"
        store.reap_interval = self.heartbeat_interval
        own = self._fingerprints
        store.accepts = lambda key, req, fp: (
            self._requirements.get(key) in acceptable and own.get(key) in (None, fp)
        )
        everything = acceptable == set(self._requirements.values())
        store.requirement_filter = None if everything else sorted(acceptable)

    def _run(self) -> Iterator[T]:
        store = self._store
        self._configure(store)
        self._closing = False
        worker_id = store.add_worker(
            self.worker,
            socket.gethostname(),
            os.getpid(),
            self.labels,
            self.heartbeat_timeout,
            self.max_workers,
        )
        if worker_id is None:
            log.warning(
                "%s: %d workers are already running; this one does nothing",
                self.name,
                self.max_workers,
            )
            return
        # Set by the heartbeat when others had given this worker up: the
        # items it claimed and has not started went back to the queue.
        lost = threading.Event()

        def beat() -> bool:
            return store.beat(worker_id, lost.set)

        heartbeat = Heartbeat(beat, self.heartbeat_interval, self.worker)
        heartbeat.start()
        bar = None
        link = _Link(store, worker_id, self.name, self.reconnect_timeout)
        claimed: collections.deque[Claimed] = collections.deque()
        # Outcomes not recorded yet: they go with the next claim.
        finished: list[tuple[Claimed, str, str | None]] = []
        release: list[Claimed] = []
        # A graph's tasks one at a time unless asked: a batch would run a
        # task claimed with it before the tasks its own members unlock,
        # out of the graph's order.
        size = _BatchSize(self.claim_batch or (1 if self._kind == "graph" else None))
        pause = _Backoff(self.heartbeat_interval)
        ended = False
        try:
            # Inside the try: a database that fails here must not leave the
            # heartbeat thread beating (and this worker "active") for good.
            link.connect()
            unit = "task" if self._kind == "graph" else "item"
            bar = _Progress(store, len(self._objects), self.name, self.progress, unit)
            batch_end = 0.0
            while True:
                if claimed and (lost.is_set() or time.monotonic() > batch_end):
                    # Presumed dead: these are no longer ours.  Or the batch
                    # is overdue (items slower than measured): the rest go
                    # back, for idle workers, with the outcomes so far.
                    lost.clear()
                    release.extend(claimed)
                    claimed.clear()
                if not claimed:
                    # Given up before this claim: it revives the worker, and
                    # what it claims is this worker's.
                    lost.clear()
                    outcome = link.claim(finished, size.next(), release, size.unless_fewer())
                    finished, release = [], []
                    if outcome == WAIT:
                        pause.wait(link.peek)
                        continue
                    if outcome == DONE:
                        ended = True  # recorded by that claim
                        return
                    if isinstance(outcome, Stopped):
                        raise WorkFailed(_stopped_message(self.name, outcome))
                    pause.reset()
                    size.claimed(len(outcome))
                    claimed.extend(outcome)
                    batch_end = time.monotonic() + size.deadline(len(outcome))
                item = claimed.popleft()
                started = time.perf_counter()
                try:
                    yield self._objects[item.key]
                except GeneratorExit:
                    finished.append((item, FAILED, LEFT_LOOP))
                    # The frame that ran the loop (None when closed from C).
                    caller = sys._getframe(1) if sys._getframe().f_back else None
                    _remember_failure(store, item, caller)
                    raise
                size.measured(time.perf_counter() - started)
                finished.append((item, COMPLETED, None))
                bar.update()
                if self._closing:
                    return
        finally:
            release.extend(claimed)
            # The outcomes not recorded yet, the items never started, and
            # this worker's end: one transaction (retried like a claim).
            try:
                if ended:
                    link.close()
                else:
                    link.stop(finished, release)
            except Exception as exc:
                log.warning(
                    "%s: could not record the end of this worker (%d outcomes): %s",
                    self.name,
                    len(finished),
                    exc,
                )
            heartbeat.stop()
            if bar is not None:
                bar.close()

    def close(self) -> None:
        """End the iteration after the current item, which counts as completed.

        ``break`` instead marks the current item failed (another run can
        retry it after ``accord reset --failed``).
        """
        self._closing = True

    # -- shared resources, state and history ---------------------------------

    @property
    def lock(self) -> WorkLock:
        """A lock held across all workers of this name, on every machine."""
        if self._lock is None:
            self._lock = WorkLock(self._engine, self.name)
        return self._lock

    def counts(self) -> dict[str, int]:
        """Items per status: pending, running, completed, failed."""
        return self._store.counts()

    def history(self, key: Hashable | None = None) -> list[HistoryEntry]:
        """Every status change, oldest first (of one item if ``key`` is given)."""
        with self._engine.begin() as conn:
            return _history.read(conn, self._store.queue_id, None if key is None else str(key))

    def prune_history(self, keep_latest: int = 1) -> int:
        """Keep only the latest ``keep_latest`` history rows per item; returns how many went."""
        if keep_latest < 1:
            raise InvalidWork(
                "keep_latest must be at least 1: an item's last status stays on record"
            )
        with self._engine.begin() as conn:
            return _history.prune(conn, self._store.queue_id, keep_latest)

    def reset_failed(self) -> list[str]:
        """Put failed items back in the queue; returns their keys."""
        return self._store.reset()

    def dispose(self) -> None:
        """Close this process's database connections (reopened if used again)."""
        self._engine.dispose()

    def __enter__(self):
        return self

    def __exit__(self, *exc: object) -> None:
        self.dispose()


class WorkQueue(_Work[T]):
    """Items handed out to independent workers, each item to exactly one.

    Every worker — started by hand, by SLURM, on another machine — builds the
    same queue and iterates over it; an item is completed when the loop body
    finishes and failed when it raises (the exception propagates) or the
    loop is left with ``break``.  State lives in ``db``: a SQLite file by
    default, or PostgreSQL by URL.

        >>> from accord.work import WorkQueue
        >>> db = "sqlite:///run.sqlite"  # a file in the current directory
        >>> queue = WorkQueue(["a", "b", "c"], db=db, name="letters", progress=False)
        >>> [item.upper() for item in queue]
        ['A', 'B', 'C']
        >>> queue.counts()
        {'pending': 0, 'running': 0, 'completed': 3, 'failed': 0}
        >>> list(WorkQueue(["a", "b", "c"], db=db, name="letters", progress=False))  # all done
        []

    Parameters: ``key`` gives each item a stable key (default: its position);
    workers given different lists share the keys they have in common.
    ``failure_policy="stop"`` (default ``"continue"``) makes every worker
    raise `WorkFailed` at its next item once any item failed.  A worker whose
    heartbeat (sent every ``heartbeat_interval`` s from a thread, default a
    quarter of the timeout) is older than ``heartbeat_timeout`` s (default 60)
    is presumed dead and its item handed out again, at most ``max_retries``
    times (default 2).  ``retry_failed=True`` puts an item whose body raised
    back in the queue too, within the same ``max_retries`` (deaths and
    failures count together); the exception still propagates, and the
    item is failed for good only after its last try.  Short items are
    claimed several at a time (``claim_batch``, default: about 0.1 s of
    work by their measured time, at most 1,000; one at a time for a graph);
    the items of a batch the loop does not reach go back to the queue.  A
    worker that loses the database (server restart, dropped connection,
    SQLite busy past its timeout) reconnects with backoff for up to
    ``reconnect_timeout`` s (default 300), then raises
    `DatabaseUnavailable`.  ``max_workers``
    (default no limit) caps how many workers take part; one started beyond
    it does nothing.  ``progress``
    shows a tqdm bar (default: when stderr is a terminal).  ``worker`` names
    this worker in the history (default: ``$ACCORD_WORKER`` or
    host:pid:random).
    """

    def __init__(
        self,
        items: Iterable[T],
        db: str = "sqlite:///run.sqlite",
        name: str = "default",
        *,
        key: Callable[[T], Hashable] | None = None,
        **options: Unpack[WorkOptions],
    ) -> None:
        objects: dict[str, T] = {}
        for position, item in enumerate(items):
            k = str(position if key is None else key(item))
            if k in objects:
                raise InvalidWork(f"duplicate key {k!r}: items {objects[k]!r} and {item!r}")
            objects[k] = item
        entries = [Entry(k, position) for position, k in enumerate(objects)]
        super().__init__(entries, objects, db=db, name=name, **options)


class _Progress:
    """A tqdm bar of the whole queue's completed items, as this worker sees them.

    Between syncs with the database it counts this worker's own items; the
    last sync is when the loop ends, so the bar left on screen is the
    database's count then (all of it, when the loop ended because nothing
    was left).
    """

    def __init__(self, store: Store, total: int, name: str, enabled: bool, unit: str) -> None:
        self._store = store
        # No tqdm at all when disabled: even a disabled one starts tqdm's
        # monitor thread, which then outlives the loop.
        self._bar = tqdm(total=total, desc=name, unit=unit) if enabled else None
        self._next_sync = 0.0
        if enabled:
            self.update(0)

    def update(self, done: int = 1) -> None:
        if self._bar is None:
            return
        now = time.monotonic()
        self._bar.n += done
        if now >= self._next_sync:
            # Other workers' items count too; asking costs a query, so not
            # more than once a second.  A database briefly away only
            # delays it.
            self._next_sync = now + 1.0
            with contextlib.suppress(Exception):
                self._bar.n = self._store.counts()[COMPLETED]
        self._bar.refresh()

    def close(self) -> None:
        if self._bar is None:
            return
        try:
            self._bar.n = self._store.counts()[COMPLETED]
        except Exception as exc:  # the database is gone: the bar stays as it was
            log.warning("%s: could not read the final progress: %s", self._store.name, exc)
        self._bar.close()


class _Link:
    """A worker's claim connection, and how it rides out database outages.

    A transaction that fails because the database went away — a server
    restart, a dropped connection, SQLite busy beyond its timeout — was
    rolled back, or (rarely) committed without the answer arriving.  Either
    way it is safe to run again on a new connection: outcomes are recorded
    only for items still this worker's (a lease that ran out while the
    database was away is given up, see `Store._finish`), and items a lost
    answer had claimed are handed back (``recovering``).  Retries back off
    from 50 ms to 5 s, with jitter so that many workers do not return in
    step, until ``timeout`` seconds of failures: then `DatabaseUnavailable`.
    """

    def __init__(self, store: Store, worker_id: int, name: str, timeout: float) -> None:
        self._store = store
        self._worker = worker_id
        self._name = name
        self._timeout = timeout
        self._conn: Any = None
        self._recovering = False

    def connect(self) -> None:
        self._retry(self._open, "connect")

    def _open(self) -> None:
        if self._conn is None:
            self._conn = self._store.connect()

    def claim(self, finished, want: int, release, unless_fewer: int = 0) -> Any:
        def attempt():
            self._open()
            outcome = self._store.claim(
                self._conn, self._worker, finished, want, release, self._recovering, unless_fewer
            )
            self._recovering = False
            return outcome

        return self._retry(attempt, "claim")

    def peek(self) -> bool:
        """`Store.peek`; True (claim now) when the database is away: the claim retries."""
        try:
            self._open()
            return self._store.peek(self._conn)
        except Exception as exc:
            if not transient(exc):
                raise
            return True

    def stop(self, finished, release) -> None:
        self.close()
        self._retry(
            lambda: self._store.stop_worker(self._worker, self._name, finished, release), "stop"
        )

    def close(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(Exception):
                self._conn.close()
            self._conn = None

    def _retry(self, attempt: Callable[[], Any], what: str) -> Any:
        deadline = None
        delay = 0.05
        while True:
            try:
                return attempt()
            except Exception as exc:
                if not transient(exc):
                    if what != "stop":
                        self.close()
                    raise
                now = time.monotonic()
                deadline = deadline or now + self._timeout
                reason = getattr(exc, "orig", None) or exc
                if now >= deadline:
                    self.close()
                    raise DatabaseUnavailable(
                        f"{self._name}: lost the database for {self._timeout:g} s "
                        f"(reconnect_timeout) at {what}: {reason}"
                    ) from exc
                log.warning(
                    "%s: database unavailable at %s (%s); retrying in %.2f s",
                    self._name,
                    what,
                    str(reason).strip().splitlines()[0] if str(reason).strip() else reason,
                    delay,
                )
                self.close()
                self._recovering = True
                time.sleep(min(delay * random.uniform(0.5, 1.5), max(0.0, deadline - now)))
                delay = min(delay * 2, 5.0)


def transient(exc: BaseException) -> bool:
    """Whether a database error may pass: the connection or the lock, not the SQL."""
    if isinstance(exc, DBAPIError) and exc.connection_invalidated:
        return True
    # Unwrapped: the write lock is taken below SQLAlchemy (see _db._take_write_lock).
    orig = exc if isinstance(exc, sqlite3.Error) else getattr(exc, "orig", None)
    if isinstance(orig, sqlite3.OperationalError):
        # SQLite's OperationalError also means "no such table" and the like.
        text = str(orig).lower()
        return any(w in text for w in ("locked", "busy", "disk i/o", "unable to open"))
    return isinstance(exc, (OperationalError, InterfaceError))


class _BatchSize:
    """How many items to claim at once: about ``TARGET`` seconds of work.

    One transaction per item costs more than a trivial item's work; one per
    batch does not.  The size follows the measured time of the items (a
    moving average), growing at most tenfold per batch: trivial items take
    1, 10, then 100 (each claim is a transaction every other worker waits
    for on SQLite, so the ramp is short).  Before any item is timed, the
    first claim takes ``FIRST`` items when at least ``LARGE`` times as
    many are ready (then 1,000), else one: on a large queue a worker's
    items are not the last ones, and each claim saved is a hand-off of the
    write lock saved.  Items slower than measured (or, in a first batch,
    than a second in all) leave the batch overdue after ``deadline`` and
    the rest is handed back.  A fixed ``claim_batch`` turns this off.
    """

    TARGET = 0.1
    MOST = 1000
    GROWTH = 10
    FIRST = 100
    LARGE = 20

    def __init__(self, fixed: int | None) -> None:
        self._fixed = fixed
        self._average: float | None = None
        self._last = 1

    def measured(self, seconds: float) -> None:
        if self._average is None:
            self._average = seconds
        else:
            self._average += 0.3 * (seconds - self._average)

    def next(self) -> int:
        if self._fixed is not None:
            return self._fixed
        if self._average is None:
            return self.FIRST
        ideal = int(self.TARGET / max(self._average, 1e-6))
        self._last = max(1, min(ideal, self.MOST, self._last * self.GROWTH))
        return self._last

    def unless_fewer(self) -> int:
        """How many items must be ready for `next` to be claimed (0: any number)."""
        return self.LARGE * self.FIRST if self._fixed is None and self._average is None else 0

    def claimed(self, n: int) -> None:
        """A claim returned ``n`` items: the next may be up to ``GROWTH`` times as many."""
        if self._fixed is None:
            self._last = max(1, n)

    def deadline(self, n: int) -> float:
        """Seconds after which a batch of ``n`` is overdue."""
        if self._fixed is not None or n == 1:
            return float("inf")
        return max(1.0, 10 * n * (self._average or 0.0))


class _Backoff:
    """Waits between claims that found nothing yet: short at first, then longer.

    While it waits it asks ``ready`` (a read that takes no lock) every few
    ms, up to 50 ms apart, and claims as soon as an item is free or the
    others are done: the end of a run is not held up by a long sleep, and
    idle workers do not take the write lock from working ones.
    """

    def __init__(self, longest: float) -> None:
        self._longest = min(longest, 1.0)
        self._next = 0.005

    def reset(self) -> None:
        self._next = 0.005

    def wait(self, ready: Callable[[], bool] | None = None) -> None:
        deadline = time.monotonic() + self._next
        self._next = min(self._next * 2, self._longest)
        step = 0.005
        while (left := deadline - time.monotonic()) > 0:
            time.sleep(min(step, left))
            step = min(step * 2, 0.05)
            if ready is not None and time.monotonic() < deadline and ready():
                return


def _stopped_message(name: str, stopped: Stopped) -> str:
    shown = "; ".join(f"{key!r}: {error}" for key, error in stopped.failures)
    return (
        f"{name}: stopping because items failed and failure_policy='stop' ({shown}); "
        "re-queue them with `accord reset DB --failed`"
    )


# Items this process marked failed with LEFT_LOOP, and the frame that ran
# the loop: an exception that ends the process and passed through that frame
# is what ended the loop, and its traceback replaces the generic reason.
# Read at exit from sys.last_exc / sys.last_value, which the interpreter sets
# for the uncaught exception that ended the program before atexit runs:
# sys.excepthook stays the application's.
_recent_failures: list[tuple[Store, Claimed, tuple[int, Any]]] = []
_hook_lock = threading.Lock()
_hook_installed = False


def _remember_failure(store: Store, claimed: Claimed, loop_frame: Any) -> None:
    global _hook_installed
    # id and code, not the frame: holding the frame would keep its locals alive.
    where = (id(loop_frame), getattr(loop_frame, "f_code", None))
    with _hook_lock:
        _recent_failures[:] = [r for r in _recent_failures if r[0] is not store][-15:]
        _recent_failures.append((store, claimed, where))
        if not _hook_installed:
            atexit.register(_record_uncaught_at_exit)
            _hook_installed = True


def _record_uncaught_at_exit() -> None:
    value = getattr(sys, "last_exc", None) or getattr(sys, "last_value", None)
    if value is not None:
        _record_uncaught(type(value), value, value.__traceback__)


def _record_uncaught(kind: type[BaseException], value: BaseException, tb: Any) -> None:
    error = "".join(traceback.format_exception(kind, value, tb)).strip()
    passed = {(id(frame), frame.f_code) for frame, _ in traceback.walk_tb(tb)}
    with _hook_lock:
        failures, _recent_failures[:] = list(_recent_failures), []
    for store, claimed, where in failures:
        if where not in passed:
            continue
        # The process is ending anyway; if this fails the generic reason stays.
        with contextlib.suppress(Exception):
            store.set_error(claimed.item_id, error)
