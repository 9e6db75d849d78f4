"""WorkQueue: each item once, across independent processes, through crashes."""

from __future__ import annotations

import collections
import contextlib
import os
import signal
import subprocess
import sys

import pytest
from work_helpers import SURVIVOR, barrier, wait_until

from accord.work import DatabaseUnavailable, InvalidWork, Task, TaskGraph, WorkFailed, WorkQueue


def test_four_workers_do_each_of_400_items_once(db, workers, tmp_path):
    # 5 ms items: 2 s of work for one worker alone, in batches of about 20.
    # Trivial ones are claimed up to 1,000 at a time, and on a loaded
    # machine the first worker to start could take them all.
    config = {
        "db": db,
        "name": "embed",
        "items": 400,
        "barrier": [str(barrier(tmp_path)), 4],
        "work_s": 0.005,
    }
    done = workers.run([config] * 4)
    everything = collections.Counter(key for keys in done for key in keys)
    assert sorted(everything, key=int) == [str(i) for i in range(400)]
    assert set(everything.values()) == {1}
    assert sum(1 for keys in done if keys) >= 2, "the work was not shared"
    queue = WorkQueue(range(400), db=db, name="embed", progress=False)
    assert queue.counts() == {"pending": 0, "running": 0, "completed": 400, "failed": 0}
    assert list(queue) == []


def test_killed_worker_item_is_redone_after_heartbeat_timeout(db, workers):
    options = {"heartbeat_timeout": 1.0, "heartbeat_interval": 0.2}
    victim = workers.start(db=db, name="crash", items=6, options=options, hang_on=["0"])
    wait_until(
        lambda: victim.stdout.readline().startswith("start 0"), what="the victim to take item 0"
    )
    survivor = workers.start(db=db, name="crash", items=6, options=SURVIVOR)
    victim.send_signal(signal.SIGKILL)
    done = workers.finish(survivor)
    assert sorted(done) == ["0", "1", "2", "3", "4", "5"]
    queue = WorkQueue(range(6), db=db, name="crash", progress=False)
    assert [(h.status, h.error is not None) for h in queue.history(0)] == [
        ("running", False),
        ("killed", True),
        ("running", False),
        ("completed", False),
    ]
    first, killed, again, _ = queue.history(0)
    assert first.worker == killed.worker != again.worker
    assert "stopped heartbeating" in killed.error


def test_item_given_up_after_max_retries(sqlite_db, workers):
    options = {"heartbeat_timeout": 0.5, "heartbeat_interval": 0.1, "max_retries": 0}
    victim = workers.start(db=sqlite_db, name="fragile", items=2, options=options, hang_on=["0"])
    wait_until(lambda: victim.stdout.readline().startswith("start 0"), what="item 0 to start")
    victim.kill()
    victim.wait()
    queue = WorkQueue(
        range(2), db=sqlite_db, name="fragile", progress=False, max_retries=0, **SURVIVOR
    )
    assert [int(i) for i in queue] == [1]
    assert queue.counts()["failed"] == 1
    assert "max_retries=0" in queue.history(0)[-1].error


def test_body_that_raises_fails_the_item_and_the_exception_propagates(sqlite_db):
    queue = WorkQueue("abcd", db=sqlite_db, name="q", progress=False)
    with pytest.raises(ZeroDivisionError):
        for item in queue:
            if item == "b":
                1 / 0  # noqa: B018
    assert queue.counts() == {"pending": 2, "running": 0, "completed": 1, "failed": 1}
    assert list(queue) == ["c", "d"]  # failure_policy="continue": the rest goes on
    assert queue.history(1)[-1].status == "failed"
    assert queue.reset_failed() == ["1"]
    assert list(queue) == ["b"]


def test_failure_policy_stop_stops_every_worker(sqlite_db):
    queue = WorkQueue("abc", db=sqlite_db, name="q", failure_policy="stop", progress=False)
    with pytest.raises(KeyError):
        for item in queue:
            raise KeyError(item)
    other = WorkQueue("abc", db=sqlite_db, name="q", failure_policy="stop", progress=False)
    with pytest.raises(WorkFailed, match="'0'"):
        list(other)
    assert queue.counts()["pending"] == 2


