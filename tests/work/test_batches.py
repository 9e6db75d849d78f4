"""Claim batching: several items per transaction, with the guarantees of one."""

from __future__ import annotations

import collections
import signal
import time

import pytest
from sqlalchemy import event
from work_helpers import SURVIVOR, barrier, wait_until

from accord.work import WorkQueue
from accord.work._queue import _BatchSize

# Each test starts processes (workers, the accord command): seconds each on a
# loaded 2-core machine.
pytestmark = pytest.mark.timeout(180)


def _statements(queue: WorkQueue) -> list[str]:
    seen: list[str] = []
    event.listen(queue._engine, "before_cursor_execute", lambda *args: seen.append(args[2]))
    return seen


def test_short_items_are_claimed_and_recorded_in_batches(db):
    queue = WorkQueue(range(500), db=db, name="q", progress=False)
    statements = _statements(queue)
    assert list(queue) == list(range(500))
    # One at a time, each item costs a claim and a completion: at least
    # four statements.  In batches of up to 100, a few per batch.
    assert len(statements) < 150, len(statements)
    assert queue.counts() == {"pending": 0, "running": 0, "completed": 500, "failed": 0}
    assert [h.status for h in queue.history(250)] == ["running", "completed"]
    queue.dispose()


def test_the_batch_size_follows_the_measured_item_time():
    size = _BatchSize(None)
    # Nothing measured yet: a first batch, if the queue is large enough.
    assert (size.next(), size.unless_fewer()) == (100, 2000)
    for _ in range(20):
        size.measured(0.010)
    assert [size.next() for _ in range(3)] == [10, 10, 10]  # 0.1 s of 10 ms items
    trivial = _BatchSize(None)
    trivial.measured(1e-6)
    assert [trivial.next() for _ in range(4)] == [10, 100, 1000, 1000]  # tenfold at most
    for _ in range(30):
        size.measured(2.0)
    assert size.next() == 1  # long items: one at a time
    assert _BatchSize(7).next() == 7


@pytest.mark.parametrize("leave", ["break", "close"])
def test_the_unstarted_items_of_a_batch_go_back_when_the_loop_ends(db, leave):
    queue = WorkQueue(range(10), db=db, name="q", progress=False, claim_batch=10)
    for item in queue:
        if item == 2:
            if leave == "break":
                break
            queue.close()
    left = 2 if leave == "break" else 3
    assert queue.counts() == {
        "pending": 10 - left - (leave == "break"),
        "running": 0,
        "completed": left,
        "failed": int(leave == "break"),
    }
    assert [h.status for h in queue.history(5)] == ["running", "released"]
    assert list(queue) == list(range(3, 10))
    queue.dispose()


def test_a_dead_workers_batch_is_handed_out_again(db, workers):
    options = {"heartbeat_timeout": 1.0, "heartbeat_interval": 0.2, "claim_batch": 5}
    victim = workers.start(db=db, name="crash", items=12, options=options, hang_on=["1"])
    wait_until(lambda: "start 1" in victim.stdout.readline(), 90, "the victim to take item 1")
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    survivor = workers.start(db=db, name="crash", items=12, options={**SURVIVOR, "claim_batch": 5})
    # Its whole batch came back, item 0 too: the victim finished it, but
    # died before its next claim would have recorded that.
    assert sorted(workers.finish(survivor, 120), key=int) == [str(i) for i in range(12)]
    queue = WorkQueue(range(12), db=db, name="crash", progress=False)
    assert queue.counts()["completed"] == 12
    for key in (0, 1, 4):
        assert [h.status for h in queue.history(key)] == [
            "running",
            "killed",
            "running",
            "completed",
        ]
    queue.dispose()


def test_the_heartbeat_keeps_a_whole_batch_with_its_worker(sqlite_db, workers, tmp_path):
    # The batch takes far longer than the heartbeat timeout; no item of it
    # is handed to the other worker, which only gets what is left.  (A
    # timeout of 30 beats: on a loaded machine one can wait long for the
    # CPU, the disk and the write lock.)
    options = {"heartbeat_timeout": 3.0, "heartbeat_interval": 0.1, "claim_batch": 3}
    config = {"db": sqlite_db, "name": "slow", "items": 6, "options": options, "work_s": 1.6}
    done = workers.run([{**config, "barrier": [str(barrier(tmp_path)), 2]}] * 2)
    assert collections.Counter(done[0] + done[1]) == {str(i): 1 for i in range(6)}
    queue = WorkQueue(range(6), db=sqlite_db, name="slow", progress=False)
    assert all(h.status in ("running", "completed") for h in queue.history())
    queue.dispose()


