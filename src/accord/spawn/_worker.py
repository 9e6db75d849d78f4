"""The loop every worker runs: a child process or a sub-interpreter alike.

A worker reads task frames from its socket, runs them one after the other
and writes one reply frame per task.  It stops when the socket reaches its
end (the pool closed it, or the pool's process died).  Replies carry the
task id, so the pool can tell which task a reply answers.

The socket is one end of a ``socketpair`` made by the pool: only the pool and
this worker hold it, which is what lets both sides unpickle what arrives.
"""

from __future__ import annotations

import itertools
import os
import pickle
import struct
import sys
import time

from . import _wire

# Not `from typing import ...`: typing would lengthen every sub-interpreter's
# start-up (annotations are not evaluated at run time here).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

# Reply kinds (one byte after the task id).
RESULT, ERROR, INIT_FAILED, INTERRUPTED, READY = 0, 1, 2, 3, 4
# A task's kind of call: one call, or a chunk of `map` whose calls are
# argument tuples (STAR) or single arguments (ONE).
CALL, STAR, ONE = 0, 1, 2
ADAPTIVE = 4  # with STAR or ONE: the chunk may stop early (see _run_chunk)
STOP_AFTER_S = 0.02
_TASK = struct.Struct("<QB")


def encode_task(task_id: int, payload: bytes) -> bytes:
    return _TASK.pack(task_id, 0) + payload


def decode_reply(frame: bytes) -> tuple[int, int, bytes]:
    task_id, kind = _TASK.unpack_from(frame)
    return task_id, kind, frame[_TASK.size :]


def serve(
    fd: int, initializer: bytes | None = None, watch: bool = False, stem: str | None = None
) -> None:
    """Run tasks arriving on `fd` until it ends (the worker's whole life).

    `watch`: enforce each task's timeout here (sub-interpreters, which the
    pool cannot kill).  `stem`: names of the shared-memory segments that
    carry big replies (see _wire).
    """
    watchdog = _start_watchdog() if watch else None
    try:
        _serve(fd, initializer, watchdog, stem)
    except (BrokenPipeError, ConnectionResetError):  # the pool's process died: stop quietly
        pass
    finally:
        if watchdog is not None:
            watchdog.stop()
        if stem is not None:
            # Frames no one will take: the pool's, if its process died before
            # this worker read them, and a reply it could not send.  (The
            # pool sweeps them too when it ends a worker; whichever is first.)
            _wire.unlink_leftovers(stem)


def _start_watchdog():
    if sys.version_info[:2] == (3, 12):
        # 3.12 refuses ``_ctypes`` in an interpreter with its own GIL only
        # after running its single-phase init, and two interpreters doing so
        # at once corrupt the heap (a crash 1 run in 8): never try there.
        return None
    try:
        from ._watchdog import Watchdog

        return Watchdog()
    except (ImportError, RuntimeError):  # no ctypes, or no threads, in this interpreter:
        return None  # the pool dismisses the worker instead


def _serve(fd: int, initializer: bytes | None, watchdog, stem: str | None) -> None:
    if initializer is not None:
        try:
            init, args = pickle.loads(initializer)
            init(*args)
        except BaseException as exc:
            _wire.send(fd, _TASK.pack(0, INIT_FAILED) + _pickled_error(exc))
            return
    # Started: a worker that dies before this arrives failed to start (the
    # pool then stops rather than start one failing worker after another).
    _wire.send(fd, _TASK.pack(0, READY))
    while (received := _wire.recv(fd)) is not None:
        frame, buffers = received
        task_id, _ = _TASK.unpack_from(frame)
        interrupted = False
        out_of_band = []
        try:
            call = pickle.loads(memoryview(frame)[_TASK.size :], buffers=buffers)
            blob, args, kwargs, chunk, timeout = call
            fn = _function(blob)
            if watchdog is not None:
                watchdog.arm(timeout)
            try:
                # Pool.map sends chunks of calls, each with its own result or error.
                result: Any = _run_chunk(fn, args, chunk) if chunk else _run(fn, args, kwargs)
            finally:
                if watchdog is not None:
                    interrupted = watchdog.disarm()
            reply = _TASK.pack(task_id, RESULT) + (
                _pickled_chunk(*result) if chunk else _pickled(result, out_of_band)
            )
        except BaseException as exc:  # the task's error, SystemExit included, is its result
            if interrupted or type(exc).__name__ == "Interrupted":
                reply = _TASK.pack(task_id, INTERRUPTED)
            else:
                reply = _TASK.pack(task_id, ERROR) + _pickled_error(exc)
        frame = buffers = received = call = args = kwargs = None  # free them before sending
        _wire.send(fd, reply, stem, out_of_band)
        out_of_band = result = None


def _run(fn, args, kwargs):
    """fn(*args, **kwargs); it fails if its fire-and-forget writes to a share
    failed (the share module, if this worker used one, waits for them)."""
    result = fn(*args, **kwargs)
    link = sys.modules.get("accord.share._link")
    if link is not None and link._unsettled:
        link.settle_all()
    return result


