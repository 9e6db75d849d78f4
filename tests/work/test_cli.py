"""`accord status` and `accord reset`, run as the installed command."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from work_helpers import wait_until

from accord.work import Task, TaskGraph, WorkQueue
from accord.work._db import open_engine
from accord.work._status import report

ACCORD = Path(sys.executable).with_name("accord")

# Each test starts processes (workers, the accord command): seconds each on a
# loaded 2-core machine.
pytestmark = pytest.mark.timeout(180)


def accord(*args: str, input: str = "") -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(ACCORD), *args], input=input, capture_output=True, text=True, timeout=90
    )


def test_status_shows_counts_active_workers_and_failures(db, workers):
    failing = workers.start(db=db, name="embed", items=10, fail_on=["3"])
    failing.communicate(timeout=90)
    assert failing.returncode == 1
    hanging = workers.start(
        db=db, name="embed", items=10, hang_on=["4"], options={"worker": "w-hang"}
    )
    wait_until(lambda: hanging.stdout.readline().startswith("start 4"), what="item 4 to start")
    result = accord("status", db)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "embed (queue, 10 items): pending 5, running 1, completed 3, failed 1"
    assert "active workers: 1" in lines[1]
    assert "w-hang" in lines[2] and "running '4'" in lines[2]
    assert lines[3] == "  failures: 1"
    assert "'3'" in lines[4] and "ValueError: boom on 3" in lines[4]


def test_reset_failed_requeues_failed_items(sqlite_db):
    queue = WorkQueue(range(3), db=sqlite_db, name="q", progress=False)
    for item in queue:
        if item == 1:
            break
    result = accord("reset", sqlite_db, "--failed")
    assert result.returncode == 0, result.stderr
    assert result.stdout == "q: 1 failed items re-queued\n"
    assert list(queue) == [1, 2]
    assert [h.status for h in queue.history(1)] == [
        "running",
        "failed",
        "reset",
        "running",
        "completed",
    ]


def test_clear_errors(tmp_path, sqlite_db):
    missing = accord("status", f"sqlite:///{tmp_path}/nothing.sqlite")
    assert missing.returncode == 1 and "does not exist" in missing.stderr
    WorkQueue([1], db=sqlite_db, name="q", progress=False)
    unknown = accord("status", sqlite_db, "--name", "other")
    assert unknown.returncode == 1 and "no work queue named 'other'" in unknown.stderr
    assert accord("reset", sqlite_db).returncode == 2  # which items? a usage error


def test_reset_all_requeues_every_item_after_confirmation(db):
    tasks = [Task("a"), Task("b", deps=["a"])]
    assert [t.name for t in TaskGraph(tasks, db=db, name="g", progress=False)] == ["a", "b"]
    queue = WorkQueue(range(3), db=db, name="q", progress=False)
    with pytest.raises(ValueError):
        for item in queue:
            if item == 2:
                raise ValueError("boom")
    refused = accord("reset", db, "--all", input="n\n")
    assert refused.returncode == 1 and "Aborted" in refused.stderr
    assert queue.counts() == {"pending": 0, "running": 0, "completed": 2, "failed": 1}
    result = accord("reset", db, "--all", "--yes")
    assert result.returncode == 0, result.stderr
    assert result.stdout == "g: 2 items re-queued\nq: 3 items re-queued\n"
    assert list(queue) == [0, 1, 2]
    # The graph's order holds again: b waits for a, which is to be done again.
    graph = TaskGraph(tasks, db=db, name="g", progress=False)
    assert [t.name for t in graph] == ["a", "b"]
    assert [h.status for h in graph.history("b")] == ["running", "completed", "reset"] + [
        "running",
        "completed",
    ]
    assert accord("reset", db, "--failed", "--all").returncode == 2
    queue.dispose()
    graph.dispose()


def test_drop_deletes_a_queue_and_its_history(db, workers):
    list(WorkQueue(range(3), db=db, name="q", progress=False))
    other = WorkQueue(range(2), db=db, name="other", progress=False)
    list(other)
    assert accord("drop", db, "--name", "q", input="n\n").returncode == 1
    result = accord("drop", db, "--name", "q", "--yes")
    assert result.returncode == 0, result.stderr
    assert result.stdout == "q: dropped (3 items)\n"
    assert "no work queue named 'q'" in accord("status", db, "--name", "q").stderr
    # Nothing else touched; a new queue of that name starts afresh.
    assert other.counts()["completed"] == 2 and len(other.history()) == 4
    fresh = WorkQueue(range(3), db=db, name="q", progress=False)
    assert fresh.counts()["pending"] == 3 and fresh.history() == []
    # Not while a worker of it is alive.
    hanging = workers.start(db=db, name="q", items=3, hang_on=["0"])
    wait_until(lambda: hanging.stdout.readline().startswith("start 0"), what="item 0 to start")
    busy = accord("drop", db, "--name", "q", "--yes")
    assert busy.returncode == 1 and "1 active workers" in busy.stderr
    other.dispose()
    fresh.dispose()


def _snapshot(directory: Path) -> dict[str, tuple[int, int, bytes]]:
    return {
        p.name: (p.stat().st_mtime_ns, p.stat().st_mode, p.read_bytes())
        for p in sorted(directory.iterdir())
    }


def test_status_reads_a_read_only_copy_without_writing(tmp_path, sqlite_db):
    queue = WorkQueue(range(4), db=sqlite_db, name="q", progress=False)
    for item in queue:
        if item == 1:
            queue.close()
    queue.dispose()
    copy = tmp_path / "copy"
    copy.mkdir()
    shutil.copy(tmp_path / "run.sqlite", copy / "run.sqlite")
    (copy / "run.sqlite").chmod(0o444)
    copy.chmod(0o555)
    before = _snapshot(copy)
    url = f"sqlite:///{copy}/run.sqlite"
    try:
        # The tests run as root, whom permissions do not stop: that nothing
        # changed in the directory, even while the connection is open (SQLite
        # would have made its -wal and -shm files by then, and removes them
        # when the last connection closes), shows no write was attempted.
        engine = open_engine(url, read_only=True)
        try:
            text = report(engine)
            during = _snapshot(copy)
        finally:
            engine.dispose()
        result = accord("status", url)
        after = _snapshot(copy)
    finally:
        copy.chmod(0o755)
    assert result.returncode == 0, result.stderr
    assert result.stdout == text + "\n"
    assert text.startswith("q (queue, 4 items): pending 2, running 0, completed 2")
    assert during == before and after == before


def test_status_takes_no_write_lock_on_a_live_database(sqlite_db, tmp_path):
    import sqlite3

    queue = WorkQueue(range(2), db=sqlite_db, name="q", progress=False)
    writer = sqlite3.connect(tmp_path / "run.sqlite", isolation_level=None)
    writer.execute("BEGIN IMMEDIATE")  # a worker in the middle of a claim
    try:
        result = accord("status", sqlite_db)
    finally:
        writer.execute("ROLLBACK")
        writer.close()
    assert result.returncode == 0, result.stderr
    assert "pending 2" in result.stdout
    queue.dispose()


def test_status_refuses_to_write_on_postgres(postgres_db):
    from sqlalchemy import text

    WorkQueue([1], db=postgres_db, name="q", progress=False).dispose()
    engine = open_engine(postgres_db, read_only=True)
    with pytest.raises(Exception, match="read-only transaction"), engine.begin() as conn:
        conn.execute(text("DELETE FROM accord_items"))
    engine.dispose()