@pytest.mark.timeout(300)
def test_32_workers_on_sqlite_never_see_a_locked_database_nor_complete_twice(
    sqlite_db, workers, tmp_path
):
    n = 3000
    config = {"db": sqlite_db, "name": "q", "items": n, "barrier": [str(barrier(tmp_path)), 32]}
    procs = [workers.start(**config) for _ in range(32)]
    done = collections.Counter()
    for proc in procs:
        out, err = proc.communicate(timeout=240)
        assert proc.returncode == 0, err
        assert "locked" not in err and "unavailable" not in err, err
        done.update(line.split()[1] for line in out.splitlines() if line.startswith("done "))
    assert done == {str(i): 1 for i in range(n)}
    queue = WorkQueue(range(n), db=sqlite_db, name="q", progress=False)
    completions = collections.Counter(h.key for h in queue.history() if h.status == "completed")
    assert completions == {str(i): 1 for i in range(n)}
    queue.dispose()


def test_a_waiting_worker_looks_without_taking_the_write_lock(sqlite_db, tmp_path, monkeypatch):
    import sqlite3

    from accord.work import _db
    from accord.work._store import Entry, Store

    monkeypatch.setattr(_db, "BUSY_TIMEOUT_S", 0.2)
    engine = _db.open_engine(sqlite_db)
    store = Store(engine, "q", "queue")
    store.register([Entry("0", 0), Entry("1", 1)])
    worker = store.add_worker("w", "host", 1, (), 60.0, None)
    conn = store.connect()
    assert store.peek(conn)  # an item is free
    claimed = store.claim(conn, worker, want=2)
    assert not store.peek(conn)  # both run here: nothing to do but wait
    writer = sqlite3.connect(tmp_path / "run.sqlite", isolation_level=None)
    writer.execute("BEGIN IMMEDIATE")  # a working worker's claim
    try:
        assert not store.peek(conn)  # would be "database is locked" with the lock
    finally:
        writer.execute("ROLLBACK")
        writer.close()
    store.claim(conn, worker, [(c, "completed", None) for c in claimed], want=0)
    assert store.peek(conn)  # the end: a claim now says DONE
    conn.close()
    engine.dispose()


def test_a_worker_presumed_dead_does_not_run_the_rest_of_its_batch(sqlite_db):
    from sqlalchemy import select, update

    from accord.work._schema import workers
    from accord.work._store import Store

    options = {"heartbeat_timeout": 30.0, "heartbeat_interval": 0.05}
    queue = WorkQueue(range(4), db=sqlite_db, name="q", progress=False, claim_batch=3, **options)
    engine = queue._engine
    seen = []
    for item in queue:
        seen.append(item)
        if len(seen) == 1:
            # Others give this worker up (as if it had been suspended): in one
            # transaction its heartbeat looks stale and a claim reaps it.
            reaper = Store(engine, "q", "queue")
            reaper.max_retries = 2
            with engine.begin() as conn:
                conn.execute(update(workers).values(heartbeat_at=0.0))
                reaper._reap(conn, time.time())

            def revived():
                with engine.connect() as conn:
                    return conn.execute(select(workers.c.status)).scalar() == "active"

            wait_until(revived, 30, "its heartbeat to learn it had been given up")
    # Items 1 and 2 went back to the queue with 0: not run from the old batch,
    # but claimed again, with 0, whose first outcome was not recorded.
    assert seen == [0, 0, 1, 2, 3]
    assert [h.status for h in queue.history(1)] == ["running", "killed", "running", "completed"]
    queue.dispose()


def test_a_worker_takes_the_write_lock_to_join_to_claim_and_no_more(sqlite_db, monkeypatch):
    from accord.work import _db

    queue = WorkQueue(range(3), db=sqlite_db, name="q", progress=False, claim_batch=3)
    taken = []
    take = _db._take_write_lock
    monkeypatch.setattr(_db, "_take_write_lock", lambda c: (taken.append(1), take(c)))
    assert list(queue) == [0, 1, 2]
    # Joining, the batch, and the claim that finds nothing left (it records
    # the outcomes and stops the worker): connecting only reads, and the end
    # has no transaction of its own.  Every other worker waits for each.
    assert len(taken) == 3
    assert queue.counts()["completed"] == 3
    queue.dispose()


