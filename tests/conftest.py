"""Test harness: the spawn-backend option and the leftover checks."""

from __future__ import annotations

import glob
import multiprocessing
import os
import tempfile
import threading
from pathlib import Path

import pytest
from run_names import our_segments, ours

from accord import Share
from accord.backends.shm._transport import runtime_dir
from accord.spawn import _interpreters

SPAWN_BACKENDS = ("fork", "forkserver", "spawn", "subinterpreter")
# The backends that work on this Python (sub-interpreters need CPython 3.11+).
AVAILABLE = tuple(b for b in SPAWN_BACKENDS if b != "subinterpreter" or _interpreters.available())


def pytest_addoption(parser):
    parser.addoption(
        "--spawn-backend",
        default="all",
        choices=[*SPAWN_BACKENDS, "all"],
        help="how tests that start workers start them (default: every backend this Python has)",
    )


def pytest_generate_tests(metafunc):
    names = metafunc.fixturenames
    spawn_backends = ()
    if "spawn_backend" in names:
        chosen = metafunc.config.getoption("spawn_backend")
        spawn_backends = AVAILABLE if chosen == "all" else (chosen,)
    if "backend" in names and spawn_backends:
        # Workers in other processes: not the memory backend (one process);
        # a network backend under fork (a client inherited) and spawn (a
        # share pickled) only: the other ways to start add nothing for it.
        pairs = [("shm", s) for s in spawn_backends]
        pairs += [("redis", s) for s in spawn_backends if s in ("fork", "spawn")]
        metafunc.parametrize(("backend", "spawn_backend"), pairs, indirect=["backend"])
    elif "backend" in names:
        # A test module may narrow them with its own BACKENDS.
        backends = getattr(metafunc.module, "BACKENDS", BACKENDS)
        metafunc.parametrize("backend", backends, indirect=True)
    elif spawn_backends:
        metafunc.parametrize("spawn_backend", spawn_backends)


@pytest.fixture
def ctx(spawn_backend):
    """Process, Event and Queue of the backend under test (a multiprocessing context)."""
    if spawn_backend == "subinterpreter":
        from interpreter_context import InterpreterContext

        return InterpreterContext()
    return multiprocessing.get_context(spawn_backend)


@pytest.fixture
def separate_processes(spawn_backend):
    """For tests that kill a worker: a sub-interpreter cannot be killed alone."""
    if spawn_backend == "subinterpreter":
        pytest.skip("kills a worker: sub-interpreters share their process and cannot be killed")


@pytest.fixture
def share():
    with Share() as s:
        yield s


# -- backends ---------------------------------------------------------------------

BACKENDS = ("shm", "memory", "redis")


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory):
    """A redis-server of this run, on a free loopback port."""
    from redis_server import RedisServer

    server = RedisServer(tmp_path_factory.mktemp("redis"))
    yield server
    server.stop()


@pytest.fixture
def backend(request):
    """Share(backend=...) for each backend: "shm", "memory", or the test server's URL."""
    if request.param == "redis":
        return request.getfixturevalue("redis_server").url
    return request.param


@pytest.fixture
def any_share(backend):
    """A share on each backend."""
    with Share(backend=backend) as s:
        yield s


def _our_files() -> set[str]:
    return {n for n in os.listdir(runtime_dir()) if ours(n)}


def _children() -> list[int]:
    me = os.getpid()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == me and fields[0] != "Z":
            found.append(int(entry.name))
    return found


@pytest.fixture(scope="session", autouse=True)
def nothing_left_behind():
    """After the whole suite: no segment, socket, key file or coordinator."""
    before_segments = set(our_segments())
    before_files = _our_files()
    yield
    multiprocessing.active_children()  # reap finished workers
    left_segments = set(our_segments()) - before_segments
    left_files = _our_files() - before_files
    assert not left_segments, f"shared memory left in /dev/shm: {sorted(left_segments)}"
    assert not left_files, f"sockets or keys left in {runtime_dir()}: {sorted(left_files)}"
    # The forkserver and the resource tracker are the standard library's
    # helpers, which live as long as this interpreter; anything else is ours.
    strays = {pid: _cmdline(pid) for pid in _children()}
    strays = {p: c for p, c in strays.items() if not any(h in c for h in _STDLIB_HELPERS)}
    assert not strays, f"processes left running: {strays}"
    # Pool dispatchers and sub-interpreter workers are threads of this process.
    threads = [t.name for t in threading.enumerate() if t.name.startswith("accord-")]
    assert not threads, f"pool threads left running: {threads}"
    # The PostgreSQL server of tests/work (data directory and socket).
    left_dirs = glob.glob(os.path.join(tempfile.gettempdir(), f"accord-pg-{os.getpid()}-*"))
    assert not left_dirs, f"PostgreSQL data directories left: {left_dirs}"


_STDLIB_HELPERS = ("forkserver", "resource_tracker")


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return "forkserver (gone)"
