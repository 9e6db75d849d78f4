"""Big objects: accord against the alternatives, in one run, on this machine.

    make bench            # or: python benchmarks/bigdata.py [--quick] [--mb 100]

Rows (each implementation side by side, ratios to accord):

1. an unchanged read of a 100 MB float64 array by another process;
2. a one-element write, then a read by another process that sees it (median);
3. the same with a one-cell write to a 100 MB DataFrame (`df.loc[i, c] = v`);
4. memory for that array read by 4 worker processes: the sum of PSS from
   /proc/PID/smaps_rollup over owner, server/coordinator and workers (each
   owner hands its array over and drops its own, as a user short of memory
   would; joblib's parent must keep it: it is the argument);
5. 20 append-then-read cycles (the read in another process) on a 200k-item
   list and a 200k-key dict, against the same on an empty one.

Alternatives: multiprocessing.Manager (a Namespace holding the array, a
managed list/dict), multiprocessing.shared_memory + np.ndarray (the floor:
no safety, no consistency), joblib's memmapping of large arguments
(joblib.Parallel(max_nbytes=...)) and Ray's object store when installed.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import multiprocessing
import multiprocessing.shared_memory
import os
import statistics
import time

import numpy as np

from accord import Share

CTX = multiprocessing.get_context("spawn")


def _optional(name: str):
    # Imported in the measuring process only: spawned workers import this
    # module, and Ray alone would add ~25 MB to each of them.
    try:
        return __import__(name)
    except ImportError:
        return None


def settle() -> None:
    """Free what this (measuring) process no longer uses before its memory
    counts: the big pickles an earlier row moved through its heap would
    otherwise stay there and count against the rows after it."""
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)


def pss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            if line.startswith("Pss:"):
                return int(line.split()[1])
    return 0


def zero_copy_get(share, name):
    """share.get(name, copy=False) where accord has it (a read-only view)."""
    try:
        return share.get(name, copy=False)
    except TypeError:  # an accord without zero-copy reads
        return share.get(name)


# -- workers (module level: spawn imports them) -------------------------------


def accord_worker(share, conn):
    while True:
        cmd, arg = conn.recv()
        if cmd == "stop":
            return
        if cmd == "ping":
            conn.send(None)
        if cmd == "read_time":  # n unchanged reads: seconds per read
            zero_copy_get(share, "arr")  # warm
            start = time.perf_counter()
            for _ in range(arg):
                zero_copy_get(share, "arr")
            conn.send((time.perf_counter() - start) / arg)
        elif cmd == "item":
            conn.send(float(zero_copy_get(share, "arr")[arg]))
        elif cmd == "cell":
            conn.send(float(zero_copy_get(share, "df")["c"].iloc[arg]))
        elif cmd == "sum":
            conn.send(float(zero_copy_get(share, "arr").sum()))
        elif cmd == "last":
            conn.send(share.lst[-1] if len(share.lst) else None)
        elif cmd == "key":
            conn.send(share.d[arg])
        elif cmd == "len":
            conn.send(len(share.lst) if arg == "list" else len(share.d))


def manager_worker(ns, conn):
    while True:
        cmd, arg = conn.recv()
        if cmd == "stop":
            return
        if cmd == "ping":
            conn.send(None)
        if cmd == "read_time":
            start = time.perf_counter()
            for _ in range(arg):
                a = ns.arr
            conn.send((time.perf_counter() - start) / arg)
        elif cmd == "item":
            conn.send(float(ns.arr[arg]))
        elif cmd == "cell":
            conn.send(float(ns.df["c"].iloc[arg]))
        elif cmd == "sum":
            a = ns.arr  # each reader holds its own copy, as a user's code would
            conn.send(float(a.sum()))
        elif cmd == "last":
            lst = ns.lst
            conn.send(lst[-1] if len(lst) else None)
        elif cmd == "key":
            conn.send(ns.d[arg])


def shm_worker(name, shape, conn):
    seg = multiprocessing.shared_memory.SharedMemory(name)
    try:
        while True:
            cmd, arg = conn.recv()
            if cmd == "stop":
                return
            if cmd == "read_time":
                start = time.perf_counter()
                for _ in range(arg):
                    a = np.ndarray(shape, dtype=np.float64, buffer=seg.buf)
                conn.send((time.perf_counter() - start) / arg)
            elif cmd == "item":
                conn.send(float(np.ndarray(shape, dtype=np.float64, buffer=seg.buf)[arg]))
            elif cmd == "sum":
                a = np.ndarray(shape, dtype=np.float64, buffer=seg.buf)
                conn.send(float(a.sum()))
                del a
    finally:
        seg.close()


class Worker:
    def __init__(self, target, *args):
        self.conn, theirs = CTX.Pipe()
        self.process = CTX.Process(target=target, args=(*args, theirs), daemon=True)
        self.process.start()
        theirs.close()

    def ask(self, cmd, arg=None):
        self.conn.send((cmd, arg))
        return self.conn.recv()

    def stop(self):
        with contextlib.suppress(OSError):
            self.conn.send(("stop", None))
        self.process.join(10)
        if self.process.is_alive():
            self.process.kill()
            self.process.join()


# -- the rows -------------------------------------------------------------------


def row(label, results: dict, unit: str, fmt="{:.3g}") -> None:
    base = results.get("accord")
    parts = []
    for impl, value in results.items():
        if isinstance(value, str):
            parts.append(f"{impl}: {value}")
            continue
        ratio = f" ({value / base:.2g}x)" if base and impl != "accord" else ""
        parts.append(f"{impl}: {fmt.format(value)} {unit}{ratio}")
    print(f"{label}\n    " + "\n    ".join(parts), flush=True)


def _frame(n: int):
    import pandas as pd

    return pd.DataFrame({c: np.zeros(n // 4) for c in "abcd"})


def array_rows(mb: int, reps: int) -> None:
    n = mb * 1024 * 1024 // 8
    # pandas (the DataFrame row) adds ~30 MB to this process: imported
    # before any memory row, so that it counts in each of them alike.
    _optional("pandas")

    def make():
        return np.arange(n, dtype=np.float64)

    read, write, frame, memory, idle_workers = {}, {}, {}, {}, {}
    after_writes = 0.0

    # accord ---------------------------------------------------------------
    with Share() as share:
        workers = [Worker(accord_worker, share) for _ in range(4)]
        idle = sum(w.ask("ping") or pss_kb(w.process.pid) for w in workers)
        share.arr = make()  # handed over: the owner keeps no copy of its own
        share.flush()
        try:
            for w in workers:
                w.ask("sum")
            settle()
            pids = [os.getpid(), share._link.info.pid, *(w.process.pid for w in workers)]
            memory["accord"] = sum(pss_kb(p) for p in pids) / 1024
            idle_workers["accord"] = idle / 1024
            read["accord"] = workers[0].ask("read_time", 1000) * 1e6
            times = []
            for i in range(reps):
                started = time.perf_counter()
                share.arr[i] = -1.0
                assert workers[0].ask("item", i) == -1.0
                times.append(time.perf_counter() - started)
            write["accord"] = statistics.median(times) * 1e3
            for w in workers:
                w.ask("sum")
            settle()
            after_writes = sum(pss_kb(p) for p in pids) / 1024
            del share.arr
            share.df = _frame(n)
            share.flush()
            workers[0].ask("cell", 0)
            times = []
            for i in range(reps):
                started = time.perf_counter()
                share.df.loc[i, "c"] = -1.0
                assert workers[0].ask("cell", i) == -1.0
                times.append(time.perf_counter() - started)
            frame["accord"] = statistics.median(times) * 1e3
        finally:
            for w in workers:
                w.stop()

    # multiprocessing.shared_memory + np.ndarray (no safety at all) ----------
    seg = multiprocessing.shared_memory.SharedMemory(create=True, size=n * 8)
    try:
        arr = np.ndarray((n,), dtype=np.float64, buffer=seg.buf)
        arr[:] = make()
        workers = [Worker(shm_worker, seg.name, (n,)) for _ in range(4)]
        try:
            read["shared_memory"] = workers[0].ask("read_time", 1000) * 1e6
            times = []
            for i in range(reps):
                started = time.perf_counter()
                arr[i] = -1.0
                assert workers[0].ask("item", i) == -1.0
                times.append(time.perf_counter() - started)
            write["shared_memory"] = statistics.median(times) * 1e3
            frame["shared_memory"] = "n/a (one array, no frame)"
            for w in workers:
                w.ask("sum")
            pids = [os.getpid(), *(w.process.pid for w in workers)]
            settle()
            memory["shared_memory"] = sum(pss_kb(p) for p in pids) / 1024
        finally:
            for w in workers:
                w.stop()
            del arr
    finally:
        seg.close()
        seg.unlink()

    # joblib: large arguments memmapped into its workers ----------------------
    joblib = _optional("joblib")
    if joblib is None:
        read["joblib"] = "not installed (pip install joblib)"
    else:
        src = make()  # the argument of every task: the parent keeps it
        with (
            joblib.parallel_config(backend="loky", n_jobs=4, max_nbytes="1M"),
            joblib.Parallel() as parallel,
        ):
            parallel(joblib.delayed(_joblib_sum)(src) for _ in range(4))  # warm
            started = time.perf_counter()
            parallel(joblib.delayed(_joblib_item)(src, 0) for _ in range(4))
            # A task is the unit: the per-task cost (dispatch + mapping
            # the memmap) stands in for a read.
            read["joblib"] = (time.perf_counter() - started) / 4 * 1e6
            settle()
            pss = parallel(joblib.delayed(_joblib_pss)(src) for _ in range(4))
            memory["joblib"] = (sum(pss) + pss_kb(os.getpid())) / 1024
        write["joblib"] = "n/a (workers get read-only memmaps; results return by value)"
        del src

    ray = _optional("ray")
    if ray is None:
        read["Ray"] = "not installed here (pip install ray); skipped"
    else:
        _ray_rows(ray, make(), read, write, memory)

    # multiprocessing.Manager: a Namespace attribute ------------------------
    # (Measured last: the 100 MB pickles it moves through this process stay
    # in its heap and would count against the memory of those after it.)
    with multiprocessing.Manager() as manager:
        ns = manager.Namespace()
        workers = [Worker(manager_worker, ns) for _ in range(4)]
        idle = sum(w.ask("ping") or pss_kb(w.process.pid) for w in workers)
        ns.arr = make()
        try:
            for w in workers:
                w.ask("sum")
            settle()
            pids = [os.getpid(), manager._process.pid, *(w.process.pid for w in workers)]
            memory["Manager"] = sum(pss_kb(p) for p in pids) / 1024
            idle_workers["Manager"] = idle / 1024
            read["Manager"] = workers[0].ask("read_time", 3) * 1e6
            times = []
            for i in range(min(reps, 5)):
                started = time.perf_counter()
                a = ns.arr  # the only way to write one element: the whole array
                a[i] = -1.0
                ns.arr = a
                del a
                assert workers[0].ask("item", i) == -1.0
                times.append(time.perf_counter() - started)
            write["Manager"] = statistics.median(times) * 1e3
            ns.arr = None
            ns.df = _frame(n)
            times = []
            for i in range(min(reps, 3)):
                started = time.perf_counter()
                df = ns.df  # likewise: the whole frame, both ways
                df.loc[i, "c"] = -1.0
                ns.df = df
                del df
                assert workers[0].ask("cell", i) == -1.0
                times.append(time.perf_counter() - started)
            frame["Manager"] = statistics.median(times) * 1e3
        finally:
            for w in workers:
                w.stop()

    order = ("accord", "Manager", "shared_memory", "joblib", "Ray")
    read, write, frame, memory = (
        {k: d[k] for k in order if k in d} for d in (read, write, frame, memory)
    )
    row(f"unchanged read of a {mb} MB array by another process", read, "us")
    row(f"one-element write, then a read in another process (median of {reps})", write, "ms")
    row(
        f"one-cell write to a {mb} MB DataFrame (df.loc[i, c] = v), then a read in another "
        f"process (median of {reps}; Manager: of 3)",
        frame,
        "ms",
    )
    row(f"memory, {mb} MB array read by 4 workers (sum of PSS)", memory, "MB", "{:.0f}")
    print(
        f"    accord after the {reps} writes (readers holding older versions, so the "
        f"coordinator keeps spare copies): {after_writes:.0f} MB",
        flush=True,
    )
    for impl, idle in idle_workers.items():
        print(
            f"    {impl}: {memory[impl] / mb:.2f}x the array in all; "
            f"{(memory[impl] - idle) / mb:.2f}x without the 4 idle workers' own {idle:.0f} MB",
            flush=True,
        )


def _joblib_sum(a):
    return float(a.sum())


def _joblib_item(a, i):
    return float(a[i])


def _joblib_pss(a):
    a.sum()
    return pss_kb(os.getpid())


def _ray_rows(ray, src, read, write, memory) -> None:
    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False)
    try:
        ref = ray.put(src)
        del src  # the object store holds it

        @ray.remote
        def reader(ref_list, n):
            start = time.perf_counter()
            for _ in range(n):
                a = ray.get(ref_list[0])
            return (time.perf_counter() - start) / n, float(a.sum()), pss_kb(os.getpid())

        seconds, _, _ = ray.get(reader.remote([ref], 100))
        read["Ray"] = seconds * 1e6
        settle()
        results = ray.get([reader.remote([ref], 1) for _ in range(4)])
        memory["Ray"] = (sum(r[2] for r in results) + pss_kb(os.getpid())) / 1024
        write["Ray"] = "n/a (objects are immutable: a write is a new 100 MB put)"
    finally:
        ray.shutdown()


def container_rows(size: int, cycles: int) -> None:
    results = {}
    for kind in ("list", "dict"):
        cost = {}
        for n in (0, size):
            with Share() as share:
                if kind == "list":
                    share.lst = list(range(n))
                else:
                    share.d = {f"k{i}": i for i in range(n)}
                share.flush()
                worker = Worker(accord_worker, share)
                try:
                    # Both sides connected and holding the current version:
                    # a first read is a full one by definition (O(n) once).
                    worker.ask("len", kind)
                    len(share.lst) if kind == "list" else len(share.d)
                    best = float("inf")
                    for rep in range(3):  # best of 3: the machine is shared
                        started = time.perf_counter()
                        for i in range(cycles):
                            if kind == "list":
                                share.lst.append(-i)
                                assert worker.ask("last") == -i
                            else:
                                share.d[f"new{rep}.{i}"] = i
                                assert worker.ask("key", f"new{rep}.{i}") == i
                        best = min(best, time.perf_counter() - started)
                    cost[n] = best
                finally:
                    worker.stop()
        results[kind] = cost
        # multiprocessing.Manager, for scale: its reads never copy the container.
        with multiprocessing.Manager() as manager:
            mcost = {}
            for n in (0, size):
                container = manager.list(range(n)) if kind == "list" else manager.dict()
                if kind == "dict" and n:
                    container.update({f"k{i}": i for i in range(n)})
                started = time.perf_counter()
                for i in range(cycles):
                    if kind == "list":
                        container.append(-i)
                        assert container[-1] == -i
                    else:
                        container[f"new{i}"] = i
                        assert container[f"new{i}"] == i
                mcost[n] = time.perf_counter() - started
        accord_ratio = cost[size] / cost[0]
        print(
            f"{cycles} append-then-read cycles on a {size // 1000}k-item {kind} vs an empty one"
            " (best of 3)\n"
            f"    accord: {cost[size] * 1e3:.1f} ms vs {cost[0] * 1e3:.1f} ms "
            f"= {accord_ratio:.2f}x\n"
            f"    Manager ({kind} proxy, reads in the owner): {mcost[size] * 1e3:.1f} ms vs "
            f"{mcost[0] * 1e3:.1f} ms = {mcost[size] / mcost[0]:.2f}x",
            flush=True,
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="10 MB array, 20k items")
    parser.add_argument("--mb", type=int, default=100)
    parser.add_argument("--only", choices=["arrays", "containers"])
    args = parser.parse_args()
    mb = 10 if args.quick else args.mb
    size = 20_000 if args.quick else 200_000
    print(f"accord big-object benchmark (cpus: {os.cpu_count()})", flush=True)
    if args.only != "containers":
        array_rows(mb, 20)
    if args.only != "arrays":
        container_rows(size, 20)


if __name__ == "__main__":
    main()
