"""accord.Pool under every spawn backend: results, errors, lost workers, timeouts."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import itertools
import os
import pickle
import signal
import subprocess
import sys
import threading
import time

import pytest

from accord import Pool, RemoteTraceback, Share, TaskTimeout, WorkerLost


def square(x):
    return x * x


def add(x, y, *, scale=1):
    return (x + y) * scale


def fail(message):
    raise KeyError(message)


def whoami():
    return os.getpid(), threading.get_ident()


def die(how):
    if how == "sigkill":
        os.kill(os.getpid(), signal.SIGKILL)
    elif how == "segfault":
        import ctypes

        ctypes.string_at(0)
    elif how == "exit":
        os._exit(7)


def wait_for(share, name, value=True, deadline_s=30.0):
    """Block until share.<name> == value (how a test holds a task running)."""
    end = time.monotonic() + deadline_s
    while getattr(share, name) != value:
        if time.monotonic() > end:
            raise TimeoutError(f"share.{name} never became {value!r}")
        # Let go of the GIL between checks: on 3.11 sub-interpreters share one
        # GIL, and a thread spinning in one never hands it to the others.
        time.sleep(0.0005)
    return value


def gated(share, x):
    share.started += 1
    wait_for(share, "open")
    return x


def flaky(share, fails, how="raise"):
    """Fails its first `fails` tries (raising, or losing its worker), then succeeds."""
    share.tries += 1
    if share.tries <= fails:
        if how == "raise":
            raise RuntimeError(f"try {share.tries} failed")
        os._exit(3)
    return share.tries


def fails_once(share, key):
    share.tries_of[key] += 1
    if share.tries_of[key] == 1:
        raise RuntimeError("first try fails")
    return f"{key}{share.tries_of[key]}"


def hold_lock():
    return threading.Lock()


def test_submit_and_map_return_results_in_order(spawn_backend):
    with Pool(2, backend=spawn_backend) as pool:
        assert pool.submit(add, 1, 2, scale=10).result(timeout=30) == 30
        assert list(pool.map(square, range(50))) == [x * x for x in range(50)]
        assert list(pool.map(add, range(5), range(5), chunksize=2)) == [0, 2, 4, 6, 8]
        assert list(pool.map(lambda x: -x, [1, 2])) == [-1, -2]  # sent by value


def test_errors_come_back_with_type_message_and_remote_traceback(spawn_backend):
    with Pool(1, backend=spawn_backend) as pool:
        future = pool.submit(fail, "no such key")
        with pytest.raises(KeyError, match="no such key") as info:
            future.result(timeout=30)
        assert isinstance(info.value.__cause__, RemoteTraceback)
        assert "in fail" in str(info.value.__cause__)
        # An error that cannot travel: the result does not pickle.
        with pytest.raises(TypeError, match="cannot pickle"):
            pool.submit(hold_lock).result(timeout=30)
        assert pool.submit(square, 3).result(timeout=30) == 9  # the worker lives on


@pytest.mark.parametrize("how", ["sigkill", "segfault", "exit"])
def test_a_dead_worker_fails_its_task_and_is_replaced(spawn_backend, separate_processes, how):
    with Share() as share, Pool(1, backend=spawn_backend) as pool:
        share.started, share.open = 0, False
        (before,) = {pool.submit(whoami).result(timeout=30)[0]}
        doomed = pool.submit(die, how)
        big = b"x" * 200_000  # travels in a shared-memory segment the dead worker never takes
        queued = pool.submit(len, big)  # held by the same worker, not started
        with pytest.raises(WorkerLost, match=f"worker process {before} .*while running die"):
            doomed.result(timeout=30)
        assert queued.result(timeout=30) == len(big)
        after = pool.submit(whoami).result(timeout=30)[0]
        assert after != before
        assert pool.submit(square, 5).result(timeout=30) == 25
    from accord._core._segment import leftovers

    assert leftovers(pool._stem) == []  # the untaken segment was swept at shutdown


def test_a_task_past_its_timeout_ends_its_worker(spawn_backend, separate_processes):
    with Pool(1, backend=spawn_backend) as pool:
        (before, _) = pool.submit(whoami).result(timeout=30)
        started = time.monotonic()
        with pytest.raises(TaskTimeout, match=r"sleep\(60\) ran longer than its timeout of 0.3 s"):
            pool.submit(time.sleep, 60, timeout=0.3).result(timeout=30)
        assert time.monotonic() - started < 10
        assert isinstance(TaskTimeout("x"), TimeoutError)
        (after, _) = pool.submit(whoami).result(timeout=30)
        assert after != before
        # Timeouts count from when the task starts, not from submission: from
        # submission, `quick` would be overdue before `slow` could end.  (Its
        # own run has 1.5 s: generous on a loaded machine.)
        slow = pool.submit(time.sleep, 2.0)
        quick = pool.submit(square, 2, timeout=1.5)
        slow.result(timeout=30)
        assert quick.result(timeout=30) == 4


def test_a_subinterpreter_past_its_timeout_is_dismissed_and_replaced():
    # A sub-interpreter cannot be killed: the pool fails the task at once,
    # replaces the worker, and lets the dismissed one finish in the background.
    # (The task sleeps, releasing the GIL: on 3.11 all interpreters share one
    # GIL, and a pure-Python loop would hold it and delay every other thread.)
    with Pool(1, backend="subinterpreter") as pool:
        (_, before) = pool.submit(whoami).result(timeout=30)
        started = time.monotonic()
        stuck = pool.submit(time.sleep, 3, timeout=0.3)
        with pytest.raises(TaskTimeout):
            stuck.result(timeout=30)
        assert time.monotonic() - started < 2.5  # did not wait for the sleep
        (_, after) = pool.submit(whoami).result(timeout=30)  # (a new worker: slow under load)
        assert after != before  # a new interpreter on a new thread


def spin():
    while True:
        pass


def test_a_subinterpreter_interrupts_python_code_past_its_timeout():
    # Pure-Python code is stopped inside its interpreter (by the worker's
    # watchdog), so the worker lives on and shutdown need not wait for it.
    if sys.version_info[:2] == (3, 12):
        pytest.skip("3.12 cannot load ctypes in a sub-interpreter: no watchdog there")
    pool = Pool(1, backend="subinterpreter")
    (_, before) = pool.submit(whoami).result(timeout=30)
    with pytest.raises(TaskTimeout, match="interrupted in its sub-interpreter"):
        pool.submit(spin, timeout=0.3).result(timeout=30)
    (_, after) = pool.submit(whoami).result(timeout=30)
    assert after == before  # the same worker: it was not dismissed
    started = time.monotonic()
    pool.shutdown()
    assert time.monotonic() - started < 5


def test_retries_after_errors_and_lost_workers(spawn_backend):
    how = ["raise"] if spawn_backend == "subinterpreter" else ["raise", "exit"]
    with Share() as share, Pool(2, backend=spawn_backend) as pool:
        for way in how:
            share.tries = 0
            assert pool.submit(flaky, share, 2, way, retries=2).result(timeout=30) == 3
            share.tries = 0
            expected = RuntimeError if way == "raise" else WorkerLost
            with pytest.raises(expected):
                pool.submit(flaky, share, 2, way, retries=1).result(timeout=30)
            assert share.tries == 2
        share.tries_of = {key: 0 for key in "abc"}
        assert list(pool.map(fails_once, [share] * 3, "abc", retries=1)) == ["a2", "b2", "c2"]


def test_shutdown_with_cancel_futures(spawn_backend):
    with Share() as share:
        share.started, share.open = 0, False
        pool = Pool(1, backend=spawn_backend)
        futures = [pool.submit(gated, share, i) for i in range(10)]
        wait_for(share, "started", 1)
        pool.shutdown(wait=False, cancel_futures=True)
        with pytest.raises(RuntimeError, match="after shutdown"):
            pool.submit(square, 1)
        share.open = True
        pool.shutdown(wait=True)
        assert futures[0].result() == 0
        cancelled = [f for f in futures if f.cancelled()]
        finished = [f for f in futures if not f.cancelled()]
        assert len(cancelled) >= 8  # all but the running task and the one held next
        assert all(f.result() == futures.index(f) for f in finished)


def test_futures_work_with_wait_as_completed_and_asyncio(spawn_backend):
    with Pool(2, backend=spawn_backend) as pool:
        futures = [pool.submit(square, i) for i in range(10)]
        done, not_done = concurrent.futures.wait(futures, timeout=30)
        assert len(done) == 10 and not not_done
        assert sorted(f.result() for f in concurrent.futures.as_completed(futures)) == sorted(
            i * i for i in range(10)
        )

        async def main():
            one = await pool.submit(square, 7)
            many = await asyncio.gather(*(pool.submit(square, i) for i in range(5)))
            wrapped = await asyncio.wrap_future(pool.submit(add, 1, 1))
            with pytest.raises(KeyError):
                await pool.submit(fail, "async")
            return one, many, wrapped

        assert asyncio.run(main()) == (49, [0, 1, 4, 9, 16], 2)


def test_progress_bar(spawn_backend, capsys):
    with Pool(2, backend=spawn_backend) as pool:
        assert sum(pool.map(square, range(20), progress=True)) == sum(x * x for x in range(20))
    err = capsys.readouterr().err
    assert "20/20" in err and "100%" in err


_initialized = []


def _init(value):
    _initialized.append(value)


def _initialized_values():
    return list(_initialized)


def _broken_init():
    raise OSError("no GPU here")


def test_initializer(spawn_backend):
    with Pool(2, backend=spawn_backend, initializer=_init, initargs=("ready",)) as pool:
        assert pool.submit(_initialized_values).result(timeout=30) == ["ready"]
    assert _initialized == []  # ran in the workers, not here
    pool = Pool(1, backend=spawn_backend, initializer=_broken_init)
    try:
        future = pool.submit(square, 2)
    except concurrent.futures.BrokenExecutor as exc:  # the failure came first
        error = exc
    else:
        with pytest.raises(WorkerLost, match="initializer failed") as info:
            future.result(timeout=30)
        error = info.value
    assert "no GPU here" in str(error)
    with pytest.raises(concurrent.futures.BrokenExecutor, match="no GPU here"):
        pool.submit(square, 2)
    pool.shutdown()


def test_bad_arguments_say_what_is_valid():
    with pytest.raises(ValueError, match="forkserver, spawn, fork, subinterpreter"):
        Pool(1, backend="threads")
    with pytest.raises(ValueError, match="workers"):
        Pool(0)
    with Pool(1, backend="fork") as pool:
        with pytest.raises(ValueError, match="timeout"):
            pool.submit(square, 1, timeout=0)
        with pytest.raises(ValueError, match="retries"):
            pool.submit(square, 1, retries=-1)
        with pytest.raises(ValueError, match="chunksize"):
            pool.map(square, [1], chunksize=0)
        with pytest.raises(TypeError, match="cannot send"):
            pool.submit(square, threading.Lock())


def test_default_backend_is_forkserver_on_linux():
    with Pool(1) as pool:
        assert pool.backend == ("forkserver" if sys.platform.startswith("linux") else "spawn")
        assert pool.workers == 1


STATE = {"touched": False}


def _touch_module_state():
    STATE["touched"] = True
    return STATE["touched"]


def test_subinterpreters_share_no_module_state():
    with Pool(1, backend="subinterpreter") as pool:
        assert pool.submit(_touch_module_state).result(timeout=30) is True
    assert STATE["touched"] is False


def test_workers_end_with_the_pool(spawn_backend):
    pool = Pool(2, backend=spawn_backend)
    pool.submit(square, 1).result(timeout=30)
    handles = [slot.handle for slot in pool._slots]
    pool.shutdown()
    for handle in handles:
        assert handle.reap(0) in ("exited with code 0", "ended")
    assert not pool._thread.is_alive()


def echo_twice(data):
    return data + data


def test_big_arguments_and_results_travel_through_shared_memory(spawn_backend):
    from accord.spawn._wire import BULK_BYTES

    big = os.urandom(BULK_BYTES * 3)
    with Pool(2, backend=spawn_backend) as pool:
        results = list(pool.map(echo_twice, [big, b"small", big[:BULK_BYTES]]))
        assert results == [big + big, b"smallsmall", big[:BULK_BYTES] * 2]
        assert pool.submit(len, big).result(timeout=30) == len(big)
        stem = pool._stem
    from accord._core._segment import leftovers

    assert leftovers(stem) == []  # every segment was taken and unlinked


def _init_after_gate(share):
    wait_for(share, "open")
    raise OSError("no GPU here")


def test_a_broken_pool_fails_its_futures_though_one_was_cancelled(spawn_backend):
    # A future cancelled while it waited is already done: failing it raised
    # InvalidStateError in the dispatcher, which left the others unsettled.
    with Share() as share:
        share.open = False
        pool = Pool(1, backend=spawn_backend, initializer=_init_after_gate, initargs=(share,))
        futures = [pool.submit(square, i) for i in range(4)]
        assert futures[3].cancel()  # the worker holds two; the last two wait
        share.open = True
        for future in futures[:3]:
            with pytest.raises(WorkerLost, match="initializer failed"):
                future.result(timeout=15)
        assert futures[3].cancelled()
        pool.shutdown()


def test_cancel_futures_spares_a_started_task_waiting_to_run_again(
    spawn_backend, separate_processes
):
    # A fail-fast callback: the first error shuts the pool down.  The task the
    # lost worker held next waits to run elsewhere, but its future already
    # runs: cancel() cannot cancel it, so it must stay and run, not vanish.
    pool = Pool(1, backend=spawn_backend)
    try:
        doomed = pool.submit(die, "exit")
        held = pool.submit(square, 2)
        doomed.add_done_callback(lambda _: pool.shutdown(wait=False, cancel_futures=True))
        with pytest.raises(WorkerLost):
            doomed.result(timeout=30)
        assert held.result(timeout=15) == 4
    finally:
        pool.shutdown()


def record(share):
    share.runs += 1
    return share.runs


def _in_function(thread, name):
    frame = sys._current_frames().get(thread.ident)
    while frame is not None:
        if frame.f_code.co_name == name:
            return True
        frame = frame.f_back
    return False


def test_a_reply_that_arrives_as_the_timeout_ends_the_worker_counts(
    spawn_backend, separate_processes
):
    # The worker answers just past the deadline, while the dispatcher is about
    # to end it, and starts the task it held next: the answer must count and
    # the next task (already run) must not run a second time elsewhere.
    # The test, not the clock, decides when the task is overdue: its timeout
    # is far off until the test moves its start back (a loaded machine may
    # take seconds to run `gated` up to its gate; that must not end it).
    with Share() as share:
        share.started, share.open, share.runs = 0, False, 0
        with Pool(1, backend=spawn_backend) as pool:
            pool.submit(record, share).result(timeout=30)  # imported, attached: quick now
            share.runs = 0
            first = pool.submit(gated, share, "done", timeout=600)
            second = pool.submit(record, share)
            wait_for(share, "started", 1)
            assert not first.done()
            with pool._lock:  # the dispatcher stops on its way to end the worker
                slot = pool._slots[0]
                assert slot.tasks[0].future is first and slot.ready
                slot.head_since -= 600  # overdue now
                pool._wake()  # out of select(), whose timeout was 600 s
                end = time.monotonic() + 30
                while not _in_function(pool._thread, "_end_overdue"):
                    assert time.monotonic() < end, "the dispatcher never looked at the deadline"
                    time.sleep(0.0005)
                share.open = True
                wait_for(share, "runs", 1)
            assert first.result(timeout=15) == "done"
            with contextlib.suppress(WorkerLost):  # killed between its run and its answer
                assert second.result(timeout=15) == 1
        assert share.runs == 1


class Unsendable(Exception):
    """Does not survive pickling (its __init__ takes other arguments), and has
    a __str__ that fails."""

    def __init__(self, a, b):
        super().__init__(a)
        self.b = b

    def __str__(self):
        raise RuntimeError("no str")


def raise_unsendable():
    raise Unsendable(1, 2)


def test_an_error_that_neither_pickles_nor_prints_comes_back(spawn_backend):
    from accord import RemoteError

    with Pool(1, backend=spawn_backend) as pool:
        before = pool.submit(whoami).result(timeout=30)
        with pytest.raises(RemoteError, match=r"Unsendable: <str\(\) failed>"):
            pool.submit(raise_unsendable).result(timeout=30)
        assert pool.submit(whoami).result(timeout=30) == before  # the worker lives on


def test_a_child_forked_meanwhile_does_not_keep_a_dead_workers_socket_open(monkeypatch):
    # Another thread forks (another pool's worker, or any fork) while the pool
    # starts a worker: that child must not inherit the worker's end of its
    # socket, or the pool would never see the worker die.
    import multiprocessing.context

    ready, go = threading.Event(), threading.Event()
    armed = []  # the thread whose next start waits for the bystander's
    popen = multiprocessing.context.ForkProcess._Popen

    def paused_popen(process_obj):
        if armed and threading.current_thread() is armed[0]:
            armed.clear()
            ready.set()
            go.wait(30)
        return popen(process_obj)

    monkeypatch.setattr(multiprocessing.context.ForkProcess, "_Popen", staticmethod(paused_popen))
    release_r, release_w = os.pipe()
    bystander = None
    try:
        with Pool(1, backend="fork") as pool:
            pool.submit(square, 1).result(timeout=30)
            armed.append(pool._thread)  # the dispatcher starts the replacement
            first = pool.submit(die, "sigkill")
            assert ready.wait(30)
            bystander = multiprocessing.get_context("fork").Process(
                target=os.read, args=(release_r, 1)
            )
            bystander.start()
            go.set()
            with pytest.raises(WorkerLost):
                first.result(timeout=30)
            second = pool.submit(die, "sigkill")  # on the replacement
            with pytest.raises(WorkerLost):
                second.result(timeout=10)
    finally:
        armed.clear()
        go.set()
        os.write(release_w, b"x")
        if bystander is not None:
            bystander.join(10)
        os.close(release_r)
        os.close(release_w)


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_a_worker_that_cannot_be_replaced_breaks_the_pool_rather_than_hang(
    spawn_backend, separate_processes, monkeypatch
):
    import errno

    from accord.spawn import _handles

    pool = Pool(1, backend=spawn_backend)
    try:
        pool.submit(square, 1).result(timeout=30)

        def cannot_start(*args):
            raise OSError(errno.EAGAIN, "Resource temporarily unavailable")

        monkeypatch.setattr(_handles, "start", cannot_start)
        doomed = pool.submit(die, "sigkill")
        queued = [pool.submit(square, 2) for _ in range(3)]  # one held next, two waiting
        with pytest.raises(WorkerLost, match="while running die"):
            doomed.result(timeout=30)
        for future in queued:
            with pytest.raises(concurrent.futures.BrokenExecutor, match="Resource temporarily"):
                future.result(timeout=30)
        with pytest.raises(concurrent.futures.BrokenExecutor):
            pool.submit(square, 3)
    finally:
        pool.shutdown()


def _init_second_fails(share):
    with share.lock("inits"):
        share.inits += 1
        mine = share.inits
    if mine == 2:
        wait_for(share, "fail")
        raise OSError("no GPU here")


def _readable(fd):
    import select

    return bool(select.select([fd], [], [], 0)[0])


@contextlib.contextmanager
def _parked(pool, deadline_s=30.0):
    """Hold `pool`'s lock with its dispatcher parked: it has read a wake-up
    and blocks on the lock before its next select().

    (Not sys._current_frames(): from 3.12 it reads the threads of
    interpreters that run under their own GIL.)  If the dispatcher was busy
    elsewhere, waiting for the lock (a worker's first frame had just come),
    let it go and try again.
    """
    end = time.monotonic() + deadline_s
    while True:
        pool._lock.acquire()
        pool._wake()
        try:
            _until(lambda: not _readable(pool._wake_r.fileno()), deadline_s=0.5)
        except AssertionError:
            pool._lock.release()
            assert time.monotonic() < end, "the dispatcher never parked"
            _until(lambda: not _readable(pool._wake_r.fileno()))  # it drains without us
            continue
        try:
            yield
        finally:
            pool._lock.release()
        return


def _until(predicate, deadline_s=30.0):
    end = time.monotonic() + deadline_s
    while not predicate():
        assert time.monotonic() < end, "the condition the test waits for never came"
        time.sleep(0.0005)


def test_an_initializer_failing_on_one_worker_while_another_answers(spawn_backend, monkeypatch):
    # One worker's initializer fails (the pool breaks and fails every task)
    # and, in the same wake-up of the dispatcher, another worker answers a
    # task of the broken pool: that answer must be dropped, not crash the
    # dispatcher on a task it no longer holds.
    crashes = []
    hook = threading.excepthook
    monkeypatch.setattr(
        threading, "excepthook", lambda args: crashes.append(args.exc_value) or hook(args)
    )
    with Share() as share:
        share.inits, share.fail, share.started, share.open = 0, False, 0, False
        pool = Pool(2, backend=spawn_backend, initializer=_init_second_fails, initargs=(share,))
        futures = [pool.submit(gated, share, i) for i in range(2)]  # one per worker
        wait_for(share, "started", 1)  # on the worker whose initializer passed
        fds = [slot.handle.fd for slot in pool._slots]
        with _parked(pool):  # the dispatcher waits while both workers write
            share.fail = True
            _until(lambda: any(_readable(fd) for fd in fds))
            share.open = True
            _until(lambda: all(_readable(fd) for fd in fds))
        for future in futures:
            with pytest.raises(WorkerLost, match="initializer failed"):
                future.result(timeout=30)
        pool.shutdown()
    assert crashes == []


def test_a_dead_workers_untaken_segments_go_with_it(spawn_backend, separate_processes):
    # Not only at shutdown: a long-lived pool whose workers die would fill
    # /dev/shm with the big tasks they never took.
    from accord._core._segment import leftovers

    big = b"x" * 200_000
    with Pool(1, backend=spawn_backend) as pool:
        for _ in range(2):
            doomed = pool.submit(die, "sigkill")
            queued = pool.submit(len, big)  # its segment waits, untaken, for the dead worker
            with pytest.raises(WorkerLost):
                doomed.result(timeout=30)
            assert queued.result(timeout=30) == len(big)  # sent again, in a new segment
        live = tuple(slot.stem for slot in pool._slots)
        # Only the live worker's buffers remain (they are reused, frame after frame).
        assert [n for n in leftovers(pool._stem) if not n.startswith(live)] == []
    assert leftovers(pool._stem) == []


def _open_sockets():
    found = set()
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            if os.readlink(f"/proc/self/fd/{fd}").startswith("socket:"):
                found.add(fd)
    return found


def test_a_worker_that_fails_to_start_leaves_no_socket_open(monkeypatch):
    import errno
    import multiprocessing.context

    def cannot_fork(process_obj):
        raise OSError(errno.EAGAIN, "Resource temporarily unavailable")

    monkeypatch.setattr(multiprocessing.context.ForkProcess, "_Popen", staticmethod(cannot_fork))
    before = _open_sockets()
    with pytest.raises(OSError, match="Resource temporarily"):
        Pool(1, backend="fork")
    assert _open_sockets() <= before


# -- map: adaptive chunks, per-call results, lazy input --------------------------


def odd_fails(x):
    if x % 2:
        raise ValueError(f"odd {x}")
    return x


def _collect(iterator):
    """(values before the first error, that error)."""
    values = []
    try:
        for value in iterator:
            values.append(value)
    except Exception as exc:
        return values, exc
    return values, None


def _tasks_sent(pool) -> int:
    return next(pool._ids)  # ids count every task (chunk) sent


def test_map_sends_tiny_calls_in_chunks_with_a_result_or_error_each(spawn_backend):
    with Pool(2, backend=spawn_backend) as pool:
        before = _tasks_sent(pool)
        assert list(pool.map(square, range(5000))) == [x * x for x in range(5000)]
        assert _tasks_sent(pool) - before < 100  # not one task per call
        for chunksize in (None, 1, 7):
            values, error = _collect(pool.map(odd_fails, [0, 2, 4, 5, 6], chunksize=chunksize))
            assert values == [0, 2, 4]
            assert isinstance(error, ValueError) and str(error) == "odd 5"
            assert isinstance(error.__cause__, RemoteTraceback)
        # A value that cannot travel fails its own call only.
        values, error = _collect(pool.map(_lock_at, range(4), chunksize=4))
        assert values == [0, 1] and isinstance(error, TypeError)


def _lock_at(x):
    return threading.Lock() if x == 2 else x


def test_map_of_known_length_starts_one_chunk_per_worker_slicing_ranges_and_lists(
    spawn_backend, monkeypatch
):
    from accord.spawn._pool import _MAX_KNOWN_CHUNK

    with Pool(2, backend=spawn_backend) as pool:
        sent = []  # the calls of each task, as the pool made them
        make = pool._new_task

        def spy(blob, fn, args, *rest):
            sent.append(args)
            return make(blob, fn, args, *rest)

        monkeypatch.setattr(pool, "_new_task", spy)
        assert list(pool.map(square, range(5000))) == [x * x for x in range(5000)]
        # Two tasks for two workers, each a range (three numbers to pickle).
        assert sent[:2] == [range(0, 2500), range(2500, 5000)]
        sent.clear()
        items = list(range(10))
        assert list(pool.map(square, items)) == [x * x for x in items]
        assert sent[:2] == [items[:5], items[5:]]
        assert all(type(calls) is list for calls in sent)
        sent.clear()
        # A huge known length: chunks stay bounded, the input is never copied.
        results = pool.map(square, range(10**12))
        assert next(results) == 0
        results.close()
        assert sent[0] == range(0, _MAX_KNOWN_CHUNK)


def test_map_spreads_long_calls_over_every_worker(spawn_backend):
    with Share() as share, Pool(2, backend=spawn_backend) as pool:
        share.started, share.open = 0, False
        results = pool.map(gated, [share] * 6, range(6))
        wait_for(share, "started", 2)  # both workers run a call: neither holds all
        share.open = True
        assert list(results) == list(range(6))


def test_map_reads_its_input_a_bounded_window_ahead(spawn_backend):
    from accord.spawn._pool import _CHUNKS_PER_WORKER, _MAX_CHUNK

    read = [0]

    def endless():
        for i in itertools.count():
            read[0] = i + 1
            yield i

    with Pool(2, backend=spawn_backend) as pool:
        results = pool.map(square, endless())
        first = list(itertools.islice(results, 20000))
        assert first == [x * x for x in range(20000)]
        # The chunks submitted and the one being yielded from, no more.
        assert read[0] - 20000 <= (2 * _CHUNKS_PER_WORKER + 1) * _MAX_CHUNK
        results.close()  # the chunks still out are cancelled or finish; nothing hangs
        assert pool.submit(square, 3).result(timeout=30) == 9


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.mark.timeout(300)
def test_map_over_ten_million_items_in_bounded_memory(spawn_backend):
    n = 10_000_000
    with Pool(2, backend=spawn_backend) as pool:
        sum(pool.map(abs, range(50_000)))  # warm up: caches and arenas settle
        before = _rss_bytes()
        peak = before
        total = 0
        for i, value in enumerate(pool.map(abs, (j for j in range(n)))):
            total += value
            if i % 500_000 == 0:
                peak = max(peak, _rss_bytes())
        assert total == n * (n - 1) // 2
        # The input alone, read first, would take ~360 MB (a list and its ints).
        assert peak - before < 60 * 2**20, f"grew by {(peak - before) / 2**20:.0f} MB"


def die_at_3(x):
    if x == 3:
        os._exit(5)
    return x


def test_a_chunk_whose_worker_died_runs_its_calls_again_one_by_one(
    spawn_backend, separate_processes
):
    with Pool(2, backend=spawn_backend) as pool:
        values, error = _collect(pool.map(die_at_3, range(8), chunksize=8))
        assert values == [0, 1, 2]
        assert isinstance(error, WorkerLost) and "die_at_3(3)" in str(error)
        assert list(pool.map(die_at_3, [0, 1, 2, 4], chunksize=2)) == [0, 1, 2, 4]


# -- what a task returns never kills the dispatcher; a killed parent leaves no segments --


def _explode(name):
    raise {"interrupt": KeyboardInterrupt, "exit": SystemExit, "base": BaseException}[name](name)


class Bomb:
    """A value whose unpickling (in the pool's process) raises `name`."""

    def __init__(self, name):
        self.name = name

    def __reduce__(self):
        return _explode, (self.name,)


def bomb(name):
    return Bomb(name)


def test_a_result_whose_unpickling_raises_fails_its_future_only(spawn_backend):
    with Pool(1, backend=spawn_backend) as pool:
        for name, kind in [("interrupt", KeyboardInterrupt), ("exit", SystemExit)]:
            with pytest.raises(kind):
                pool.submit(bomb, name).result(timeout=30)
        values, error = _collect_base(pool.map(bomb_at_1, range(3), chunksize=3))
        assert len(values) == 1 and type(error) is BaseException
        assert pool.submit(square, 4).result(timeout=30) == 16  # the dispatcher lives on
        assert pool._thread.is_alive()


def bomb_at_1(x):
    return Bomb("base") if x == 1 else x


def _collect_base(iterator):
    values = []
    try:
        for value in iterator:
            values.append(value)
    except BaseException as exc:
        return values, exc
    return values, None


_PARENT_SCRIPT = """
import os, sys, time
from accord import Pool

def hold(gate):
    # Holds its worker until the test opens the gate (deadline: never for ever).
    end = time.monotonic() + 60
    while not os.path.exists(gate) and time.monotonic() < end:
        time.sleep(0.005)
    return b"r" * 200_000  # a big reply: its segment outlives a dead pool

if __name__ == "__main__":
    backend, gate = sys.argv[1], sys.argv[2]
    pool = Pool(1, backend=backend)
    pool.submit(hold, gate)
    pool.submit(len, b"x" * 200_000)  # in a segment its worker has not taken
    print(os.getpid(), flush=True)
    sys.stdin.read()  # until the test kills this process
"""


def _pool_segments_of(pid: int) -> list[str]:
    from accord._core._segment import leftovers

    return [n for n in leftovers(f"accord.{os.getuid()}.anon-{pid}-pool")]


def _killed_parent(tmp_path, spawn_backend):
    script = tmp_path / "parent.py"
    script.write_text(_PARENT_SCRIPT)
    gate = tmp_path / "gate"
    parent = subprocess.Popen(
        [sys.executable, str(script), spawn_backend, str(gate)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    pid = int(parent.stdout.readline())
    assert _pool_segments_of(pid)  # the argument's segment is there
    parent.kill()
    parent.wait(timeout=30)
    parent.stdin.close()
    parent.stdout.close()
    return pid, gate


def _wait_until(condition, deadline_s=30.0):
    end = time.monotonic() + deadline_s
    while not condition():
        if time.monotonic() > end:
            return False
        time.sleep(0.01)
    return True


def test_workers_of_a_killed_parent_unlink_their_segments(
    spawn_backend, separate_processes, tmp_path
):
    pid, gate = _killed_parent(tmp_path, spawn_backend)
    gate.touch()  # the worker finishes, cannot reply, and cleans up as it ends
    assert _wait_until(lambda: not _pool_segments_of(pid)), _pool_segments_of(pid)


def test_the_next_pool_sweeps_the_segments_of_a_killed_parent(spawn_backend, tmp_path):
    pid, gate = _killed_parent(tmp_path, spawn_backend)
    try:
        # The worker (a process) is still held: nothing has unlinked them yet.
        assert _pool_segments_of(pid)
        with Pool(1, backend=spawn_backend):
            assert _pool_segments_of(pid) == []
    finally:
        gate.touch()  # a worker process of the dead parent ends


# -- scripts from standard input, the cause of a lost worker, traceback file names --


def _run_script(source: str, *args: str, stdin: bool = False, tmp_path=None):
    """Run `source` as a script (from standard input, or as a file); (rc, stdout, stderr)."""
    if stdin:
        command, text = [sys.executable, "-", *args], source
    else:
        script = tmp_path / "script.py"
        script.write_text(source)
        command, text = [sys.executable, str(script), *args], ""
    done = subprocess.run(command, input=text, capture_output=True, text=True, timeout=120)
    return done.returncode, done.stdout, done.stderr


_STDIN_SCRIPT = """
import sys
from accord import Pool

def double(x):
    return 2 * x

def broken(x):
    y = x + 1
    raise ValueError(f"broken {y}")

if __name__ == "__main__":
    with Pool(2, backend=sys.argv[1]) as pool:
        print(pool.submit(double, 21).result(timeout=60), list(pool.map(double, range(4))))
        try:
            pool.submit(broken, 1).result(timeout=60)
        except ValueError as exc:
            print(exc.__cause__)
"""


def test_a_script_read_from_standard_input_runs_its_functions_in_workers(spawn_backend):
    rc, out, err = _run_script(_STDIN_SCRIPT, spawn_backend, stdin=True)
    assert rc == 0, err
    assert "42 [0, 2, 4, 6]" in out
    assert 'File "<stdin>", line 10, in broken' in out  # the real name and line


def _shipped_lambda_fails():
    return lambda x: {}[x]  # by value: cloudpickle ships local functions' code


def test_tracebacks_of_shipped_functions_name_the_real_file_and_line(spawn_backend):
    import linecache

    with Pool(1, backend=spawn_backend) as pool:
        with pytest.raises(KeyError) as info:
            pool.submit(_shipped_lambda_fails(), "nope").result(timeout=30)
        shown = str(info.value.__cause__)
        line = _shipped_lambda_fails.__code__.co_firstlineno + 1
        assert f'File "{__file__}", line {line}, in <lambda>' in shown
        assert "return lambda x: {}[x]" in shown  # the source line, read there
        # Code whose source is only in this process's linecache (a notebook cell).
        source = "def cell(x):\n    y = x * 2\n    raise ValueError(y)\n"
        name = f"<cell-{os.getpid()}>"
        linecache.cache[name] = (len(source), None, source.splitlines(True), name)
        namespace = {}
        exec(compile(source, name, "exec"), namespace)
        with pytest.raises(ValueError) as info:
            pool.submit(namespace["cell"], 1).result(timeout=30)
        shown = str(info.value.__cause__)
        assert f'File "{name}", line 3, in cell' in shown
        assert "raise ValueError(y)" in shown


_LAST_WORDS = """
import os, sys
from accord import Pool

def die():
    print("the disk is full (the worker's last words)", file=sys.stderr, flush=True)
    os._exit(3)

if __name__ == "__main__":
    with Pool(1, backend=sys.argv[1]) as pool:
        try:
            pool.submit(die).result(timeout=60)
        except Exception as exc:
            print(repr(exc))
        print(pool.submit(abs, -5).result(timeout=60))
"""


def test_a_lost_worker_error_carries_its_exit_code_and_last_words(
    spawn_backend, separate_processes, tmp_path
):
    # In a script of its own: the worker's stderr is this process's too.
    rc, out, err = _run_script(_LAST_WORDS, spawn_backend, tmp_path=tmp_path)
    assert rc == 0, err
    assert "WorkerLost" in out and "exited with code 3 while running die()" in out
    assert "the end of its standard error" in out and "the worker's last words" in out
    assert "the worker's last words" in err  # passed on as it was written
    assert out.strip().endswith("5")  # replaced, the pool goes on


_NO_GUARD = """
import sys
from accord import Pool

with Pool(1, backend=sys.argv[1]) as pool:
    print("result", pool.submit(abs, -3).result(timeout=60))
"""


def test_a_script_without_its_main_guard_gets_an_error_that_says_so(spawn_backend, tmp_path):
    rc, out, err = _run_script(_NO_GUARD, spawn_backend, tmp_path=tmp_path)
    if spawn_backend in ("spawn", "forkserver"):
        assert rc != 0
        assert "before it started" in err
        assert 'has no `if __name__ == "__main__":` guard' in err
    else:  # workers do not import the script again: it works
        assert rc == 0, err
        assert "result 3" in out


# -- big arguments: out of band (pickle protocol 5), in reused shared-memory buffers --


class Blob:
    """Pickles its data as an out-of-band buffer (protocol 5), as numpy arrays do."""

    def __init__(self, data):
        self.data = data

    def __reduce_ex__(self, protocol):
        return Blob, (pickle.PickleBuffer(self.data),)


def blob_sum(blob):
    return sum(memoryview(blob.data)[::4096]), type(blob.data).__name__


def blob_double(blob):
    return Blob(bytearray(blob.data) * 2)


def test_big_buffers_travel_out_of_band_in_reused_segments(spawn_backend):
    from accord._core._segment import leftovers
    from accord.spawn._wire import _KEEP

    data = bytearray(os.urandom(1 << 20))
    expected = sum(memoryview(data)[::4096])
    with Pool(2, backend=spawn_backend) as pool:
        payload, buffers = pool._pickle_call(
            pool._pickle_function(blob_sum), blob_sum, (Blob(data),), {}, False, None
        )
        assert len(payload) < 1000 and [b.nbytes for b in buffers] == [len(data)]
        for _ in range(3):  # warm: each side's buffers exist
            assert pool.submit(blob_sum, Blob(data)).result(timeout=30) == (expected, "bytearray")
        before = set(leftovers(pool._stem))
        for _ in range(20):
            futures = [pool.submit(blob_double, Blob(data)) for _ in range(4)]
            for future in futures:
                assert future.result(timeout=30).data == data * 2
        after = set(leftovers(pool._stem))
        # Reused, not one segment per frame: at most _KEEP per side of each worker.
        assert len(after) <= 2 * 2 * _KEEP, after
        assert len(after - before) <= 2 * 2 * _KEEP


def numpy_total(array):
    return float(array.sum()), array.flags.writeable


def test_numpy_arrays_cross_without_a_copy_into_the_pickle(spawn_backend):
    if spawn_backend == "subinterpreter":
        pytest.skip("numpy cannot be imported in a sub-interpreter (single-phase init)")
    numpy = pytest.importorskip("numpy")
    array = numpy.arange(250_000, dtype=numpy.float64)
    with Pool(1, backend=spawn_backend) as pool:
        blob = pool._pickle_function(numpy_total)
        payload, buffers = pool._pickle_call(blob, numpy_total, (array,), {}, False, None)
        assert len(payload) < 1000 and buffers[0].nbytes == array.nbytes
        assert pool.submit(numpy_total, array).result(timeout=30) == (float(array.sum()), True)
        back = pool.submit(numpy.negative, array).result(timeout=30)
        assert (back == -array).all() and back.flags.writeable


def slow_whoami(x):
    time.sleep(0.03)  # the call's own work: past a chunk's budget in two calls
    if x == 13:
        raise ValueError("thirteen")
    return x, os.getpid(), threading.get_ident()


def test_a_chunk_of_long_calls_stops_early_and_the_rest_spreads(spawn_backend):
    from accord.spawn._worker import STOP_AFTER_S

    assert STOP_AFTER_S < 0.06
    with Pool(2, backend=spawn_backend) as pool:
        pool.submit(square, 1).result(timeout=30)
        before = _tasks_sent(pool)
        # 40 known calls on 2 workers: chunks of 20, each stopped after its
        # first calls; the rest of each goes out again, one call per task.
        values, error = _collect(pool.map(slow_whoami, range(40)))
        assert [v[0] for v in values] == list(range(13))
        assert str(error) == "thirteen"
        assert _tasks_sent(pool) - before > 8 + 7  # the rest went out again
        values = list(pool.map(slow_whoami, range(14, 40)))
        assert [v[0] for v in values] == list(range(14, 40))
        assert len({v[1:] for v in values}) == 2  # both workers ran some
