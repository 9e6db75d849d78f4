"""`ctx` for the sub-interpreter backend: Process, Event and Queue in one process.

The Share tests start workers with ``ctx.Process`` and talk to them with
``ctx.Event`` and ``ctx.Queue``, as with a multiprocessing context.  Here a
"process" is a sub-interpreter run by a thread; events and queues are pipes,
whose descriptors every interpreter of the process can use (only bytes and
ints cross between interpreters).
"""

from __future__ import annotations

import os
import pickle
import select
import struct
import sys
import threading
import time

import cloudpickle

from accord.spawn import _interpreters

_BOOT = """\
import sys, pickle
sys.path[:] = path.split("\\0")
target, args, kwargs = pickle.loads(payload)
target(*args, **kwargs)
"""


class InterpreterProcess:
    """Runs ``target(*args)`` in a new sub-interpreter, on a thread."""

    def __init__(self, target, args=(), kwargs=None, daemon=None):
        self._payload = cloudpickle.dumps((target, tuple(args), dict(kwargs or {})))
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.exitcode = None
        self.pid = os.getpid()
        self.failure = None

    def _run(self):
        try:
            interp = _interpreters.create()
            try:
                shared = {"payload": self._payload, "path": "\0".join(sys.path)}
                _interpreters.run(interp, _BOOT, shared)
            finally:
                _interpreters.destroy(interp)
            self.exitcode = 0
        except Exception as exc:
            self.failure = str(exc)
            print(f"sub-interpreter failed: {exc}", file=sys.stderr)
            self.exitcode = 1

    def start(self):
        self._thread.start()

    def join(self, timeout=None):
        self._thread.join(timeout)

    def is_alive(self):
        return self._thread.is_alive()


class _Pipe:
    def __init__(self):
        self._r, self._w = os.pipe()
        self._owner = os.getpid()

    def __getstate__(self):
        return {"_r": self._r, "_w": self._w, "_owner": self._owner}

    def __del__(self):
        # Only the copy made by the test closes the pipe (copies unpickled
        # in interpreters share the same descriptors).
        if getattr(self, "_original", False):
            os.close(self._r)
            os.close(self._w)


class InterpreterEvent(_Pipe):
    """A one-way event (set once, never cleared): set() writes one byte."""

    def __init__(self):
        super().__init__()
        self._original = True

    def set(self):
        if not self.is_set():
            os.write(self._w, b"x")

    def is_set(self):
        return bool(select.select([self._r], [], [], 0)[0])

    def wait(self, timeout=None):
        return bool(select.select([self._r], [], [], timeout)[0])


class InterpreterQueue(_Pipe):
    """Small pickled objects through a pipe (each put is one atomic write)."""

    _HEADER = struct.Struct("<I")

    def __init__(self):
        super().__init__()
        self._original = True

    def put(self, obj):
        data = pickle.dumps(obj)
        frame = self._HEADER.pack(len(data)) + data
        if len(frame) > select.PIPE_BUF:
            raise ValueError("InterpreterQueue items must pickle to under PIPE_BUF bytes")
        os.write(self._w, frame)

    def get(self, timeout=None):
        deadline = None if timeout is None else time.monotonic() + timeout
        left = None if deadline is None else max(0.0, deadline - time.monotonic())
        if not select.select([self._r], [], [], left)[0]:
            raise TimeoutError("queue stayed empty")
        (size,) = self._HEADER.unpack(os.read(self._r, self._HEADER.size))
        data = b""
        while len(data) < size:
            data += os.read(self._r, size - len(data))
        return pickle.loads(data)


class InterpreterContext:
    """The slice of a multiprocessing context the tests use."""

    Process = InterpreterProcess
    Event = InterpreterEvent
    Queue = InterpreterQueue
