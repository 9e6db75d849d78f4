"""`Pool`: a `concurrent.futures.Executor` over processes or sub-interpreters.

One dispatcher thread per pool owns every worker socket: it reads replies,
settles futures, notices workers that ended (their socket reaches its end)
and ends the workers of tasks that ran past their timeout.  A submitting
thread sends its task straight to a free worker when there is one, so a
round trip costs one wake-up of the worker and one of the dispatcher.

Sockets are non-blocking and every send goes through a per-worker outbox:
neither side ever blocks writing while the other blocks writing to it.

Each worker holds at most two tasks: the one it runs and the next one, so it
never waits for the pool between tiny tasks.  A task's timeout counts from
the moment it reaches the head of its worker (the reply to the task before
it arrived), not from when it was submitted.
"""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import functools
import itertools
import os
import pickle
import re
import selectors
import socket
import sys
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from .._core import _segment
from .._core._errors import TaskTimeout, WorkerLost
from .._core._remote import rebuild_error
from . import _handles, _pickling, _wire, _worker
from ._wire import FrameReader, frame

_PER_WORKER = 2  # tasks a worker holds: the running one and the next
_REAP_S = 5.0
_GRACE_S = 0.5


class TaskFuture(concurrent.futures.Future):
    """A `concurrent.futures.Future` that can also be awaited in asyncio.

    >>> import asyncio
    >>> from accord import Pool
    >>> async def main(pool):
    ...     return await pool.submit(pow, 2, 10)
    >>> with Pool(workers=1) as pool:
    ...     asyncio.run(main(pool)), pool.submit(pow, 3, 2).result()
    (1024, 9)
    """

    def __await__(self):
        import asyncio  # here: slow to import, and only asyncio programs need it

        return asyncio.wrap_future(self).__await__()


class _Task:
    __slots__ = (
        "args",
        "blob",
        "buffers",
        "chunk",
        "fn",
        "future",
        "id",
        "payload",
        "retries",
        "timeout",
    )

    def __init__(self, task_id, future, payload, timeout, retries, fn, args, blob, chunk):
        self.id = task_id
        self.future = future
        self.payload, self.buffers = payload  # the pickle and its out-of-band buffers
        self.timeout = timeout
        self.retries = retries
        self.fn = fn
        self.args = args
        self.blob = blob  # the pickled function: a chunk's items may be sent again alone
        # A chunk of `map` (_worker.STAR or ONE): args is a sequence of calls
        # (argument tuples, or single arguments: a list, or a slice of the
        # caller's range, list or tuple), the result an _Outcome.
        self.chunk = chunk

    @property
    def what(self) -> str:
        """``name(args)`` for error messages (made only when one is needed)."""
        if self.chunk:
            star = self.chunk & ~_worker.ADAPTIVE == _worker.STAR
            first = self.args[0] if star else (self.args[0],)
            if len(self.args) == 1:
                return _describe(self.fn, first)
            return f"a chunk of {len(self.args)} calls of {_describe(self.fn, first)}"
        return _describe(self.fn, self.args)


class _Outcome:
    """What a chunk of `map` gave: a value or an error per call, and the
    time a call took there (0: not measured)."""

    __slots__ = ("errors", "per_call", "values")

    def __init__(self, values: list, errors: dict[int, BaseException], per_call: float) -> None:
        self.values = values
        self.errors = errors
        self.per_call = per_call


class _Slot:
    """A worker and the tasks it holds, in the order it runs them."""

    def __init__(self, handle: _handles.WorkerHandle, stem: str) -> None:
        self.handle = handle
        self.stem = stem  # names of the segments of big frames to and from it
        self.reader = FrameReader(handle.fd)
        self.tasks: collections.deque[_Task] = collections.deque()
        self.head_since = time.monotonic()
        self.outbox = bytearray()
        self.watching_writes = False
        self.overdue: _Task | None = None  # the task whose timeout ended this worker
        self.ready = False  # the worker has started (its first frame came)
        err = getattr(handle, "err", None)
        self.stderr = None if err is None else _Stderr(err)


class _Stderr:
    """A worker process's standard error: passed on to ours, its tail kept."""

    _TAIL = 2000

    def __init__(self, end: socket.socket) -> None:
        self.end = end
        self.tail = bytearray()

    def read(self) -> None:
        while True:
            try:
                chunk = self.end.recv(1 << 16)
            except (BlockingIOError, OSError):
                return
            if not chunk:
                return
            with contextlib.suppress(OSError):
                os.write(2, chunk)
            self.tail += chunk
            del self.tail[: -self._TAIL]

    def last_words(self) -> str:
        """The end of what it wrote, for an error message ("" if nothing)."""
        self.read()
        text = self.tail.decode(errors="replace").strip()
        if not text:
            return ""
        lines = text.splitlines()[-15:]
        return "; the end of its standard error:\n    " + "\n    ".join(lines)


