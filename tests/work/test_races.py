"""Workers presumed dead that turn out to be alive, and transactions that meet.

Two transactions meet only on PostgreSQL (on SQLite they run one at a
time): those tests run one worker's step at the exact point of another's
reap (through a connection that calls back after a given statement) or
registration.  The others drive a worker through the store directly.
"""

from __future__ import annotations

import threading
import time

import pytest
from sqlalchemy import select, text, update
from work_helpers import SURVIVOR, wait_until

from accord.work import WorkQueue
from accord.work._db import open_engine
from accord.work._schema import items, workers
from accord.work._store import COMPLETED, Claimed, Entry, Store


class _After:
    """A connection that runs ``then()`` once, after the first statement matching ``when``."""

    def __init__(self, conn, when, then) -> None:
        self._conn, self._when, self._then = conn, when, then

    def execute(self, statement, *args, **kwargs):
        return self._after(self._conn.execute(statement, *args, **kwargs), str(statement))

    def exec_driver_sql(self, statement, *args, **kwargs):
        # The claim loop's own statements, compiled once (see _store.Prepared).
        return self._after(self._conn.exec_driver_sql(statement, *args, **kwargs), statement)

    def _after(self, result, sql: str):
        if self._then is not None and self._when(sql):
            then, self._then = self._then, None
            then()
        return result

    def __getattr__(self, name):
        return getattr(self._conn, name)


def _open(url: str):
    engine = open_engine(url)
    store = Store(engine, "race", "queue")
    store.register([Entry("0", 0), Entry("1", 1)])
    yield store
    engine.dispose()


@pytest.fixture
def store(db):
    yield from _open(db)


@pytest.fixture
def pg_store(postgres_db):
    yield from _open(postgres_db)


def _running_worker(store: Store) -> tuple[int, object, Claimed]:
    """A worker that claimed item '0' and then went silent past its timeout."""
    worker = store.add_worker("slow", "host", 1, (), 1.0, None)
    conn = store.connect()
    [claimed] = store.claim(conn, worker)
    assert isinstance(claimed, Claimed) and claimed.key == "0"
    with store.engine.begin() as c:
        c.execute(update(workers).where(workers.c.id == worker).values(heartbeat_at=0.0))
    return worker, conn, claimed


def _state(store: Store, worker: int) -> tuple[str, str]:
    with store.engine.connect() as c:
        status = c.execute(select(workers.c.status).where(workers.c.id == worker)).scalar()
        item = c.execute(select(items.c.status).where(items.c.key == "0")).scalar()
    return status, item


def _reap(store: Store, when, then) -> None:
    reaper = Store(store.engine, "race", "queue")
    reaper.max_retries = 2
    with store.engine.connect() as conn, conn.begin():
        reaper._reap(_After(conn, when, then), time.time())


def test_a_heartbeat_just_after_the_reaper_looked_saves_the_worker(pg_store):
    store = pg_store
    worker, conn, _ = _running_worker(store)
    _reap(store, lambda sql: sql.startswith("SELECT") and "accord_workers" in sql,
          lambda: store.beat(worker))  # fmt: skip
    assert _state(store, worker) == ("active", "running")
    conn.close()


def test_an_item_finished_while_it_is_reaped_is_not_requeued_after_completion(
    postgres_db, pg_store
):
    store = pg_store
    worker, conn, claimed = _running_worker(store)
    finishing = threading.Thread(target=store.finish, args=(conn, worker, claimed, COMPLETED, None))
    pid = conn.connection.dbapi_connection.info.backend_pid

    def finish_now():
        # The slow worker finishes its item between the reaper's look at
        # its items and their re-queueing: either it completes first (and
        # the reaper leaves the item alone) or it waits for the reaper.
        finishing.start()
        wait_until(lambda: not finishing.is_alive() or _waits_for_a_lock(store, pid), 10,
                   "the finishing worker to commit or wait")  # fmt: skip

    _reap(store, lambda sql: sql.startswith("SELECT") and "FROM accord_items" in sql, finish_now)
    finishing.join(10)
    assert not finishing.is_alive()
    statuses = [h.status for h in WorkQueue(range(2), db=postgres_db, name="race").history(0)]
    item = _state(store, worker)[1]
    # Once a completion is recorded, the item is not put back.
    assert (item, statuses) in [
        ("pending", ["running", "killed"]),
        ("completed", ["running", "completed"]),
    ]
    conn.close()