def test_the_claim_that_finds_nothing_left_stops_the_worker_for_good(sqlite_db):
    from sqlalchemy import select

    from accord.work._db import open_engine
    from accord.work._schema import workers
    from accord.work._store import DONE, Entry, Store

    engine = open_engine(sqlite_db)
    store = Store(engine, "q", "queue")
    store.register([Entry("0", 0)])
    worker = store.add_worker("w", "host", 1, (), 60.0, None)
    conn = store.connect()
    [claimed] = store.claim(conn, worker)
    assert store.claim(conn, worker, [(claimed, "completed", None)]) == DONE

    def status() -> str:
        with engine.connect() as c:
            return c.execute(select(workers.c.status).where(workers.c.id == worker)).scalar()

    assert status() == "stopped"
    # A last beat of its heartbeat before the thread stops neither revives
    # it nor reports it given up.
    assert store.beat(worker)
    assert status() == "stopped"
    conn.close()
    engine.dispose()


def test_items_another_worker_registers_mid_loop_are_not_claimed(db):
    # A claim checks only the items registered since this worker connected
    # (the others were checked then): the late ones must still be refused.
    mine = WorkQueue(["a", "b", "c"], db=db, name="q", key=str, progress=False, claim_batch=2)
    seen = []
    for item in mine:
        seen.append(item)
        if item == "a":
            other = WorkQueue(["x", "y"], db=db, name="q", key=str, progress=False)
    assert seen == ["a", "b", "c"]  # the second batch had "c" and "x"
    assert list(other) == ["x", "y"]
    mine.dispose()
    other.dispose()


def test_a_batch_with_items_taken_away_records_only_the_others(db, caplog):
    from sqlalchemy import update

    from accord.work._schema import items

    queue = WorkQueue(range(3), db=db, name="q", progress=False, claim_batch=3)
    seen = []
    for item in queue:
        seen.append(item)
        if item == 1 and len(seen) == 2:
            # Two of the batch go back to the queue while this worker runs
            # them (as a re-registered fingerprint or a reset would do it).
            with queue._engine.begin() as conn:
                back = update(items).where(items.c.key.in_(["1", "2"])).values(status="pending")
                assert conn.execute(back).rowcount == 2
    # Their outcomes in the first batch are not recorded (0's is): done again.
    assert seen == [0, 1, 2, 1, 2]
    assert [h.status for h in queue.history(0)] == ["running", "completed"]
    assert [h.status for h in queue.history(2)] == ["running", "running", "completed"]
    assert "went back to the queue while this worker ran it" in caplog.text
    queue.dispose()


@pytest.mark.parametrize("n", [1999, 2000])
def test_a_first_batch_is_a_hundred_items_only_on_a_queue_of_thousands(db, n):
    # Before any item is timed a worker cannot tell trivial items from
    # hour-long ones: on a small queue it takes one (its next claims
    # follow the time it measured), on one of 20 x 100 ready items a
    # hundred (they are not the last ones: others are not left idle).
    queue = WorkQueue(range(n), db=db, name="q", progress=False)
    items = iter(queue)
    assert next(items) == 0
    assert queue.counts()["running"] == (100 if n >= 2000 else 1)
    items.close()
    queue.dispose()


def test_items_handed_out_again_after_a_death_are_claimed_alone(db):
    # One of them may be what killed the worker (and kills each worker
    # that runs it): in a batch it would take the others to max_retries.
    from sqlalchemy import update

    from accord.work._db import open_engine
    from accord.work._schema import workers
    from accord.work._store import COMPLETED, DONE, Entry, Store

    engine = open_engine(db)
    try:
        store = Store(engine, "q", "queue")
        store.register([Entry(str(i), i) for i in range(8)])
        dead = store.add_worker("dead", "host", 1, (), 60.0, None)
        with store.connect() as conn:
            assert [c.key for c in store.claim(conn, dead, want=4)] == ["0", "1", "2", "3"]
        with engine.begin() as c:  # its heartbeat long stale
            c.execute(update(workers).where(workers.c.id == dead).values(heartbeat_at=0.0))
        other = Store(engine, "q", "queue")  # reaps at its first claim
        other.max_retries = 2
        worker = other.add_worker("other", "host", 2, (), 60.0, None)
        seen, finished = [], []
        with other.connect() as conn:
            while (claimed := other.claim(conn, worker, finished, want=4)) != DONE:
                seen.append([c.key for c in claimed])
                finished = [(c, COMPLETED, None) for c in claimed]
        assert seen == [["0"], ["1"], ["2"], ["3"], ["4", "5", "6", "7"]]
    finally:
        engine.dispose()
    queue = WorkQueue(range(8), db=db, name="q", progress=False)
    assert [h.status for h in queue.history(2)] == ["running", "killed", "running", "completed"]
    queue.dispose()