class Pool(concurrent.futures.Executor):
    """Workers that run tasks: processes or sub-interpreters, one interface.

    A drop-in `concurrent.futures.Executor` (``submit``, ``map``,
    ``shutdown``, ``with``) whose futures also work with ``await``.

    Guarantees:

    - each task runs once, unless it is retried (``retries=``): then it runs
      until it succeeds or its tries are spent;
    - a task's error comes back from ``future.result()`` as the same
      exception type, with the worker's traceback as its ``__cause__``;
    - a worker that dies (killed, crashed, ``os._exit``) fails its task with
      `WorkerLost` and is replaced; tasks it held but had not started run
      elsewhere;
    - a task that runs past ``timeout=`` fails with `TaskTimeout`; its worker
      is ended (a process is killed) and replaced; a result that arrives as
      it is ended counts, and a task it had started next is lost
      (`WorkerLost`, or retried), never run twice;
    - if the pool cannot go on (a worker cannot be replaced), every
      unfinished future fails with `concurrent.futures.BrokenExecutor`.

    ``backend`` picks how workers start: ``"forkserver"`` (the default on
    Linux), ``"spawn"``, ``"fork"`` or ``"subinterpreter"`` (one process,
    each worker its own interpreter; its own GIL from Python 3.12).

        >>> from accord import Pool, Share
        >>> def hit(share, n):
        ...     share.hits += n
        ...     return n * n
        >>> with Share() as share, Pool(workers=2) as pool:
        ...     share.hits = 0
        ...     squares = list(pool.map(hit, [share] * 4, range(4)))
        ...     print(squares, share.hits)
        [0, 1, 4, 9] 6
    """

    def __init__(
        self,
        workers: int | None = None,
        backend: str | None = None,
        *,
        initializer: Callable[..., object] | None = None,
        initargs: tuple = (),
    ) -> None:
        if workers is None:
            workers = _cpu_count()
        if not isinstance(workers, int) or workers < 1:
            raise ValueError(f"workers must be a positive integer, not {workers!r}")
        self.backend = _handles.check_backend(backend)
        # A sub-interpreter interrupts its own overdue task (see _watchdog);
        # the pool dismisses it only if that did not work within the grace.
        self._grace = _GRACE_S if self.backend == "subinterpreter" else 0.0
        self.workers = workers
        self._initializer = _pickling.dumps((initializer, initargs)) if initializer else None
        # Names of the segments of big frames: this process's, this pool's.
        self._stem = f"{_segment.PREFIX}.{os.getuid()}.anon-{os.getpid()}-pool{id(self):x}~"
        _sweep_dead_pools()
        self._lock = threading.Lock()
        self._pending: collections.deque[_Task] = collections.deque()
        self._ids = itertools.count(1)
        self._worker_ids = itertools.count(1)
        self._shutdown = False
        self._broken: BaseException | None = None
        self._selector = selectors.DefaultSelector()
        with _handles._fork_lock:  # see _handles._pair
            self._wake_r, self._wake_w = socket.socketpair()
            for end in (self._wake_r, self._wake_w):
                end.setblocking(False)
                _handles._parent_ends[end.fileno()] = end
        self._selector.register(self._wake_r, selectors.EVENT_READ, None)
        self._slots: list[_Slot] = []
        self._dismissed: list[_handles.WorkerHandle] = []
        try:
            for _ in range(workers):
                self._add_worker()
        except BaseException:
            self._close_workers()
            raise
        self._thread = threading.Thread(
            target=self._dispatch_forever, name="accord-pool", daemon=True
        )
        self._thread.start()
        _live_pools.add(self)

    # -- the Executor interface ------------------------------------------

    def submit(
        self,
        fn: Callable[..., Any],
        /,
        *args: Any,
        timeout: float | None = None,
        retries: int = 0,
        **kwargs: Any,
    ) -> TaskFuture:
        """Run ``fn(*args, **kwargs)`` in a worker; return its future.

        ``timeout`` (seconds) bounds one run of the task; ``retries`` is how
        many more times it runs after an error, a lost worker or a timeout.
        (To pass arguments named ``timeout`` or ``retries`` to `fn`, bind
        them with `functools.partial`.)  The future can be awaited.
        """
        _check_limits(timeout, retries)
        return self._submit(self._pickle_function(fn), fn, args, kwargs, timeout, retries)

    def _submit(self, blob, fn, args, kwargs, timeout, retries, chunk=0) -> TaskFuture:
        task = self._new_task(blob, fn, args, kwargs, timeout, retries, chunk)
        self._enqueue([task], timeout)
        return task.future

    def _enqueue(self, tasks: list[_Task], timeout) -> None:
        with self._lock:
            if self._broken is not None:
                raise concurrent.futures.BrokenExecutor(str(self._broken))
            if self._shutdown:
                raise RuntimeError("cannot submit to a pool after shutdown()")
            self._pending.extend(tasks)
            self._dispatch_pending()  # if no worker has room, the next reply hands it out
            if timeout is not None:
                self._wake()  # the dispatcher must watch its deadline

    def _new_task(self, blob, fn, args, kwargs, timeout, retries, chunk) -> _Task:
        payload = self._pickle_call(blob, fn, args, kwargs, chunk, timeout)
        future = TaskFuture()
        return _Task(next(self._ids), future, payload, timeout, retries, fn, args, blob, chunk)

    def map(
        self,
        fn: Callable[..., Any],
        *iterables: Iterable[Any],
        timeout: float | None = None,
        chunksize: int | None = None,
        retries: int = 0,
        progress: bool = False,
    ) -> Iterator[Any]:
        """``fn`` over the items, in parallel; results in order.

        Calls travel in chunks, one task each: by default one chunk per
        worker when the number of calls is known (at most 65,536 calls),
        then sized from the time calls take (a few milliseconds of work per
        chunk); a worker stops a chunk of long calls early and the rest
        spreads over every worker.  A range, list or tuple is sliced, not
        iterated.  ``chunksize=n`` fixes the size.  Each call still has its
        own result or error: iterating yields results in input order and
        raises the first failed call's error when it gets there.

        The input is read as results are consumed, a bounded number of
        chunks ahead: a huge or endless iterable works in bounded memory.

        ``timeout`` bounds each call (with ``chunksize`` > 1, each chunk),
        unlike `concurrent.futures.Executor.map`'s overall deadline; given
        without ``chunksize``, every call is a task of its own.  ``retries``
        counts per call: a call that raised runs again on its own.  A chunk
        whose worker was lost or that ran past its timeout is split: its
        calls run again one per task, so that only the one at fault fails
        (calls of that chunk that had finished run a second time).
        ``progress=True`` shows a tqdm bar of completed calls.
        """
        if chunksize is not None and (not isinstance(chunksize, int) or chunksize < 1):
            raise ValueError(f"chunksize must be a positive integer, not {chunksize!r}")
        _check_limits(timeout, retries)
        blob = self._pickle_function(fn)  # once for every task of the map
        if chunksize is None and timeout is not None:
            chunksize = 1
        total = _known_length(iterables)
        bar = _progress_bar(total) if progress else None
        if len(iterables) == 1:  # calls of one argument travel bare, not in 1-tuples
            calls, kind = iterables[0], _worker.ONE
            if type(calls) not in _SLICED:
                calls = iter(calls)
        else:
            calls, kind = zip(*iterables, strict=False), _worker.STAR
        mapping = _Mapping(self, blob, fn, calls, kind, total, timeout, retries, chunksize, bar)
        try:
            mapping.top_up()  # work starts now, as with Executor.map
        except BaseException:
            mapping.close()
            raise
        return mapping.results()

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Stop taking tasks; end the workers once the submitted tasks are done.

        ``cancel_futures=True`` cancels the tasks no worker has started.
        ``wait=True`` returns once every worker has ended.
        """
        cancelled = []
        with self._lock:
            self._shutdown = True
            if cancel_futures:
                # A retry, or a task a lost worker held next, has started: its
                # future cannot be cancelled, so it stays and runs (or it would
                # never settle).
                cancelled = [t for t in self._pending if not t.future.running()]
                started = [t for t in self._pending if t.future.running()]
                self._pending.clear()
                self._pending.extend(started)
            self._wake()
        for task in cancelled:
            task.future.cancel()
        if wait and self._thread is not threading.current_thread():
            self._thread.join()

    # -- the dispatcher ------------------------------------------------

    def _dispatch_forever(self) -> None:
        try:
            while True:
                for key, events in self._selector.select(self._time_to_next_deadline()):
                    if key.data is None:
                        self._drain_wake()
                    elif type(key.data) is _Stderr:
                        key.data.read()
                        continue
                    elif events & selectors.EVENT_WRITE:
                        with self._lock:
                            self._flush(key.data)
                    if key.data is not None and events & selectors.EVENT_READ:
                        self._on_readable(key.data)
                self._end_overdue()
                with self._lock:
                    for slot in self._slots:
                        self._watch_writes(slot)
                    self._dispatch_pending()
                    if self._shutdown and not self._pending and not self._busy():
                        break
        except BaseException as exc:
            # E.g. no new worker could start (fork failed): fail every task
            # rather than leave its future waiting for a dispatcher that is gone.
            self._fail_all(concurrent.futures.BrokenExecutor(f"the pool stopped: {exc!r}"))
            raise
        finally:
            self._close_workers()

    def _fail_all(self, error: BaseException) -> None:
        with self._lock:
            if self._broken is None:
                self._broken = error
            self._shutdown = True
            doomed = list(self._pending) + [t for s in self._slots for t in s.tasks]
            self._pending.clear()
            for s in self._slots:
                s.tasks.clear()
        for task in doomed:
            if not task.future.done():
                task.future.set_exception(self._broken)

    def _on_readable(self, slot: _Slot, final: bool = False) -> None:
        """Settle the tasks `slot` answered; handle its end.  `final`: the
        worker is dead, read everything it sent and treat that as its end."""
        frames, ended = slot.reader.read(final)
        settle, lost, doomed = [], None, []
        with self._lock:
            for reply, buffers in frames:
                if self._broken is not None:
                    break  # its tasks, this worker's too, have been failed already
                task_id, kind, payload = _worker.decode_reply(reply)
                if kind == _worker.READY:
                    slot.ready = True
                    slot.head_since = time.monotonic()  # a timeout counts from here
                    continue
                if kind == _worker.INIT_FAILED:
                    doomed = self._break(payload)
                    break
                task = slot.tasks.popleft()
                assert task.id == task_id, "a worker answered out of order"
                slot.head_since = time.monotonic()
                settle.append((task, kind, payload, buffers))
            if ended and slot in self._slots:
                lost = self._remove(slot)
        for task in doomed:
            if not task.future.cancelled():  # cancelled while it waited: already done
                task.future.set_exception(self._broken)
        for task, kind, payload, buffers in settle:
            self._settle(task, kind, payload, buffers)
        if lost is None:
            return
        reason = lost.handle.reap(_REAP_S)
        words = "" if lost.stderr is None else lost.stderr.last_words()
        if lost.handle.ended():  # big frames it never took (or sent, in vain)
            _wire.unlink_leftovers(lost.stem)
        overdue = lost.overdue
        if overdue is None and not lost.ready:
            # It never started: the next would fail the same way (a script
            # without its __main__ guard, a broken environment).  Stop.
            error = WorkerLost(_start_failed(self.backend, lost.handle.ident, reason) + words)
            with self._lock:
                doomed = self._break_with(error) + list(lost.tasks)
                lost.tasks.clear()
            for task in doomed:
                if not task.future.cancelled():
                    task.future.set_exception(self._broken)
            return
        if overdue is None:
            self._fail_head(lost, WorkerLost, f"worker {lost.handle.ident} {reason}", words)
        elif lost.tasks and lost.tasks[0] is overdue:
            self._fail_head(lost, TaskTimeout, _timed_out(overdue))
        else:  # it answered the overdue task after all, then started the next one
            self._fail_head(
                lost,
                WorkerLost,
                f"worker {lost.handle.ident} was ended as {overdue.what} ran past its timeout",
            )

    def _settle(self, task: _Task, kind: int, payload: bytes, buffers=()) -> None:
        try:
            if kind == _worker.RESULT:
                result = pickle.loads(payload, buffers=buffers)
                if task.chunk:
                    self._settle_chunk(task, result)
                else:
                    task.future.set_result(result)
                return
            if kind == _worker.INTERRUPTED:
                error = TaskTimeout(
                    f"{task.what} ran longer than its timeout of {task.timeout:g} s; "
                    "it was interrupted in its sub-interpreter"
                )
            else:
                error = rebuild_error(*pickle.loads(payload))
        except BaseException as exc:
            # A result or an error that does not unpickle here: that task's
            # error, whatever it raised (KeyboardInterrupt, SystemExit...)
            # -- the dispatcher lives on (this thread never gets a real one).
            error = exc
        self._retry_or_fail(task, error)

    def _settle_chunk(self, task: _Task, reply) -> None:
        values, packed, per_call = reply
        errors = {}
        for i, error in packed.items():
            try:
                errors[i] = rebuild_error(*error)
            except BaseException as exc:
                errors[i] = exc
        done, n = len(values), len(task.args)
        outcome = _Outcome(values, errors, per_call)
        groups = []
        if task.retries > 0 and self._broken is None:
            # A call that raised runs again on its own, as a task of one call.
            groups = [([i], task.retries - 1) for i in errors]
        if done < n:
            # An adaptive chunk that stopped early (its calls take long): the
            # rest goes out again in chunks sized from the time measured.
            values.extend([None] * (n - done))
            size = _chunk_size(outcome.per_call, n - done)
            groups += [
                (list(range(start, min(start + size, n))), task.retries)
                for start in range(done, n, size)
            ]
        if not groups:
            task.future.set_result(outcome)
            return
        self._rerun_calls(task, groups, outcome)

    def _rerun_calls(self, task: _Task, groups: list, outcome: _Outcome) -> None:
        """Run calls of chunk `task` again: `groups` of (indexes, retries),
        one task each; settle `task` with `outcome` completed by theirs."""
        left = [len(groups)]
        lock = threading.Lock()

        def done(indexes, sub_future) -> None:
            try:
                result = sub_future.result()
            except BaseException as exc:  # cancelled, or the pool broke
                for i in indexes:
                    outcome.errors[i] = exc
            else:
                for k, i in enumerate(indexes):
                    if k in result.errors:
                        outcome.errors[i] = result.errors[k]
                    else:
                        outcome.errors.pop(i, None)
                        outcome.values[i] = result.values[k]
            with lock:
                left[0] -= 1
                last = not left[0]
            if last:
                task.future.set_result(outcome)

        subtasks = []
        for indexes, retries in groups:
            calls = [task.args[i] for i in indexes]
            sub = self._new_task(task.blob, task.fn, calls, {}, task.timeout, retries, task.chunk)
            sub.future.set_running_or_notify_cancel()  # part of a started task: not cancellable
            sub.future.add_done_callback(functools.partial(done, indexes))
            subtasks.append(sub)
        with self._lock:
            broken = self._broken
            if broken is None:
                self._pending.extendleft(reversed(subtasks))
                self._dispatch_pending()
        if broken is not None:
            for sub in subtasks:
                sub.future.set_exception(broken)

    def _retry_or_fail(self, task: _Task, error: BaseException) -> None:
        if task.chunk and len(task.args) > 1 and self._broken is None:
            # Which call failed the whole chunk (a lost worker, a timeout) is
            # unknown: each runs again on its own, with all its tries left.
            outcome = _Outcome([None] * len(task.args), {}, 0.0)
            self._rerun_calls(task, [([i], task.retries) for i in range(len(task.args))], outcome)
            return
        if task.retries > 0 and self._broken is None:
            task.retries -= 1
            with self._lock:
                self._pending.appendleft(task)
                self._dispatch_pending()
            return
        if task.chunk:
            task.future.set_result(
                _Outcome([None] * len(task.args), dict.fromkeys(range(len(task.args)), error), 0.0)
            )
            return
        task.future.set_exception(error)

    def _fail_head(self, slot: _Slot, error_type, why: str, words: str = "") -> None:
        """Fail (or retry) the task `slot` was running; requeue the one it held next."""
        held = list(slot.tasks)
        with self._lock:
            self._pending.extendleft(reversed(held[1:]))
        if held:  # before the worker is replaced, which may fail
            head = held[0]
            if error_type is WorkerLost:
                message = f"{why} while running {head.what}; it was replaced{words}"
            else:
                message = why.format(what=head.what)
            self._retry_or_fail(head, error_type(message))
        with self._lock:
            if self._broken is None and (not self._shutdown or self._pending or held):
                self._add_worker()
            self._dispatch_pending()

    def _end_overdue(self) -> None:
        with self._lock:  # submitting threads add to the slots' tasks
            now = time.monotonic()
            overdue = [s for s in self._slots if (d := self._deadline(s)) is not None and now >= d]
        for slot in overdue:
            head = slot.tasks[0]
            if isinstance(slot.handle, _handles.ProcessHandle):
                # Killed, then read to the end: it may have answered the task
                # since select() returned, and started the next one.  That
                # answer counts, and the next task, begun on a worker that is
                # now dead, is lost rather than handed out again (it would run
                # twice).
                slot.overdue = head
                slot.handle.kill()
                slot.handle.reap(_REAP_S)  # dead: all it sent is in the socket now
                self._on_readable(slot, final=True)
                continue
            # A sub-interpreter cannot be killed, only dismissed: first take an
            # answer that has just arrived (the worker then is not overdue).
            self._on_readable(slot)
            if slot not in self._slots or not slot.tasks or slot.tasks[0] is not head:
                continue
            with self._lock:
                self._remove(slot)
            self._dismissed.append(slot.handle)  # still running its task: wait for it at shutdown
            self._fail_head(slot, TaskTimeout, _timed_out(head))

    def _deadline(self, slot: _Slot) -> float | None:
        """When `slot`'s running task is overdue (None: it has no timeout)."""
        head = slot.tasks[0] if slot.tasks else None
        if head is None or head.timeout is None or not slot.ready:
            return None  # (a worker's start-up is not its task's time)
        return slot.head_since + head.timeout + self._grace

    def _time_to_next_deadline(self) -> float | None:
        deadlines = [d for slot in self._slots if (d := self._deadline(slot)) is not None]
        if not deadlines:
            return None
        return max(0.0, min(deadlines) - time.monotonic())

    # -- under self._lock ------------------------------------------------

    def _dispatch_pending(self) -> bool:
        """Hand pending tasks to workers with room; False if some had to wait."""
        touched: list[_Slot] = []  # one write per worker, however many tasks it got
        try:
            while self._pending:
                slot = min(self._slots, key=lambda s: len(s.tasks), default=None)
                # Chunks of a map go deeper: a worker runs them back to back
                # without waiting for the dispatcher to hand it the next.
                depth = _CHUNKS_PER_WORKER if self._pending[0].chunk else _PER_WORKER
                if slot is None or len(slot.tasks) >= depth:
                    return False
                task = self._pending.popleft()
                if not task.future.running() and not task.future.set_running_or_notify_cancel():
                    continue  # cancelled while it waited
                if not slot.tasks:
                    slot.head_since = time.monotonic()
                slot.tasks.append(task)
                slot.outbox += frame(
                    _worker.encode_task(task.id, task.payload), slot.stem, task.buffers
                )
                if slot not in touched:
                    touched.append(slot)
            return True
        finally:
            for slot in touched:
                self._flush(slot)

    def _flush(self, slot: _Slot) -> None:
        while slot.outbox:
            try:
                sent = os.write(slot.handle.fd, slot.outbox)
            except BlockingIOError:
                break
            except OSError:  # the worker is gone; its end of stream says so
                slot.outbox.clear()
                break
            del slot.outbox[:sent]
        if slot.outbox and not slot.watching_writes:
            self._wake()  # the dispatcher watches the socket until it drains

    def _watch_writes(self, slot: _Slot) -> None:
        want = bool(slot.outbox)
        if want != slot.watching_writes and slot in self._slots:
            events = selectors.EVENT_READ | (selectors.EVENT_WRITE if want else 0)
            self._selector.modify(slot.handle.fd, events, slot)
            slot.watching_writes = want

    def _add_worker(self) -> None:
        # Each worker's segments have a name of their own under the pool's
        # stem: those a dead worker never took can go with it.
        stem = f"{self._stem}w{next(self._worker_ids)}-"
        slot = _Slot(_handles.start(self.backend, self._initializer, stem), stem)
        self._selector.register(slot.handle.fd, selectors.EVENT_READ, slot)
        if slot.stderr is not None:
            self._selector.register(slot.stderr.end, selectors.EVENT_READ, slot.stderr)
        self._slots.append(slot)

    def _remove(self, slot: _Slot) -> _Slot:
        self._slots.remove(slot)
        self._selector.unregister(slot.handle.fd)
        if slot.stderr is not None:
            self._selector.unregister(slot.stderr.end)
            slot.stderr.read()  # all of it: the worker's end closed as it did
        slot.handle.close()
        return slot

    def _busy(self) -> bool:
        return any(slot.tasks for slot in self._slots)

    def _break(self, payload: bytes) -> list[_Task]:
        """A worker's initializer failed: the pool cannot run anything.

        Returns the tasks to fail (outside the lock: their callbacks may
        call back into the pool)."""
        try:
            cause = rebuild_error(*pickle.loads(payload))
        except BaseException as exc:  # what a worker sent never stops the dispatcher
            cause = exc
        error = WorkerLost(f"the worker initializer failed: {cause!r}")
        error.__cause__ = cause
        return self._break_with(error)

    def _break_with(self, error: BaseException) -> list[_Task]:
        if self._broken is None:
            self._broken = error
        self._shutdown = True
        doomed = list(self._pending) + [t for s in self._slots for t in s.tasks]
        self._pending.clear()
        for s in self._slots:
            s.tasks.clear()
        return doomed

    def _wake(self) -> None:
        # BlockingIOError: full, a wake-up is pending anyway; other OSErrors:
        # the dispatcher has already ended (a broken pool) and closed it.
        with contextlib.suppress(OSError):
            self._wake_w.send(b"\0")

    # -- the rest -----------------------------------------------------

    def _drain_wake(self) -> None:
        try:
            while self._wake_r.recv(4096):
                pass
        except BlockingIOError:
            pass

    def _pickle_function(self, fn) -> bytes:
        """`fn` pickled on its own: a worker unpickles each function once."""
        if self.backend != "subinterpreter" and _module_of(fn) not in _SCRIPT_MODULES:
            with contextlib.suppress(Exception):
                return pickle.dumps(fn, 5)  # by reference: a short name
        # Lambdas, local functions, the script's functions (which a
        # sub-interpreter has not imported): by value, with their globals.
        try:
            return _pickling.dumps(fn, with_source=True)
        except Exception as exc:
            raise _cannot_send(fn, (), exc) from exc

    def _pickle_call(self, blob: bytes, fn, args, kwargs, chunk: bool, timeout):
        """(pickle, out-of-band buffers) of a call: big buffers (numpy arrays'
        data) travel beside the pickle, never copied into it."""
        call = (blob, args, kwargs, chunk, timeout)
        buffers: list = []
        collect = _worker._collector(buffers)
        if self.backend != "subinterpreter":
            with contextlib.suppress(Exception):
                return pickle.dumps(call, 5, buffer_callback=collect), buffers
            buffers.clear()
        try:
            return _pickling.dumps(call, buffer_callback=collect), buffers
        except Exception as exc:
            raise _cannot_send(fn, args, exc) from exc

    def _close_workers(self) -> None:
        with self._lock:
            slots, self._slots = self._slots, []
        for slot in slots:
            self._selector.unregister(slot.handle.fd)
            if slot.stderr is not None:
                self._selector.unregister(slot.stderr.end)
                slot.stderr.read()
            slot.handle.close()
        for handle in [slot.handle for slot in slots]:
            handle.reap(_REAP_S)
        for handle in self._dismissed:
            handle.wait_for_task()
        _wire.unlink_leftovers(self._stem)  # buffers, and big frames no one took
        with _handles._fork_lock:
            for end in (self._wake_r, self._wake_w):
                _handles._parent_ends.pop(end.fileno(), None)
                end.close()
        self._selector.close()
        _live_pools.discard(self)


