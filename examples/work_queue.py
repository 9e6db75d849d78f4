"""Independent processes share one list of work; each item is done once.

    python examples/work_queue.py

The first process starts three plain ``python this_file.py work DB``
processes — as three terminals, three machines or a SLURM array job would.
Each iterates over the same `WorkQueue` in a SQLite file and appends its
results to one file under ``queue.lock``.  Then a `TaskGraph` runs a small
pipeline in dependency order, and ``accord status`` tells where both stand.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

from accord.work import Task, TaskGraph, WorkQueue

WORDS = [f"word{i}" for i in range(30)]


def work(db: str, out: str) -> None:
    queue = WorkQueue(WORDS, db=db, name="shout", key=str, progress=False)
    for word in queue:
        result = word.upper()  # the real work would be here
        # One writer at a time, across every process:
        with queue.lock, open(out, "a") as f:
            f.write(f"{result}\n")


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        db, out = f"sqlite:///{tmp}/run.sqlite", f"{tmp}/results.txt"
        procs = [subprocess.Popen([sys.executable, __file__, "work", db, out]) for _ in range(3)]
        for proc in procs:
            assert proc.wait(timeout=60) == 0
        lines = Path(out).read_text().splitlines()
        assert sorted(lines) == sorted(w.upper() for w in WORDS), "an item was lost or done twice"
        print(f"{len(lines)} items done once by 3 independent processes")

        pipeline = [Task("fetch"), Task("clean", deps=["fetch"]), Task("train", deps=["clean"])]
        order = [task.name for task in TaskGraph(pipeline, db=db, name="ml", progress=False)]
        print("pipeline ran in order:", " -> ".join(order))

        accord = Path(sys.executable).with_name("accord")
        subprocess.run([str(accord), "status", db], check=True)


if __name__ == "__main__":
    if sys.argv[1:2] == ["work"]:
        work(sys.argv[2], sys.argv[3])
    else:
        main()
