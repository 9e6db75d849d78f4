"""Workers ride out database outages: a PostgreSQL restart, SQLite busy for long.

The restart is of a real server (a PostgreSQL of the test's own, stopped
with a fast shutdown, which terminates every connection, then started again
on the same port), under eight worker processes.
"""

from __future__ import annotations

import collections
import logging
import sqlite3
import threading

import psycopg
import pytest
from work_helpers import barrier, wait_until

from accord.work import DatabaseUnavailable, WorkQueue, _db

# Each test starts processes (workers, the accord command): seconds each on a
# loaded 2-core machine.
pytestmark = pytest.mark.timeout(180)


def _completions(url: str) -> collections.Counter:
    """How many times each item's completion was recorded."""
    queue = WorkQueue([], db=url, name="q", progress=False)
    try:
        return collections.Counter(h.key for h in queue.history() if h.status == "completed")
    finally:
        queue.dispose()


@pytest.mark.timeout(240)
def test_eight_workers_ride_out_a_postgres_restart(restartable_postgres, workers, tmp_path):
    server = restartable_postgres
    url = server.create_database()
    n = 800
    WorkQueue(range(n), db=url, name="q", progress=False).dispose()
    config = {"db": url, "name": "q", "items": n, "work_s": 0.01}
    config["barrier"] = [str(barrier(tmp_path)), 8]
    procs = [workers.start(**config) for _ in range(8)]

    def completed() -> int:
        with psycopg.connect(url) as conn:
            return conn.execute(
                "SELECT count(*) FROM accord_items WHERE status = 'completed'"
            ).fetchone()[0]

    wait_until(lambda: completed() >= n // 10, 120, "a tenth of the items to complete")
    server.stop()
    server.start()
    outputs = [p.communicate(timeout=180) for p in procs]
    for proc, (_, err) in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, err
    # Each worker met the outage (its connection was terminated mid-run)
    # and carried on; nothing was recorded twice, nothing is missing.
    met = [err for _, err in outputs if "database unavailable" in err]
    assert len(met) >= 6, [err[-500:] for _, err in outputs]
    assert _completions(url) == {str(i): 1 for i in range(n)}


def _block(path, caplog, released: threading.Event) -> threading.Thread:
    """Hold SQLite's write lock until a worker has said it is waiting it out."""
    blocker = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    blocker.execute("BEGIN IMMEDIATE")

    def hold():
        try:
            wait_until(
                lambda: (
                    released.is_set()
                    or any("database unavailable" in r.getMessage() for r in caplog.records)
                ),
                30,
                "the worker to retry",
            )
        finally:
            blocker.execute("ROLLBACK")
            blocker.close()

    thread = threading.Thread(target=hold, daemon=True)
    thread.start()
    return thread


def test_sqlite_busy_beyond_its_timeout_is_waited_out(sqlite_db, tmp_path, monkeypatch, caplog):
    caplog.set_level(logging.WARNING, logger="accord.work")
    monkeypatch.setattr(_db, "BUSY_TIMEOUT_S", 0.2)
    queue = WorkQueue(range(3), db=sqlite_db, name="q", progress=False, claim_batch=1)
    done = []
    for item in queue:
        done.append(item)
        if item == 0:
            holder = _block(tmp_path / "run.sqlite", caplog, threading.Event())
    holder.join(30)
    assert done == [0, 1, 2]
    assert queue.counts()["completed"] == 3
    assert any("database is locked" in r.getMessage() for r in caplog.records)
    queue.dispose()


def test_an_outage_longer_than_reconnect_timeout_raises(sqlite_db, tmp_path, monkeypatch):
    monkeypatch.setattr(_db, "BUSY_TIMEOUT_S", 0.1)
    queue = WorkQueue(
        range(3), db=sqlite_db, name="q", progress=False, claim_batch=1, reconnect_timeout=0.5
    )
    blocker = sqlite3.connect(tmp_path / "run.sqlite", isolation_level=None)
    try:
        with pytest.raises(DatabaseUnavailable, match="reconnect_timeout"):
            for item in queue:
                if item == 0:
                    blocker.execute("BEGIN IMMEDIATE")
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    # Item 0's outcome could not be recorded: not completed, and another
    # worker gets it (this one's end was not recorded either; its items
    # come back when its heartbeat is old).
    assert queue.counts()["completed"] == 0
    queue.dispose()


def test_errors_in_the_sql_are_not_retried(sqlite_db):
    from sqlalchemy import text

    queue = WorkQueue(range(2), db=sqlite_db, name="q", progress=False)
    with pytest.raises(Exception, match="no such table"):
        for _ in queue:
            with queue._engine.begin() as conn:
                conn.execute(text("DROP TABLE accord_history"))
    queue.dispose()


def test_items_a_lost_answer_claimed_go_back_when_the_claim_is_retried(db, caplog):
    from accord.work._db import open_engine
    from accord.work._store import COMPLETED, Entry, Store

    engine = open_engine(db)
    store = Store(engine, "q", "queue")
    store.register([Entry(str(i), i) for i in range(4)])
    worker = store.add_worker("w", "host", 1, (), 60.0, None)
    conn = store.connect()
    [first] = store.claim(conn, worker)
    # This claim commits, but its answer never reaches the worker (the
    # connection broke after the COMMIT): items 1 and 2 are claimed unseen.
    assert [c.key for c in store.claim(conn, worker, [(first, COMPLETED, None)], want=2)] == [
        "1",
        "2",
    ]
    # The worker retries the same claim on a new connection: item 0's outcome
    # is already recorded (not twice), and the unseen items are handed back
    # before it claims again.
    conn.close()
    conn = store.connect()
    again = store.claim(conn, worker, [(first, COMPLETED, None)], want=4, recovering=True)
    assert [c.key for c in again] == ["1", "2", "3"]
    queue = WorkQueue(range(4), db=db, name="q", progress=False)
    assert [h.status for h in queue.history(0)] == ["running", "completed"]
    assert [h.status for h in queue.history(1)] == ["running", "released", "running"]
    assert "went back to the queue" not in caplog.text  # a replay, not a lost lease
    conn.close()
    queue.dispose()
    engine.dispose()