_SCRIPT_MODULES = ("__main__", "__mp_main__")
_POOL_SEGMENT = re.compile(r"anon-(\d+)-pool[0-9a-f]+~")


def _sweep_dead_pools() -> None:
    """Unlink the segments of pools whose process died (SIGKILL) before a
    worker could take them.

    Only names of this user's pools, in files this user owns, whose creating
    process is gone: a live process's segments are never touched.
    """
    uid = os.getuid()
    start = f"{_segment.PREFIX}.{uid}."
    for name in _segment.leftovers(start):
        match = _POOL_SEGMENT.match(name, len(start))
        if match is None:
            continue
        try:
            if os.stat(f"/dev/shm/{name}").st_uid != uid:
                continue
            os.kill(int(match.group(1)), 0)
        except ProcessLookupError:
            _segment.unlink(name)
        except OSError:  # gone meanwhile, or a process we may not signal: alive
            continue


def _module_of(fn) -> str | None:
    return getattr(fn, "__module__", None)


def _check_limits(timeout, retries) -> None:
    if timeout is not None and not timeout > 0:
        raise ValueError(f"timeout must be a positive number of seconds, not {timeout!r}")
    if not isinstance(retries, int) or retries < 0:
        raise ValueError(f"retries must be a non-negative integer, not {retries!r}")


