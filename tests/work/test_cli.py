"""`accord status` and `accord reset`, run as the installed command."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from work_helpers import wait_until

from accord.work import WorkQueue

ACCORD = Path(sys.executable).with_name("accord")


def accord(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(ACCORD), *args], capture_output=True, text=True, timeout=30)


def test_status_shows_counts_active_workers_and_failures(db, workers):
    failing = workers.start(db=db, name="embed", items=10, fail_on=["3"])
    failing.communicate(timeout=30)
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
