"""SQLite's WAL is copied back into the database file after a commit, not inside it."""

from __future__ import annotations

import fcntl
import os
import sqlite3

import pytest

from accord.work import WorkQueue, _db

pytestmark = pytest.mark.timeout(120)


def _gate_free(path: str) -> bool:
    fd = os.open(f"{path}-accord-gate", os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False
    finally:
        os.close(fd)


def _write_lock_free(path: str) -> bool:
    other = sqlite3.connect(path, timeout=0, isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")
        other.execute("ROLLBACK")
        return True
    except sqlite3.OperationalError as exc:
        assert "locked" in str(exc), exc
        return False
    finally:
        other.close()


def test_a_worker_checkpoints_after_its_commit_with_the_write_lock_let_go(sqlite_db, monkeypatch):
    path = sqlite_db.removeprefix("sqlite:///")
    # A small threshold: a run of 300 items crosses it several times.
    monkeypatch.setattr(_db, "CHECKPOINT_ROWS", 200)
    seen = []
    checkpoint = _db._GatedConnection.checkpoint

    def watched(self):
        # What every other worker could do at that moment: write.
        seen.append((_gate_free(path), _write_lock_free(path)))
        checkpoint(self)

    monkeypatch.setattr(_db._GatedConnection, "checkpoint", watched)
    queue = WorkQueue(range(300), db=sqlite_db, name="q", progress=False)
    try:
        assert sum(1 for _ in queue) == 300
        assert len(seen) >= 2, seen
        assert all(gate and lock for gate, lock in seen), seen
        # SQLite's own checkpoint (inside a commit) only bounds the WAL.
        with queue._engine.connect() as conn:
            pages = conn.exec_driver_sql("PRAGMA wal_autocheckpoint").scalar_one()
        assert pages == _db.AUTOCHECKPOINT_PAGES
    finally:
        queue.dispose()


def test_the_database_file_itself_holds_what_was_checkpointed(sqlite_db, monkeypatch):
    path = sqlite_db.removeprefix("sqlite:///")
    monkeypatch.setattr(_db, "CHECKPOINT_ROWS", 200)
    queue = WorkQueue(range(300), db=sqlite_db, name="q", progress=False)
    try:
        assert sum(1 for _ in queue) == 300
        # Still open (the WAL is not removed at close yet): read the main
        # file alone, as if the WAL were lost.  SQLite's own checkpoint
        # (thousands of pages) would not have come in a run this short.
        alone = sqlite3.connect(f"file:{path}?immutable=1", uri=True)
        try:
            done = alone.execute(
                "SELECT count(*) FROM accord_items WHERE status = 'completed'"
            ).fetchone()[0]
        finally:
            alone.close()
        # The last transactions (the last batch's outcomes, the worker's
        # end) may be after the last checkpoint.
        assert done >= 200
    finally:
        queue.dispose()