def test_break_fails_the_item_close_completes_it(sqlite_db):
    queue = WorkQueue(range(5), db=sqlite_db, name="q", progress=False)
    for item in queue:
        if item == 1:
            break
    assert queue.counts() == {"pending": 3, "running": 0, "completed": 1, "failed": 1}
    for item in queue:
        if item == 3:
            queue.close()
    assert queue.counts() == {"pending": 1, "running": 0, "completed": 3, "failed": 1}
    assert list(queue) == [4]


def test_uncaught_exception_is_recorded_with_its_traceback(sqlite_db, workers):
    proc = workers.start(db=sqlite_db, name="q", items=3, fail_on=["1"])
    proc.communicate(timeout=30)
    assert proc.returncode == 1
    queue = WorkQueue(range(3), db=sqlite_db, name="q", progress=False)
    error = queue.history(1)[-1].error
    assert "ValueError: boom on 1" in error and "Traceback" in error


def test_the_applications_excepthook_is_left_alone(sqlite_db):
    before = sys.excepthook
    queue = WorkQueue(range(2), db=sqlite_db, name="q", progress=False)
    for _item in queue:
        break  # leaves the loop: the item is failed, and its traceback is looked for at exit
    assert queue.counts()["failed"] == 1
    assert sys.excepthook is before


def test_key_function_and_workers_with_different_lists(sqlite_db):
    first = WorkQueue(["a", "b", "c", "d"], db=sqlite_db, name="q", key=str.upper, progress=False)
    second = WorkQueue(["c", "d", "e"], db=sqlite_db, name="q", key=str.upper, progress=False)
    assert list(second) == ["c", "d", "e"]
    assert list(first) == ["a", "b"]  # "E" is not first's to do
    assert [h.key for h in first.history() if h.status == "completed"] == ["C", "D", "E", "A", "B"]


def test_max_workers_caps_concurrent_workers(sqlite_db):
    one = iter(WorkQueue(range(4), db=sqlite_db, name="q", max_workers=1, progress=False))
    assert next(one) == 0
    assert list(WorkQueue(range(4), db=sqlite_db, name="q", max_workers=1, progress=False)) == []
    assert list(one) == [1, 2, 3]


def test_lock_excludes_other_workers(db, workers, tmp_path):
    counter = tmp_path / "counter"
    counter.write_text("0")
    workers.run([{"db": db, "name": "locked", "items": 150, "counter": str(counter)}] * 3)
    assert counter.read_text() == "150"


def test_lock_times_out_while_another_process_holds_it(sqlite_db, tmp_path):
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys; from accord.work import WorkQueue; "
            f"q = WorkQueue([1], db={sqlite_db!r}, name='q', progress=False); "
            "q.lock.acquire(); print('held', flush=True); sys.stdin.read()",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline() == "held\n"
        queue = WorkQueue([1], db=sqlite_db, name="q", progress=False)
        assert queue.lock.acquire(timeout=0.2) is False
        holder.stdin.close()  # the holder exits; the OS releases its lock
        assert queue.lock.acquire(timeout=20) is True
        queue.lock.release()
    finally:
        holder.kill()
        holder.wait()


@pytest.mark.parametrize(
    ("items", "kwargs", "message"),
    [
        ([1, 2, 1], {"key": str}, "duplicate key '1'"),
        ([1], {"failure_policy": "retry"}, "failure_policy"),
        ([1], {"heartbeat_timeout": 1, "heartbeat_interval": 2}, "heartbeat_interval"),
    ],
)
def test_bad_input_is_refused_before_any_work(sqlite_db, items, kwargs, message):
    with pytest.raises(InvalidWork, match=message):
        WorkQueue(items, db=sqlite_db, **kwargs)


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("sqlite:////no/such/dir/run.sqlite", "directory /no/such/dir does not exist"),
        ("sqlite://", "in-memory"),
        ("nonsense", "not a database URL"),
        ("mysql://localhost/x", "supports sqlite"),
        (
            "postgresql://nobody@127.0.0.1:1/none",
            "cannot open postgresql://nobody@127.0.0.1:1/none",
        ),
    ],
)
def test_unopenable_database_is_a_clear_error(url, message):
    with pytest.raises(DatabaseUnavailable, match=message):
        WorkQueue([1], db=url)


def test_sqlite_uses_wal_and_immediate_transactions(sqlite_db):
    queue = WorkQueue([1], db=sqlite_db, name="q", progress=False)
    with queue._engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
    assert os.path.exists(sqlite_db.removeprefix("sqlite:///") + "-wal")


