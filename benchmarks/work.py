"""accord.work against laufband, in one run, on SQLite.

    make bench            # or: python benchmarks/work.py [--quick]

Throughput: 2,000 trivial items shared by 1, 2 and 4 worker processes
started independently (``python work.py _worker …``); each worker builds its
queue, waits until all are ready, then iterates; items/s is counted from
the common start to the last worker's end.  Scheduling overhead: one worker
runs a task graph of 100 / 1,000 / 5,000 trivial tasks (each depends on up
to two earlier ones); µs per task include building the graph.  Ratios are
laufband's time over accord's (>1: accord is faster).  Absolute numbers
depend on the machine; compare within one run.
"""

from __future__ import annotations

import argparse
import random
import subprocess
import sys
import tempfile
import time

from accord.work import Task, TaskGraph, WorkQueue

try:
    import laufband
    from flufl.lock import Lock
except ImportError:  # pip install -e ".[bench]"
    laufband = None


def _worker(impl: str, db: str, n: int, tmp: str) -> None:
    if impl == "accord":
        work = WorkQueue(range(n), db=db, name="bench", progress=False)
    else:
        work = laufband.Laufband(
            list(range(n)),
            db=db,
            lock=Lock(f"{tmp}/lock"),
            db_lock=Lock(f"{tmp}/db.lock"),
            tqdm_kwargs={"disable": True},
        )
    print("ready", flush=True)
    sys.stdin.readline()
    done = sum(1 for _ in work)
    print(done, time.time(), flush=True)


def throughput(impl: str, workers: int, n: int) -> float:
    """Items per second for ``workers`` processes sharing ``n`` items."""
    with tempfile.TemporaryDirectory() as tmp:
        db = f"sqlite:///{tmp}/run.sqlite"
        procs = [
            subprocess.Popen(
                [sys.executable, __file__, "_worker", impl, db, str(n), tmp],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
            )
            for _ in range(workers)
        ]
        for proc in procs:
            assert proc.stdout.readline() == "ready\n"
        start = time.time()
        for proc in procs:
            proc.stdin.write("go\n")
            proc.stdin.flush()
        results = [proc.stdout.readline().split() for proc in procs]
        for proc in procs:
            assert proc.wait(timeout=600) == 0
    done = sum(int(count) for count, _ in results)
    assert done == n, f"{impl}: {done} items done of {n}"
    return n / (max(float(end) for _, end in results) - start)


def graph(n: int, seed: int = 7) -> list[tuple[str, list[str]]]:
    rng = random.Random(seed)
    return [(f"t{i}", sorted({f"t{rng.randrange(i)}" for _ in range(min(i, 2))})) for i in range(n)]


def overhead(impl: str, n: int) -> float:
    """µs of scheduling per task, for one worker running a graph of ``n`` tasks."""
    shape = graph(n)
    with tempfile.TemporaryDirectory() as tmp:
        db = f"sqlite:///{tmp}/run.sqlite"
        start = time.perf_counter()
        if impl == "accord":
            tasks = [Task(name, deps=deps) for name, deps in shape]
            done = sum(1 for _ in TaskGraph(tasks, db=db, name="bench", progress=False))
        else:
            tasks = [laufband.Task(id=name, dependencies=set(deps)) for name, deps in shape]
            with laufband.Graphband(
                tasks,
                db=db,
                lock=Lock(f"{tmp}/lock"),
                db_lock=Lock(f"{tmp}/db.lock"),
                tqdm_kwargs={"disable": True},
            ) as band:  # stops its heartbeat thread at the end
                done = sum(1 for _ in band)
        elapsed = time.perf_counter() - start
    assert done == n, f"{impl}: {done} tasks done of {n}"
    return elapsed / n * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer items and tasks")
    args = parser.parse_args()
    items = 400 if args.quick else 2000
    sizes = (100, 300) if args.quick else (100, 1000, 5000)
    impls = ["accord"] + (["laufband"] if laufband else [])
    if not laufband:
        print("(laufband not installed: pip install -e '.[bench]')")

    print(f"\nthroughput, {items} trivial items, SQLite: items/s (higher is better)")
    print(f"{'workers':>8} {'accord':>10} {'laufband':>10} {'ratio':>7}")
    for workers in (1, 2, 4):
        rates = {impl: throughput(impl, workers, items) for impl in impls}
        ratio = rates["accord"] / rates["laufband"] if laufband else float("nan")
        other = rates.get("laufband", 0)
        print(f"{workers:>8} {rates['accord']:>10.0f} {other:>10.0f} {ratio:>6.1f}x")

    print("\nscheduling overhead, one worker, trivial tasks: µs per task (lower is better)")
    print(f"{'tasks':>8} {'accord':>10} {'laufband':>10} {'ratio':>7}")
    for n in sizes:
        costs = {impl: overhead(impl, n) for impl in impls}
        ratio = costs["laufband"] / costs["accord"] if laufband else float("nan")
        print(f"{n:>8} {costs['accord']:>10.0f} {costs.get('laufband', 0):>10.0f} {ratio:>6.1f}x")


if __name__ == "__main__":
    if sys.argv[1:2] == ["_worker"]:
        _worker(sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5])
    else:
        main()
