"""The schema's indexes, and the SQL the claim loop writes for a set of items."""

from __future__ import annotations

import sqlite3

import pytest
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy import inspect

from accord.work import WorkQueue
from accord.work._store import id_set

pytestmark = pytest.mark.timeout(120)

PARTIAL = {"accord_items_ready", "accord_items_running", "accord_items_failed"}


@given(st.lists(st.integers(0, 40), min_size=1, max_size=30))
def test_a_set_of_ids_is_matched_exactly_as_a_range_or_a_list(ids):
    db = sqlite3.connect(":memory:")
    db.execute("CREATE TABLE t (id INTEGER PRIMARY KEY)")
    db.executemany("INSERT INTO t VALUES (?)", [(i,) for i in range(-2, 43)])
    clause = id_set(ids)
    assert {row[0] for row in db.execute(f"SELECT id FROM t WHERE id {clause}")} == set(ids)
    # A run of consecutive ids, each once, is one range (one index seek).
    run = len(ids) == len(set(ids)) == max(ids) - min(ids) + 1
    assert clause.startswith("BETWEEN") == run
    db.close()


def test_a_database_made_with_the_old_claim_index_is_brought_up_to_date(db):
    queue = WorkQueue(range(3), db=db, name="q", progress=False)
    with queue._engine.begin() as conn:
        for name in PARTIAL:
            conn.exec_driver_sql(f"DROP INDEX {name}")
        conn.exec_driver_sql(
            "CREATE INDEX accord_items_claim ON accord_items (queue_id, status, unmet, position)"
        )
    queue.dispose()
    again = WorkQueue(range(4), db=db, name="q", progress=False)
    names = {index["name"] for index in inspect(again._engine).get_indexes("accord_items")}
    assert names >= PARTIAL
    assert "accord_items_claim" not in names
    assert list(again) == [0, 1, 2, 3]
    assert again.counts() == {"pending": 0, "running": 0, "completed": 4, "failed": 0}
    again.dispose()


def test_counts_add_up_in_every_status(db):
    queue = WorkQueue(range(6), db=db, name="q", progress=False, claim_batch=3)
    items = iter(queue)
    assert [next(items), next(items)] == [0, 1]  # 0, 1, 2 claimed
    items.close()  # as by break: 0 completed, 1 failed, 2 back to the queue
    other = iter(WorkQueue(range(6), db=db, name="q", progress=False, claim_batch=1))
    assert next(other) == 2
    assert queue.counts() == {"pending": 3, "running": 1, "completed": 1, "failed": 1}
    other.close()
    queue.dispose()
