"""Starting and stopping one worker: a child process or a sub-interpreter.

Each worker is joined to the pool by one end of a ``socketpair`` (a Unix
socket: no TCP, nothing another user could reach).  The pool only ever sees
`WorkerHandle`: the descriptor of its end, whether the worker can be killed,
and how it ended.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import multiprocessing.connection
import os
import signal
import socket
import sys
import threading
from typing import Any

from . import _interpreters
from ._worker import INTERPRETER_BOOT, serve_process

log = logging.getLogger("accord.spawn")

_PATIENCE_S = 5.0

#: Every backend; the pool's `backend=` takes one of these names.
BACKENDS = ("forkserver", "spawn", "fork", "subinterpreter")

# The pool's ends of every socket.  A worker started by fork inherits all of
# them; it must close them, or a worker would keep another worker's socket
# open and that worker would never see the end of its stream.
_parent_ends: dict[int, socket.socket] = {}

# The workers' ends while this process holds them: a worker process's until
# it has started, a sub-interpreter's for its whole life.  A child that
# another thread forks meanwhile (another pool's worker, any fork) closes
# them too, or the pool would never see that worker die.  The child a
# thread forks to be a worker keeps its own (`_handing_over`).
_worker_ends: dict[int, socket.socket] = {}
_handing_over = threading.local()
# Making a pair and recording its ends is one step for fork(): a child forked
# in between would inherit ends it does not know to close.
_fork_lock = threading.Lock()


def _pair() -> tuple[socket.socket, socket.socket]:
    """A socketpair (ours, the worker's) whose ends no forked child keeps."""
    with _fork_lock:
        ours, theirs = socket.socketpair()
        _parent_ends[ours.fileno()] = ours
        _worker_ends[theirs.fileno()] = theirs
    return ours, theirs


def _release_worker_end(fd: int, close) -> None:
    """Forget the worker's end `fd` and `close()` it, with no fork in between."""
    with _fork_lock:
        _worker_ends.pop(fd, None)
        close()


def _close_parent_ends() -> None:
    for end in _parent_ends.values():
        # detach(): the child's copy of the socket object must not close the
        # descriptor number again later, when it may name something else.
        fd = end.detach()
        if fd >= 0:
            os.close(fd)
    keep = getattr(_handing_over, "fds", ())
    for fd, end in _worker_ends.items():
        if fd not in keep:
            end.detach()  # a process's end is detached already (its Connection owns it)
            with contextlib.suppress(OSError):
                os.close(fd)
    _parent_ends.clear()
    _worker_ends.clear()


os.register_at_fork(
    before=_fork_lock.acquire,
    after_in_parent=_fork_lock.release,
    after_in_child=lambda: (_fork_lock.release(), _close_parent_ends()),
)


def default_backend() -> str:
    """The platform's safe choice: forkserver on Linux (as Python 3.14), else spawn."""
    if sys.platform.startswith("linux"):
        return "forkserver"
    return "spawn"


def check_backend(name: str | None) -> str:
    if name is None:
        return default_backend()
    if name not in BACKENDS:
        raise ValueError(f"unknown backend {name!r}; choose one of {', '.join(BACKENDS)}")
    if name == "subinterpreter" and not _interpreters.available():
        raise ValueError(
            "backend='subinterpreter' needs CPython 3.11 or later with sub-interpreters; "
            "use 'forkserver' or 'spawn'"
        )
    if name != "subinterpreter" and name not in multiprocessing.get_all_start_methods():
        raise ValueError(
            f"backend {name!r} is not available on this platform; "
            f"choose one of {', '.join(multiprocessing.get_all_start_methods())}"
        )
    return name


class WorkerHandle:
    """One started worker, as the pool sees it."""

    fd: int
    ident: str

    def wait_for_task(self) -> None:
        """Wait for the task of a dismissed worker to end (a process: nothing to wait for)."""

    def kill(self) -> None:
        """End the worker now, wherever it is (if the backend can)."""
        raise NotImplementedError

    def reap(self, timeout: float) -> str:
        """Wait up to `timeout` for the worker to end; say how it ended."""
        raise NotImplementedError

    def ended(self) -> bool:
        """Whether the worker has ended (it touches nothing any more)."""
        raise NotImplementedError

    def _register(self, end: socket.socket) -> None:
        self._end = end
        self.fd = end.fileno()
        end.setblocking(False)

    def close(self) -> None:
        """Close the pool's end: the worker sees the end of its stream and stops."""
        with _fork_lock:
            if self._end.fileno() >= 0:
                _parent_ends.pop(self.fd, None)
                self._end.close()


class ProcessHandle(WorkerHandle):
    """A worker process started by fork, forkserver or spawn."""

    def __init__(self, method: str, initializer: bytes | None, stem: str) -> None:
        ctx: Any = multiprocessing.get_context(method)  # one with .Process
        ours, theirs = _pair()
        self._register(ours)
        # The worker's standard error, which the pool passes on to its own
        # and keeps the tail of: what a dying worker said goes in WorkerLost.
        err_ours, err_theirs = _pair()
        err_ours.setblocking(False)
        self.err = err_ours
        fd, err_fd = theirs.detach(), err_theirs.detach()
        child = multiprocessing.connection.Connection(fd)
        err_child = multiprocessing.connection.Connection(err_fd, readable=False)
        # Not a daemon: a task may start processes of its own.  The pool
        # closes its workers at exit (see _pool._close_at_exit).
        self.process = ctx.Process(
            target=serve_process,
            args=(child, initializer, stem, err_child),
            name="accord-worker",
        )
        _handing_over.fds = (fd, err_fd)
        try:
            with _main_without_a_file() if method != "fork" else contextlib.nullcontext():
                self.process.start()
        except BaseException:
            self.close()  # no worker: nobody will ever close our end
            raise
        finally:
            _handing_over.fds = ()
            _release_worker_end(fd, child.close)
            _release_worker_end(err_fd, err_child.close)
        self.ident = f"process {self.process.pid} ({method})"

    def close(self) -> None:
        super().close()
        with _fork_lock:
            if self.err.fileno() >= 0:
                _parent_ends.pop(self.err.fileno(), None)
                self.err.close()

    def kill(self) -> None:
        if self.process.exitcode is None:
            with contextlib.suppress(OSError, ValueError):  # already gone
                self.process.kill()

    def ended(self) -> bool:
        return self.process.exitcode is not None

    def reap(self, timeout: float) -> str:
        self.process.join(timeout)
        if self.process.exitcode is None:
            self.kill()
            self.process.join(timeout)
        code = self.process.exitcode
        if code is None:
            return "did not end"
        if code < 0:
            try:
                return f"was killed by {signal.Signals(-code).name}"
            except ValueError:
                return f"was killed by signal {-code}"
        return f"exited with code {code}"


_main_lock = threading.Lock()


@contextlib.contextmanager
def _main_without_a_file():
    """Start a spawn or forkserver worker without re-running a script that
    is not a file (read from standard input: ``python - <<EOF``).

    multiprocessing runs the main script again in each such worker, by its
    ``__file__`` -- "<stdin>" there, which does not exist.  The pool needs
    none of it: the script's functions travel by value (as for ``-c``).
    """
    main = sys.modules.get("__main__")
    path = getattr(main, "__file__", None)
    if path is None or os.path.isfile(path):
        yield
        return
    assert main is not None  # it has a __file__
    with _main_lock:
        del main.__file__
        try:
            yield
        finally:
            main.__file__ = path


class InterpreterHandle(WorkerHandle):
    """A worker sub-interpreter, run by a thread of this process.

    A sub-interpreter cannot be killed on its own: `kill` only dismisses it
    (its stream is closed, so it stops after the task it is running).
    """

    def __init__(self, initializer: bytes | None, stem: str) -> None:
        ours, theirs = _pair()
        self._register(ours)
        self._theirs = theirs
        self.failure: str | None = None
        self._thread = threading.Thread(
            target=self._run, args=(initializer, stem), name="accord-interpreter", daemon=True
        )
        self._thread.start()
        self.ident = f"sub-interpreter (thread {self._thread.ident})"

    def _run(self, initializer: bytes | None, stem: str) -> None:
        try:
            interp = _interpreters.create()
            try:
                shared = {
                    "fd": self._theirs.fileno(),
                    "path": "\0".join(sys.path),
                    "initializer": initializer,
                    "stem": stem,
                }
                _interpreters.run(interp, INTERPRETER_BOOT, shared)
            finally:
                _interpreters.destroy(interp)
        except Exception as exc:
            self.failure = str(exc).strip().splitlines()[-1] if str(exc).strip() else repr(exc)
        finally:
            _release_worker_end(self._theirs.fileno(), self._theirs.close)

    def kill(self) -> None:
        self.close()

    def wait_for_task(self) -> None:
        """Wait for the task of a dismissed interpreter to end, however long.

        An interpreter still running at exit would abort the whole process."""
        self._thread.join(_PATIENCE_S)
        if self._thread.is_alive():
            log.warning(
                "waiting for a task that ran past its timeout in a sub-interpreter "
                "to end (a sub-interpreter cannot be killed; use a process backend for "
                "tasks that must be stopped)"
            )
            self._thread.join()

    def ended(self) -> bool:
        return not self._thread.is_alive()

    def reap(self, timeout: float) -> str:
        self._thread.join(timeout)
        if self._thread.is_alive():
            return "is still running its task (a sub-interpreter cannot be killed)"
        if self.failure:
            return f"failed: {self.failure}"
        return "ended"


def start(backend: str, initializer: bytes | None, stem: str) -> WorkerHandle:
    """A new worker; `stem` names the segments of its bulk frames (see _wire)."""
    if backend == "subinterpreter":
        return InterpreterHandle(initializer, stem)
    return ProcessHandle(backend, initializer, stem)