def test_heartbeats_keep_a_slow_item_with_its_worker(sqlite_db, workers, tmp_path):
    # Each item takes longer than the heartbeat timeout; the heartbeat thread
    # keeps the worker alive, so no item is handed out twice.  The timeout
    # leaves room for 30 beats: on a loaded machine a beat can wait long
    # for the CPU, the disk and the write lock (0.6 s, then 1.5 s were tight).
    options = {"heartbeat_timeout": 3.0, "heartbeat_interval": 0.1}
    config = {"db": sqlite_db, "name": "slow", "items": 4, "options": options, "work_s": 4.0}
    done = workers.run([{**config, "barrier": [str(barrier(tmp_path)), 2]}] * 2)
    assert sorted(done[0] + done[1]) == ["0", "1", "2", "3"]
    queue = WorkQueue(range(4), db=sqlite_db, name="slow", progress=False)
    assert all(h.status in ("running", "completed") for h in queue.history())


def test_network_filesystem_uses_the_rollback_journal(sqlite_db, monkeypatch):
    from accord.work import _db

    monkeypatch.setattr(_db, "filesystem_type", lambda path: "nfs4")
    queue = WorkQueue([1, 2], db=sqlite_db, name="q", progress=False)
    with queue._engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "delete"
    assert list(queue) == [1, 2]


def test_progress_bar_counts_the_whole_queue(sqlite_db, capsys):
    list(WorkQueue(range(3), db=sqlite_db, name="q", progress=False))
    list(WorkQueue(range(5), db=sqlite_db, name="q", progress=True))
    assert "5/5" in capsys.readouterr().err


def test_a_finished_loop_leaves_no_thread_behind(sqlite_db):
    script = (
        "import threading\n"
        "from accord.work import WorkQueue\n"
        f"queue = WorkQueue(range(3), db={sqlite_db!r}, name='q', progress=False)\n"
        "for item in queue:\n"
        "    pass\n"
        "print(sorted(t.name for t in threading.enumerate()))\n"
    )
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=30)
    assert run.stdout == "['MainThread']\n", run.stderr


def test_a_database_failing_as_the_loop_starts_stops_the_heartbeat(sqlite_db, monkeypatch):
    import threading

    from accord.work._store import Store

    def gone(self):
        raise ConnectionError("the server went away")

    queue = WorkQueue(range(3), db=sqlite_db, name="q", progress=False)
    monkeypatch.setattr(Store, "connect", gone)
    with pytest.raises(ConnectionError):
        list(queue)
    assert not [t for t in threading.enumerate() if t.name.startswith("accord-heartbeat")]
    monkeypatch.undo()
    assert list(queue) == [0, 1, 2]
    queue.dispose()


def test_lock_excludes_threads_whatever_the_url_spelling(tmp_path, monkeypatch):
    import threading

    monkeypatch.chdir(tmp_path)
    relative = WorkQueue([1], db="sqlite:///run.sqlite", name="q", progress=False)
    absolute = WorkQueue([1], db=f"sqlite:///{tmp_path}/run.sqlite", name="q", progress=False)
    taken: list[bool] = []
    with relative.lock:
        other = threading.Thread(target=lambda: taken.append(absolute.lock.acquire(timeout=0.2)))
        other.start()
        other.join(10)
    assert taken == [False]
    relative.dispose()
    absolute.dispose()


def test_a_suspended_worker_that_comes_back_does_not_record_its_old_item(sqlite_db, workers):
    options = {"heartbeat_timeout": 1.0, "heartbeat_interval": 0.2}
    config = {"db": sqlite_db, "name": "frozen", "items": 4, "options": options}
    victim = workers.start(**config, work_s=2.0)
    wait_until(lambda: victim.stdout.readline().startswith("start 0"), what="item 0 to start")
    victim.send_signal(signal.SIGSTOP)  # a suspended job, mid-item
    try:
        survivor = workers.start(**{**config, "options": SURVIVOR})
        assert sorted(workers.finish(survivor)) == ["0", "1", "2", "3"]
    finally:
        victim.send_signal(signal.SIGCONT)
    # It finishes its body of item 0, which another worker has done since:
    # that outcome is not recorded, and nothing is left for it.
    assert workers.finish(victim) == ["0"]
    queue = WorkQueue(range(4), db=sqlite_db, name="frozen", progress=False)
    assert queue.counts() == {"pending": 0, "running": 0, "completed": 4, "failed": 0}
    history = queue.history(0)
    assert [h.status for h in history] == ["running", "killed", "running", "completed"]
    assert history[0].worker != history[-1].worker


