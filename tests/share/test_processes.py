"""The contract across real processes, under every spawn backend; the tests
that take `share` run on every share backend too."""

from __future__ import annotations

import concurrent.futures
import os
import sys
import time

import pytest
from run_names import share_name

from accord import Pool, RemoteTraceback, Share, ShareExists

BACKENDS = ("shm", "redis")  # a memory share lives in one process
WORKERS = 4
PER_WORKER = 250


class Tally:
    def __init__(self):
        self.count = 0
        self.seen = []

    def record(self, x):
        self.count += 1
        self.seen.append(x)

    def take(self):
        if not self.seen:
            raise LookupError("nothing to take")
        return self.seen.pop()


@pytest.fixture
def share(any_share):
    return any_share


def increment_everything(share, worker):
    for i in range(PER_WORKER):
        share.counter += 1
        share.tally.count += 1
        share.by_key["k"] += 1
        share.items.append((worker, i))
        share.tally.record(i)


def _task(args):
    share, x = args
    share.results.append(x * x)
    share.counter += 1
    return share.results[-1] is not None


def test_exact_counters_from_four_processes(share, ctx):
    share.counter = 0
    share.tally = Tally()
    share.by_key = {"k": 0}
    share.items = []
    procs = [ctx.Process(target=increment_everything, args=(share, w)) for w in range(WORKERS)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    total = WORKERS * PER_WORKER
    assert share.counter == total
    assert share.tally.count == 2 * total  # `+= 1` and record() both count
    assert share.by_key["k"] == total
    assert len(share.items) == total
    assert len(share.tally.seen) == total
    # Each process's writes are applied in the order it issued them.
    for w in range(WORKERS):
        mine = [i for (worker, i) in share.items if worker == w]
        assert mine == list(range(PER_WORKER))


def test_pools_of_accord_and_of_the_standard_library(share, ctx, spawn_backend):
    share.results = []
    share.counter = 0
    with Pool(WORKERS, backend=spawn_backend) as pool:
        assert all(pool.map(_task, [(share, i) for i in range(100)]))
    if spawn_backend != "subinterpreter":
        with ctx.Pool(WORKERS) as pool:
            assert all(pool.map(_task, [(share, i) for i in range(100, 200)]))
        with concurrent.futures.ProcessPoolExecutor(WORKERS, mp_context=ctx) as ex:
            assert all(ex.map(_task, [(share, i) for i in range(200, 300)]))
    n = share.counter
    assert n == (100 if spawn_backend == "subinterpreter" else 300)
    assert sorted(share.results) == sorted(i * i for i in range(n))


def _take_all(share, n):
    return [share.tally.take() for _ in range(n)]


def _take_from_empty(share):
    try:
        share.tally.take()
    except LookupError as exc:
        return type(exc).__name__, str(exc), isinstance(exc.__cause__, RemoteTraceback)
    return None


def test_return_values_and_remote_errors_in_workers(share, spawn_backend):
    share.tally = Tally()
    for i in range(40):
        share.tally.record(i)
    with Pool(2, backend=spawn_backend) as ex:
        taken = [f.result() for f in [ex.submit(_take_all, share, 20) for _ in range(2)]]
        assert sorted(taken[0] + taken[1]) == list(range(40))  # each value once
        assert ex.submit(_take_from_empty, share).result() == (
            "LookupError",
            "nothing to take",
            True,
        )
        with pytest.raises(LookupError, match="nothing to take"):
            ex.submit(_take_all, share, 1).result()


def _write_then_signal(share, ready):
    share.cfg["model"]["lr"] = 0.5
    share.items.append("from child")
    share.note = "written"
    ready.set()


def test_read_after_write_across_processes(share, ctx):
    share.cfg = {"model": {"lr": 1.0}}
    share.items = []
    ready = ctx.Event()
    p = ctx.Process(target=_write_then_signal, args=(share, ready))
    p.start()
    assert ready.wait(60)
    # The child's writes were queued before we read: we must see them all.
    assert share.cfg["model"]["lr"] == 0.5
    assert share.items == ["from child"]
    assert share.note == "written"
    p.join(60)


def _read_until(share, expected, out):
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if share.items == expected:
            out.put("saw it")
            return
    out.put("timed out")


def test_child_sees_parent_writes(share, ctx):
    share.items = []
    for i in range(50):
        share.items.append(i)
    out = ctx.Queue()
    p = ctx.Process(target=_read_until, args=(share, list(range(50)), out))
    p.start()
    assert out.get(timeout=60) == "saw it"
    p.join(60)


def _reassign_sequence(share):
    share.lst = []
    share.lst.append("new")
    del share.gone
    share.gone = "back"


def test_reassign_and_delete_from_a_child(share, ctx):
    share.lst = [1, 2, 3]
    share.gone = "here"
    p = ctx.Process(target=_reassign_sequence, args=(share,))
    p.start()
    p.join(60)
    assert p.exitcode == 0
    assert share.lst == ["new"]
    assert share.gone == "back"


def _locked_increments(share, n):
    for _ in range(n):
        with share.lock("x"):
            if share.x < 10**9:
                share.x = share.x + 1  # read-modify-write made atomic by the lock


def _applied_increments(share, n):
    for _ in range(n):
        share.update("y", lambda v: v + 1)


def test_compound_atomicity_with_lock_and_update(share, ctx):
    share.x = 0
    share.y = 0
    procs = [ctx.Process(target=_locked_increments, args=(share, 50)) for _ in range(3)]
    procs += [ctx.Process(target=_applied_increments, args=(share, 50)) for _ in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    assert share.x == 150
    assert share.y == 150


def test_connect_by_name_from_an_unrelated_process(tmp_path):
    import subprocess
    import sys
    import textwrap

    script = tmp_path / "attach.py"
    script.write_text(
        textwrap.dedent(
            """
            import sys
            from accord import Share
            share = Share.connect(sys.argv[1])
            for i in range(100):
                share.counter += 1
                share.log.append(i)
            share.flush()
            print(share.coordinator_pid)
            """
        )
    )
    with Share(name=share_name("connect")) as share:
        share.counter = 0
        share.log = []
        procs = [
            subprocess.Popen(
                [sys.executable, str(script), share_name("connect")],
                stdout=subprocess.PIPE,
                text=True,
            )
            for _ in range(2)
        ]
        outputs = [p.communicate(timeout=60)[0] for p in procs]
        assert all(p.returncode == 0 for p in procs)
        assert {int(o) for o in outputs} == {share.coordinator_pid}
        assert share.counter == 200
        assert sorted(share.log) == sorted(list(range(100)) * 2)
        with pytest.raises(ShareExists):
            Share(name=share_name("connect"))


def _clients_after_using(share):
    from accord.backends.shm import _client

    share.hits += 1
    share.flush()
    return sorted(_client._clients)


def test_long_lived_workers_let_go_of_closed_shares(spawn_backend):
    with Pool(1, backend=spawn_backend) as ex:
        first = Share()
        first.hits = 0
        assert ex.submit(_clients_after_using, first).result() == [first._link.info.stem]
        first.close()
        with Share() as second:
            second.hits = 0
            # The worker's client of the closed share is gone once it attaches anew.
            assert ex.submit(_clients_after_using, second).result() == [second._link.info.stem]


def test_share_used_from_a_subinterpreter(share):
    # A sub-interpreter unpickles the share and reaches the coordinator like
    # any process (the ground the sub-interpreter pool backend stands on).
    import pickle

    from accord.spawn import _interpreters

    if not _interpreters.available():
        pytest.skip("no sub-interpreters in this Python")
    share.counter = 0
    share.items = []
    interp = _interpreters.create()
    read_end, write_end = os.pipe()
    try:
        _interpreters.run(
            interp,
            "import os, pickle, sys\n"
            "sys.path[:] = path.split('\\0')\n"
            "share = pickle.loads(payload)\n"
            "for i in range(50):\n"
            "    share.counter += 1\n"
            "    share.items.append(i)\n"
            "os.write(fd, pickle.dumps(share.counter))\n",
            {"payload": pickle.dumps(share), "fd": write_end, "path": "\0".join(sys.path)},
        )
        assert pickle.loads(os.read(read_end, 1024)) == 50
    finally:
        _interpreters.destroy(interp)
        os.close(read_end)
        os.close(write_end)
    assert share.counter == 50
    assert share.items == list(range(50))


def test_objects_of_the_main_script_sent_from_spawned_workers(tmp_path):
    # In a spawned worker the script is `__mp_main__`, a module the
    # coordinator cannot import: its classes and functions must go by value.
    import subprocess
    import sys
    import textwrap

    script = tmp_path / "main_objects.py"
    script.write_text(
        textwrap.dedent(
            """
            import multiprocessing
            from accord import Share

            class Point:
                def __init__(self, x):
                    self.x = x

            def double(value):
                return value * 2

            def work(share):
                share.points.append(Point(7))
                return share.update("n", double)

            if __name__ == "__main__":
                with Share() as share:
                    share.points = []
                    share.n = 1
                    with multiprocessing.get_context("spawn").Pool(1) as pool:
                        print(pool.apply(work, (share,)), share.points[0].x)
            """
        )
    )
    result = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["2", "7"]
