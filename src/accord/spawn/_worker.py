"""The loop every worker runs: a child process or a sub-interpreter alike.

A worker reads task frames from its socket, runs them one after the other
and writes one reply frame per task.  It stops when the socket reaches its
end (the pool closed it, or the pool's process died).  Replies carry the
task id, so the pool can tell which task a reply answers.

The socket is one end of a ``socketpair`` made by the pool: only the pool and
this worker hold it, which is what lets both sides unpickle what arrives.
"""

from __future__ import annotations

import pickle
import struct

from . import _wire

# Reply kinds (one byte after the task id).
RESULT, ERROR, INIT_FAILED, INTERRUPTED = 0, 1, 2, 3
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
    finally:
        if watchdog is not None:
            watchdog.stop()


def _start_watchdog():
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
    while (frame := _wire.recv(fd)) is not None:
        task_id, _ = _TASK.unpack_from(frame)
        interrupted = False
        try:
            blob, args, kwargs, chunked, timeout = pickle.loads(memoryview(frame)[_TASK.size :])
            fn = _function(blob)
            if watchdog is not None:
                watchdog.arm(timeout)
            try:
                # Pool.map(chunksize=n) sends n calls as one task.
                result = [fn(*one) for one in args] if chunked else fn(*args, **kwargs)
            finally:
                if watchdog is not None:
                    interrupted = watchdog.disarm()
            reply = _TASK.pack(task_id, RESULT) + _pickled(result)
        except BaseException as exc:  # the task's error, SystemExit included, is its result
            if interrupted or type(exc).__name__ == "Interrupted":
                reply = _TASK.pack(task_id, INTERRUPTED)
            else:
                reply = _TASK.pack(task_id, ERROR) + _pickled_error(exc)
        del frame
        _wire.send(fd, reply, stem)


_functions: dict[bytes, object] = {}


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


def _pickled(result) -> bytes:
    try:
        return pickle.dumps(result, 5)
    except Exception:
        from ..share._serialize import cloudpickle_dumps

        return cloudpickle_dumps(result)


def _pickled_error(exc: BaseException) -> bytes:
    from .._remote import pack_error

    return pickle.dumps(pack_error(exc))


def serve_process(conn, initializer: bytes | None, stem: str) -> None:
    """Entry point of a worker process (`conn`: its end of the pool's socketpair)."""
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
