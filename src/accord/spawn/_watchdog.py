"""Ending a task that ran past its timeout inside a sub-interpreter.

A worker process past its timeout is killed; a sub-interpreter cannot be.
Instead, each sub-interpreter worker runs this watchdog thread: when the
running task passes its deadline, it raises `Interrupted` in the task's
thread (``PyThreadState_SetAsyncExc``).  That stops Python code at its next
bytecode; a task blocked inside a C call (``time.sleep``, a socket read) is
stopped only when the call returns — the pool dismisses such a worker and
replaces it.

The watchdog lives in the same interpreter as the task on purpose: the C
API only reaches threads of the calling interpreter (and finds the task's
thread only because the worker thread both created and runs the
interpreter), and on Python 3.11, where interpreters share one GIL, only a
thread of the same interpreter can make a spinning task let go of the GIL.

Python 3.12 does not load ``_ctypes`` in an interpreter with its own GIL:
there the worker runs without a watchdog and the pool falls back to
dismissing the worker.
"""

from __future__ import annotations

import threading
import time


class Interrupted(BaseException):
    """Raised in a task that passed its timeout (a BaseException, like
    KeyboardInterrupt, so that ``except Exception`` in the task lets it by)."""


class Watchdog:
    def __init__(self) -> None:
        import ctypes  # only sub-interpreter workers need it

        self._raise_in = ctypes.pythonapi.PyThreadState_SetAsyncExc
        self._raise_in.argtypes = (ctypes.c_ulong, ctypes.py_object)
        self._ctypes = ctypes
        self._target = threading.get_ident()
        self._changed = threading.Condition()
        self._deadline: float | None = None
        self._fired = False
        self._stopping = False
        self._thread = threading.Thread(target=self._watch, name="accord-watchdog")
        self._thread.start()

    def arm(self, timeout: float | None) -> None:
        with self._changed:
            self._fired = False
            self._deadline = None if timeout is None else time.monotonic() + timeout
            self._changed.notify()

    def disarm(self) -> bool:
        """Stop watching; True if the task was interrupted."""
        with self._changed:
            self._deadline = None
            if self._fired:
                # Not yet raised (the task was in a C call): withdraw it.
                self._raise_in(self._target, self._ctypes.py_object())
            return self._fired

    def stop(self) -> None:
        with self._changed:
            self._stopping = True
            self._changed.notify()
        self._thread.join()

    def _watch(self) -> None:
        with self._changed:
            while not self._stopping:
                if self._deadline is None:
                    self._changed.wait()
                    continue
                left = self._deadline - time.monotonic()
                if left > 0:
                    self._changed.wait(left)
                    continue
                self._deadline = None
                self._fired = True
                self._raise_in(self._target, Interrupted)