def _cannot_send(fn, args, exc: Exception) -> TypeError:
    return TypeError(
        f"cannot send {_describe(fn, args)} to a worker: {exc}. Tasks, their arguments "
        "and results must pickle; create resources such as locks, files and "
        "connections inside the task"
    )


def _timed_out(task: _Task) -> str:
    """`_fail_head`'s message for a task past its timeout."""
    return (
        f"{{what}} ran longer than its timeout of {task.timeout:g} s; "
        "its worker was ended and replaced"
    )


def _describe(fn, args: tuple) -> str:
    name = getattr(fn, "__qualname__", None) or type(fn).__qualname__
    shown = ", ".join(repr(a) for a in args)
    if len(shown) > 60:
        shown = shown[:57] + "..."
    return f"{name}({shown})"


_TARGET_CHUNK_S = 0.005  # work per chunk: a round trip (~0.15 ms) costs a few % of it
_MAX_CHUNK = 4096  # calls per chunk when the input's length is unknown
_MAX_KNOWN_CHUNK = 65536  # calls per chunk when it is known (a few ms of tiny calls)
_CHUNKS_PER_WORKER = 4  # chunks submitted ahead of the consumer, per worker
# Inputs `map` slices rather than iterates: a chunk of a range is a range
# (three numbers to pickle, not a list of them); a list's slice is one copy.
_SLICED = (range, list, tuple)


