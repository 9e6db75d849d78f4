"""A worker process for the tests: ``python worker.py '<json config>'``.

It prints ``start KEY`` when it gets an item and ``done KEY`` when the loop
body finishes.  Config: db, name, items (a count) or graph ([name, deps]
pairs), options (keyword arguments), fingerprints, labels, hang_on (keys to
block on until killed), fail_on (keys to raise on), counter (a file to
increment under queue.lock), barrier ([directory, n]: wait until n workers
are ready before iterating), work_s (seconds each item takes).
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from pathlib import Path

from accord.work import Task, TaskGraph, WorkQueue


def main() -> None:
    config = json.loads(sys.argv[1])
    options = {"progress": False, **config.get("options", {})}
    if "graph" in config:
        fingerprints = config.get("fingerprints", {})
        tasks = [
            Task(name, deps=deps, fingerprint=fingerprints.get(name))
            for name, deps in config["graph"]
        ]
        work = TaskGraph(tasks, db=config["db"], name=config["name"], **options)
    else:
        work = WorkQueue(range(config["items"]), db=config["db"], name=config["name"], **options)
    if "barrier" in config:
        where, n = Path(config["barrier"][0]), config["barrier"][1]
        (where / str(os.getpid())).touch()
        # Generous: 32 workers importing at once on a loaded machine take long.
        deadline = time.monotonic() + 150
        while len(list(where.iterdir())) < n:
            if time.monotonic() > deadline:
                sys.exit(f"barrier: {len(list(where.iterdir()))} of {n} workers ready after 150 s")
            time.sleep(0.01)
    for item in work:
        key = item.name if isinstance(item, Task) else str(item)
        print("start", key, flush=True)
        if key in config.get("hang_on", ()):
            threading.Event().wait()  # until the test kills this process
        if key in config.get("fail_on", ()):
            raise ValueError(f"boom on {key}")
        time.sleep(config.get("work_s", 0))
        if "counter" in config:
            with work.lock:
                counter = Path(config["counter"])
                counter.write_text(str(int(counter.read_text() or "0") + 1))
        print("done", key, flush=True)


if __name__ == "__main__":
    main()