def _run_chunk(fn, calls: list, chunk: int) -> tuple[list, dict[int, BaseException], float]:
    """(values, {index: error}, seconds a call takes) of `calls`, each run on its own.

    An ADAPTIVE chunk stops after the call that takes it past `STOP_AFTER_S`:
    the pool sends the calls not run again, in chunks sized from the time
    measured here (so a chunk of long calls does not keep them all on this
    worker).  `values` then holds fewer values than there were calls.
    """
    kind = chunk & ~ADAPTIVE
    values: list = []
    errors: dict[int, BaseException] = {}
    append = values.append
    clock = time.perf_counter
    started = clock()
    stop = started + STOP_AFTER_S if chunk & ADAPTIVE else None
    n = len(calls)
    step = 1  # calls between two looks at the clock: 1, 2, 4... (cheap for tiny calls)
    link = None
    # Seconds a call takes: the fastest batch's rate, so that a batch during
    # which this process was preempted (a loaded machine) does not make
    # quick calls look slow.
    per_call = float("inf")
    while len(values) < n:
        done = len(values)
        batch = calls[done : n if stop is None else done + step]
        batch_started = clock()
        link = sys.modules.get("accord.share._link")
        try:
            if link is not None:  # settle each call's share writes: they are its result too
                for one in batch:
                    append(_run(fn, one, {}) if kind == STAR else _run(fn, (one,), {}))
            else:
                # C loops; a call that raises leaves the values before it in place.
                values.extend(itertools.starmap(fn, batch) if kind == STAR else map(fn, batch))
        except BaseException as exc:
            if type(exc).__name__ == "Interrupted":  # the watchdog: the whole task stops
                raise
            errors[len(values)] = exc
            append(None)
        now = clock()
        per_call = min(per_call, (now - batch_started) / max(len(values) - done, 1))
        if stop is not None:
            if now > stop:
                break
            step *= 2
    if link is None:  # the last calls may have begun to use a share: their writes count
        link = sys.modules.get("accord.share._link")
        if link is not None and link._unsettled and values:
            try:
                link.settle_all()
            except BaseException as exc:
                errors[len(values) - 1] = exc
                values[-1] = None
    return values, errors, per_call


def _pickled_chunk(values: list, errors: dict[int, BaseException], per_call: float) -> bytes:
    try:
        return pickle.dumps((values, {i: _packed_error(e) for i, e in errors.items()}, per_call), 5)
    except Exception:
        pass
    # Some value does not pickle (or needs cloudpickle): each on its own, so
    # only the calls whose value cannot travel fail.
    for i, value in enumerate(values):
        if i not in errors:
            try:
                _pickled(value)
            except Exception as exc:
                errors[i] = exc
                values[i] = None
    packed = {i: _packed_error(e) for i, e in errors.items()}
    return _pickled((values, packed, per_call))


def with_source(sources: dict[str, list[str]], value):
    """`value`, with the source of its code registered for tracebacks here."""
    import linecache

    for name, lines in sources.items():
        linecache.cache[name] = (sum(map(len, lines)), None, lines, name)
    return value


_functions: dict[bytes, Any] = {}


def _function(blob: bytes):
    """The function pickled as `blob`, unpickled once per worker (a map sends
    the same function with every task; a function shipped by value costs
    far more to unpickle than its bytes cost to compare)."""
    fn = _functions.get(blob)
    if fn is None:
        if len(_functions) >= 64:
            _functions.clear()
        fn = _functions[blob] = pickle.loads(blob)
    return fn


# What a worker needs beyond pickle is imported when first needed: a worker
# of tiny tasks that never fail never imports cloudpickle or the share layer.


def _pickled(result, out_of_band: list | None = None) -> bytes:
    """`result` pickled; its big buffers go to `out_of_band` (if given)."""
    try:
        if out_of_band is None:
            return pickle.dumps(result, 5)
        return pickle.dumps(result, 5, buffer_callback=_collector(out_of_band))
    except Exception:
        if out_of_band:
            out_of_band.clear()
        from .._core._serialize import cloudpickle_dumps

        return cloudpickle_dumps(result)


def _collector(out_of_band: list):
    """A pickle ``buffer_callback``: buffers of `OOB_BYTES` or more go out of band."""

    def collect(buffer) -> bool:
        view = buffer.raw()
        if view.nbytes < _wire.OOB_BYTES:
            return True  # in band
        out_of_band.append(view)
        return False

    return collect


def _pickled_error(exc: BaseException) -> bytes:
    return pickle.dumps(_packed_error(exc))


def _packed_error(exc: BaseException) -> tuple[bytes, str]:
    from .._core._remote import pack_error

    return pack_error(exc)


def serve_process(conn, initializer: bytes | None, stem: str, err=None) -> None:
    """Entry point of a worker process (`conn`: its end of the pool's socketpair;
    `err`: where its standard error goes, for the pool to pass on)."""
    if err is not None:
        import sys

        sys.stderr.flush()
        os.dup2(err.fileno(), 2)
        err.close()
    fd = conn.fileno()
    try:
        serve(fd, initializer, stem=stem)
    finally:
        conn.close()


# Run in a fresh sub-interpreter with ``fd``, ``path``, ``initializer`` and ``stem`` bound.
INTERPRETER_BOOT = """\
import sys
sys.path[:] = path.split("\\0")
from accord.spawn._worker import serve
serve(fd, initializer, watch=True, stem=stem)
"""