def _waits_for_a_lock(store: Store, pid: int) -> bool:
    with store.engine.connect() as c:
        return (
            c.execute(
                text("SELECT wait_event_type FROM pg_stat_activity WHERE pid = :pid"),
                {"pid": pid},
            ).scalar()
            == "Lock"
        )


def test_a_worker_given_up_while_idle_is_active_again_when_it_claims(db, store):
    # Others declared it dead while it was suspended between items; it
    # claims an item before its heartbeat thread has beaten again, then dies.
    worker = store.add_worker("frozen", "host", 1, (), 0.5, None)
    with store.engine.begin() as c:
        c.execute(
            update(workers).where(workers.c.id == worker).values(status="killed", heartbeat_at=0.0)
        )
    conn = store.connect()
    assert store.claim(conn, worker)[0].key == "0"
    conn.close()
    # Its item comes back once its heartbeat is old, instead of staying
    # "running" forever and keeping every other worker waiting for it.
    others: list = []
    queue = WorkQueue(range(2), db=db, name="race", progress=False, **SURVIVOR)
    thread = threading.Thread(target=lambda: others.extend(queue), daemon=True)
    thread.start()
    wait_until(lambda: not thread.is_alive(), 15, "the other worker to finish")
    assert sorted(others) == [0, 1]
    queue.dispose()


def test_tasks_registered_while_a_dependency_completes_still_unlock(postgres_db):
    engine = open_engine(postgres_db)
    graph = [Entry("dep", 0), Entry("child", 1, deps=("dep",))]
    store = Store(engine, "g", "graph")
    store.register(graph)
    worker = store.add_worker("w", "host", 1, (), 60.0, None)
    conn = store.connect()
    [claimed] = store.claim(conn, worker)
    assert claimed.key == "dep"
    # The worker completes dep (uncommitted) while another worker registers
    # the graph with one more task, which recounts every task's unmet deps.
    transaction = conn.begin()
    store._finish(conn, worker, claimed, COMPLETED, None, time.time())
    registering = threading.Thread(
        target=Store(engine, "g", "graph").register, args=(graph + [Entry("new", 2)],)
    )
    registering.start()
    wait_until(lambda: _lock_waiters(engine) == 1, 10, "the registration to wait")
    transaction.commit()
    registering.join(10)
    conn.close()
    # child's count of unfinished deps is 0, not what it was before dep completed.
    with engine.connect() as c:
        unmet = c.execute(select(items.c.unmet).where(items.c.key == "child")).scalar()
    assert unmet == 0
    engine.dispose()


def _lock_waiters(engine) -> int:
    with engine.connect() as c:
        return c.execute(
            text(
                "SELECT count(*) FROM pg_stat_activity "
                "WHERE wait_event_type = 'Lock' AND datname = current_database()"
            )
        ).scalar()


def test_pruning_keeps_a_worker_presumed_dead_that_may_come_back(db, store):
    # A suspended worker declared dead, with no history row left after pruning.
    worker = store.add_worker("frozen", "host", 1, (), 60.0, None)
    with store.engine.begin() as c:
        c.execute(update(workers).where(workers.c.id == worker).values(status="killed"))
    queue = WorkQueue(range(2), db=db, name="race")
    queue.prune_history(keep_latest=1)
    queue.dispose()
    # It comes back and claims: its row is still there to refer to.
    conn = store.connect()
    assert store.claim(conn, worker)[0].key == "0"
    conn.close()