def test_other_workers_items_are_skipped_at_once_not_one_query_each(db):
    from sqlalchemy import event

    WorkQueue([f"a{i}" for i in range(3000)], db=db, name="q", key=str, progress=False)
    chunk = WorkQueue(["b0", "b1", "b2"], db=db, name="q", key=str, progress=False)
    statements: list[str] = []
    event.listen(chunk._engine, "before_cursor_execute", lambda *args: statements.append(args[2]))
    assert list(chunk) == ["b0", "b1", "b2"]
    assert len(statements) < 100
    chunk.dispose()


def test_an_item_whose_outcome_could_not_be_recorded_is_not_left_running(sqlite_db, monkeypatch):
    import threading

    from accord.work._store import Store

    claim = Store.claim

    def dropped(self, conn, worker_id, finished=(), *args):
        if finished:
            raise ConnectionError("the connection dropped")
        return claim(self, conn, worker_id, finished, *args)

    def lost(self, conn, worker_id, finished, now):
        pass  # the outcomes never reach the database

    monkeypatch.setattr(Store, "claim", dropped)
    monkeypatch.setattr(Store, "_finish_all", lost)
    with pytest.raises(ConnectionError):
        for _ in WorkQueue(range(2), db=sqlite_db, name="q", progress=False):
            pass
    monkeypatch.undo()
    # Item 0 went back to the queue as the worker stopped: another worker
    # does it, instead of waiting for good for an item nobody runs.
    done: list = []
    other = WorkQueue(range(2), db=sqlite_db, name="q", progress=False)
    thread = threading.Thread(target=lambda: done.extend(other), daemon=True)
    thread.start()
    wait_until(lambda: not thread.is_alive(), 15, "the other worker to finish")
    assert done == [0, 1]
    assert [h.status for h in other.history(0)] == ["running", "killed", "running", "completed"]
    other.dispose()


def _last_bar(stderr: str) -> str:
    return [line for line in stderr.replace("\r", "\n").splitlines() if "|" in line][-1]


def test_every_workers_progress_bar_ends_at_100_percent(db, workers, tmp_path):
    config = {"db": db, "name": "embed", "items": 60, "work_s": 0.01}
    config["options"] = {"progress": True}
    config["barrier"] = [str(barrier(tmp_path)), 3]
    procs = [workers.start(**config) for _ in range(3)]
    for proc in procs:
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
        # Each worker did only some items, and synced at most once a second
        # while running: the bar left on screen is the database's count.
        assert "100%" in _last_bar(err) and "60/60" in _last_bar(err), err


def test_a_graphs_progress_bar_counts_tasks(sqlite_db, capsys):
    tasks = [Task("a"), Task("b", deps=["a"]), Task("c", deps=["b"])]
    list(TaskGraph(tasks, db=sqlite_db, name="g", progress=True))
    bar = _last_bar(capsys.readouterr().err)
    assert "3/3" in bar and "task" in bar and "it" not in bar.split("]")[0].split("[")[-1]


@pytest.mark.parametrize("max_retries", [0, 2])
def test_retry_failed_requeues_a_failing_item_up_to_max_retries(db, max_retries):
    tries: list[int] = []

    def run():
        queue = WorkQueue(
            range(3), db=db, name="q", progress=False, retry_failed=True, max_retries=max_retries
        )
        with contextlib.suppress(ValueError):
            for item in queue:
                if item == 1:
                    tries.append(item)
                    raise ValueError("flaky")
        return queue

    for _ in range(max_retries + 2):
        queue = run()
    assert len(tries) == max_retries + 1
    assert queue.counts() == {"pending": 0, "running": 0, "completed": 2, "failed": 1}
    statuses = [h.status for h in queue.history(1)]
    assert statuses == ["running", "failed"] * (max_retries + 1)
    queue.dispose()


def test_without_retry_failed_a_failure_is_final(sqlite_db):
    queue = WorkQueue(range(2), db=sqlite_db, name="q", progress=False, max_retries=2)
    with pytest.raises(ValueError):
        for _ in queue:
            raise ValueError("once")
    assert list(queue) == [1]
    assert queue.counts()["failed"] == 1