class _Mapping:
    """One `Pool.map`: reads the input as results are consumed, sizes chunks.

    At most `_CHUNKS_PER_WORKER` chunks per worker are submitted and not yet
    consumed, so memory is bounded whatever the input's length.  A known
    number of calls starts as one chunk per worker (at most
    `_MAX_KNOWN_CHUNK` calls): no more tasks than workers for tiny calls,
    while a chunk of long calls stops early (see `_worker._run_chunk`) and
    its rest spreads.  An unknown number starts with one call per chunk (a
    long call must not hold a whole chunk hostage).  Once a chunk's time is
    known, chunks are sized to take about `_TARGET_CHUNK_S` each.
    """

    def __init__(self, pool, blob, fn, calls, kind, total, timeout, retries, chunksize, bar):
        self.pool = pool
        self.kind = kind
        self.blob = blob
        self.fn = fn
        self.calls = calls
        self.timeout = timeout
        self.retries = retries
        self.fixed = chunksize
        if chunksize is None:
            self.kind |= _worker.ADAPTIVE
        self.known = total is not None
        self.bar = bar
        self.window: collections.deque = collections.deque()
        self.exhausted = False
        self.per_call_s: float | None = None
        limit = pool.workers * _CHUNKS_PER_WORKER
        if total is None:
            self.cap = _MAX_CHUNK
        else:
            self.cap = max(1, min(_MAX_KNOWN_CHUNK, -(-total // pool.workers)))
        self.limit = limit
        # A range, list or tuple: chunks are slices of it from `self.read` on.
        self.sliced = type(calls) in _SLICED
        self.read = 0

    def _size(self) -> int:
        if self.fixed is not None:
            return self.fixed
        if self.per_call_s is None:
            # Unknown cost.  A known number of calls: one chunk per worker
            # (multiprocessing sends four; an adaptive chunk stops early if
            # its calls are long, so fewer round trips cost nothing in
            # spread).  An unknown number: one call per chunk, until one has
            # come back (not to read far ahead of a slow consumer).
            return self.cap if self.known else 1
        return _chunk_size(self.per_call_s, self.cap)

    def top_up(self) -> None:
        pool = self.pool
        tasks = []
        while not self.exhausted and len(self.window) + len(tasks) < self.limit:
            if (
                self.per_call_s is None
                and self.fixed is None
                and not self.known
                and len(self.window) + len(tasks) >= pool.workers
            ):
                break  # one probe per worker until a time is known
            chunk = self._take(self._size())
            if not chunk:
                self.exhausted = True
                break
            task = pool._new_task(
                self.blob, self.fn, chunk, {}, self.timeout, self.retries, self.kind
            )
            if self.bar is not None:
                task.future.add_done_callback(functools.partial(_advance, self.bar, len(chunk)))
            tasks.append(task)
            if len(self.window) < pool.workers:
                # Fewer chunks out than workers (a map begins): this one goes
                # now, so a worker starts while the next chunk is pickled.
                pool._enqueue(tasks, self.timeout)
                self.window.extend(task.future for task in tasks)
                tasks = []
        if tasks:  # the rest at once: one lock, one write per worker
            pool._enqueue(tasks, self.timeout)
            self.window.extend(task.future for task in tasks)

    def _take(self, n: int):
        """The next `n` calls (fewer at the end of the input)."""
        if self.sliced:
            chunk = self.calls[self.read : self.read + n]
            self.read += len(chunk)
            return chunk
        return list(itertools.islice(self.calls, n))

    def results(self) -> Iterator[Any]:
        """The results in order: a C-level iterator over each chunk's values."""
        return _Results(self._values_by_chunk(), self)

    def _values_by_chunk(self) -> Iterator[list]:
        try:
            while self.window:
                outcome = self.window.popleft().result()
                if outcome.per_call > 0:
                    old = self.per_call_s
                    new = outcome.per_call
                    self.per_call_s = new if old is None else (old + new) / 2
                self.top_up()
                errors = outcome.errors
                if not errors:
                    yield outcome.values
                    continue
                first = min(errors)
                yield outcome.values[:first]
                raise errors[first]
        finally:
            self.close()

    def close(self) -> None:
        for future in self.window:
            future.cancel()
        self.window.clear()
        if self.bar is not None:
            self.bar.close()


class _Results:
    """What `Pool.map` returns: an iterator over the results.

    Iterating it (``for``, ``list``) runs at C speed over each chunk's
    values (`itertools.chain`); ``close()`` stops the map, as a generator's
    does: chunks no worker has started are cancelled.
    """

    __slots__ = ("_chain", "_chunks", "_mapping")

    def __init__(self, chunks, mapping) -> None:
        self._chunks = chunks
        self._mapping = mapping
        self._chain = itertools.chain.from_iterable(chunks)

    def __iter__(self):
        return self._chain

    def __next__(self):
        return next(self._chain)

    def close(self) -> None:
        self._chunks.close()
        self._mapping.close()  # also when iteration never began


def _chunk_size(per_call_s: float, cap: int) -> int:
    """Calls per chunk for calls of `per_call_s` each: about _TARGET_CHUNK_S of work."""
    return max(1, min(cap, int(_TARGET_CHUNK_S / max(per_call_s, 1e-9))))


def _known_length(iterables) -> int | None:
    """How many calls `zip(*iterables)` makes, if every iterable knows its length."""
    try:
        return min(len(it) for it in iterables) if iterables else 0
    except TypeError:
        return None


def _advance(bar, n: int, _future) -> None:
    bar.update(n)


def _progress_bar(total: int | None):
    from tqdm.auto import tqdm

    return tqdm(total=total, unit="task")


def _start_failed(backend: str, ident: str, reason: str) -> str:
    message = f"worker {ident} {reason} before it started; the pool cannot run tasks"
    if backend not in ("spawn", "forkserver"):
        return message
    main = sys.modules.get("__main__")
    path = getattr(main, "__file__", None)
    source = ""
    if path is not None:
        with contextlib.suppress(OSError, UnicodeDecodeError), open(path, encoding="utf-8") as f:
            source = f.read()
    if source and not re.search(r"""__name__\s*==\s*['"]__main__['"]""", source):
        return (
            f'{message}. The script {path} has no `if __name__ == "__main__":` guard: '
            f"under backend={backend!r} each worker first imports the main script, which "
            "then starts a pool again (its error is on standard error above). Put the code "
            "that starts the pool under that guard, or use backend='fork'"
        )
    return (
        f"{message} (under backend={backend!r} a worker first imports the main script "
        "again: its error is on standard error above)"
    )


def _cpu_count() -> int:
    counter = getattr(os, "process_cpu_count", None) or os.cpu_count
    return counter() or 1


# Pools still running when the interpreter exits are shut down first, so
# their worker processes end and multiprocessing's exit hook, which joins
# every child process, does not wait for workers that wait for tasks.
_live_pools: weakref.WeakSet[Pool] = weakref.WeakSet()


def _shutdown_live_pools() -> None:
    for pool in list(_live_pools):
        pool.shutdown(wait=True, cancel_futures=True)


# Private on purpose (concurrent.futures uses the same hook): it runs in
# threading's shutdown, before non-daemon threads are joined and before any
# atexit handler -- multiprocessing's included, whichever was imported first.
# atexit is no equivalent: it would run after multiprocessing's hook whenever
# multiprocessing.util is imported after this module, and Python 3.12.0-3.12.1
# refuse to start threads from atexit handlers, which a shutdown may need.
threading._register_atexit(_shutdown_live_pools)  # pyright: ignore[reportAttributeAccessIssue]
# A worker started by fork inherits the pools (and maybe a held pool lock):
# they belong to the parent, the worker must never shut them down.
os.register_at_fork(after_in_child=_live_pools.clear)

# Tracebacks, reprs and pickles name the public path, as the user imports it.
Pool.__module__ = "accord"
TaskFuture.__module__ = "accord.spawn"
