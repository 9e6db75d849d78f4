"""accord against the alternatives, in one run, on this machine.

    make bench            # or: python benchmarks/run.py [--quick]

Each row times one operation per implementation and prints microseconds per
operation and the ratio to accord (>1: accord is that many times faster).
Counters also print whether the final value was exact.  Absolute numbers
depend on the machine; compare ratios from the same run.
"""

from __future__ import annotations

import argparse
import multiprocessing
import multiprocessing.managers
import sys
import time
import warnings

from accord import Share

warnings.filterwarnings("ignore")  # suitkaise's resource-tracker chatter

try:
    from suitkaise.processing import Share as SkShare
except ImportError:  # pip install -e ".[bench]"
    SkShare = None

CTX = multiprocessing.get_context("fork")  # suitkaise's Share cannot be pickled for spawn


class Stack:
    def __init__(self):
        self.items = []

    def push(self, x):
        self.items.append(x)
        return len(self.items)


class Point:
    def __init__(self, x, y):
        self.x = x
        self.y = y


class StackManager(multiprocessing.managers.BaseManager):
    pass


StackManager.register("Stack", Stack)


def per_op(fn, n: int) -> float:
    """Microseconds per call of fn() over n calls, after a warm-up (first
    calls import modules, analyse methods, fill caches — for every
    implementation alike)."""
    for _ in range(min(50, n)):
        fn()
    start = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - start) / n * 1e6


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


class Table:
    def __init__(self, title: str):
        self.title = title
        self.rows: list[tuple[str, float | None, str]] = []

    def add(self, name: str, us: float | None, note: str = "") -> None:
        self.rows.append((name, us, note))

    def print(self) -> None:
        base = self.rows[0][1]
        print(f"\n### {self.title}\n")
        print("| implementation | µs/op | accord is x faster | note |")
        print("|---|---:|---:|---|")
        for name, us, note in self.rows:
            if us is None:
                print(f"| {name} | n/a |  | {note} |")
                continue
            print(f"| {name} | {us:.2f} | {us / base:.1f}x | {note} |")
        sys.stdout.flush()


def bench_read(n: int) -> None:
    table = Table("Read of an unchanged object")
    with Share() as share:
        share.x = 42
        share.d = {f"k{i}": i for i in range(50)}
        share.lst = list(range(50))
        share.obj = Point(3, 4)
        share.flush()
        share.x  # noqa: B018  (warm the snapshot cache)
        table.add("accord `share.x`", per_op(lambda: share.x, n))
        table.add("accord `share.d['k7']`", per_op(lambda: share.d["k7"], n))
        proxy = share.d
        table.add("accord `proxy['k7']` (proxy = share.d)", per_op(lambda: proxy["k7"], n))
        table.add("accord `share.lst[3]`", per_op(lambda: share.lst[3], n))
        table.add("accord `share.obj.x`", per_op(lambda: share.obj.x, n))
    with multiprocessing.Manager() as manager:
        md = manager.dict({"x": 42})
        table.add("Manager dict get", per_op(lambda: md["x"], n // 20))
        ns = manager.Namespace(x=42)
        table.add("Manager Namespace attribute", per_op(lambda: ns.x, n // 20))
    value = CTX.Value("i", 42)
    # `.value` takes the Value's own lock: the reference of issue 13's read target.
    table.add("multiprocessing.Value `.value`", per_op(lambda: value.value, n))

    def value_read():
        with value.get_lock():
            return value.value

    table.add("multiprocessing.Value + lock", per_op(value_read, n))
    if SkShare is not None:
        sk = SkShare()
        sk.x = 42
        table.add("suitkaise Share `sk.x`", per_op(lambda: sk.x, n // 20))
        sk.exit()
    else:
        table.add("suitkaise Share", None, "not installed")
    table.print()


def bench_append(n: int) -> None:
    table = Table("Fire-and-forget append (including the final flush)")
    with Share() as share:
        share.lst = []
        share.flush()

        def accord_appends():
            lst = share.lst
            for i in range(n):
                lst.append(i)
            share.flush()

        def accord_appends_chained():
            for i in range(n):
                share.lst.append(i)
            share.flush()

        table.add("accord `proxy.append(i)`", timed(accord_appends) / n * 1e6)
        table.add("accord `share.lst.append(i)`", timed(accord_appends_chained) / n * 1e6)
    with multiprocessing.Manager() as manager:
        ml = manager.list()
        table.add("Manager list append", per_op(lambda: ml.append(1), n // 10))
    if SkShare is not None:
        sk = SkShare()
        sk.lst = []
        table.add("suitkaise Share append", per_op(lambda: sk.lst.append(1), max(50, n // 200)))
        sk.exit()
    table.print()


def bench_call(n: int) -> None:
    table = Table("Blocking method call that returns a value (user class)")
    with Share() as share:
        share.stack = Stack()
        table.add("accord `share.stack.push(i)`", per_op(lambda: share.stack.push(1), n))
    with StackManager() as manager:
        stack = manager.Stack()
        table.add("BaseManager proxy `.push(i)`", per_op(lambda: stack.push(1), n))
    if SkShare is not None:
        sk = SkShare()
        sk.stack = Stack()
        table.add("suitkaise Share `.push(i)`", per_op(lambda: sk.stack.push(1), max(50, n // 10)))
        sk.exit()
    table.print()


def _accord_incr(share, n, go):
    go.wait()
    for _ in range(n):
        share.counter += 1
    share.flush()


def _manager_incr(ns, lock, n, go):
    go.wait()
    for _ in range(n):
        with lock:
            ns.counter += 1


def _manager_incr_unlocked(ns, n, go):
    go.wait()
    for _ in range(n):
        ns.counter += 1


def _value_incr(value, n, go):
    go.wait()
    for _ in range(n):
        with value.get_lock():
            value.value += 1


def _sk_incr(share, n, go):
    go.wait()
    for _ in range(n):
        share.counter += 1


def run_counter(target, args, processes: int, n: int) -> float:
    """Wall time per increment with `processes` workers doing n each."""
    go = CTX.Event()
    procs = [CTX.Process(target=target, args=(*args, n, go)) for _ in range(processes)]
    for p in procs:
        p.start()
    start = time.perf_counter()
    go.set()
    for p in procs:
        p.join()
    return (time.perf_counter() - start) / (processes * n) * 1e6


def bench_counter(n: int) -> None:
    for processes in (1, 2, 4):
        table = Table(f"`counter += 1` from {processes} process(es), {n} each")
        total = processes * n
        with Share() as share:
            share.counter = 0
            us = run_counter(_accord_incr, (share,), processes, n)
            table.add("accord `share.counter += 1`", us, f"exact: {share.counter == total}")
        with multiprocessing.Manager() as manager:
            ns = manager.Namespace(counter=0)
            lock = manager.Lock()
            us = run_counter(_manager_incr, (ns, lock), processes, max(1, n // 10))
            table.add("Manager Namespace + Manager Lock", us, f"exact: {ns.counter == total // 10}")
            ns.counter = 0
            us = run_counter(_manager_incr_unlocked, (ns,), processes, max(1, n // 10))
            table.add("Manager Namespace, no lock", us, f"exact: {ns.counter == total // 10}")
        value = CTX.Value("i", 0)
        us = run_counter(_value_incr, (value,), processes, n)
        table.add("multiprocessing.Value + its lock", us, f"exact: {value.value == total}")
        if SkShare is not None:
            sk = SkShare()
            sk.counter = 0
            k = max(10, n // 50)
            us = run_counter(_sk_incr, (sk,), processes, k)
            table.add("suitkaise Share", us, f"exact: {sk.counter == processes * k}")
            sk.exit()
        table.print()


def _accord_fixed(share, n, queue):
    start = time.perf_counter()
    share.counter += 1  # connects: socket, handshake, ring
    first = time.perf_counter()
    for _ in range(n - 1):
        share.counter += 1
    before = time.perf_counter()
    share.flush()
    queue.put((first - start, time.perf_counter() - before))


def _nothing():
    pass


def bench_fixed(n: int) -> None:
    """What a worker process pays once, whatever its n: `run_counter` times
    start to join, so 10 ms per process is 2 µs per op of 5,000."""
    table = Table(f"Fixed costs of one of 4 worker processes (accord, fork), {n} `+=` each")
    rounds = 5
    firsts, flushes = [], []
    with Share() as share:
        share.counter = 0
        for _ in range(rounds):
            queue = CTX.Queue()
            procs = [CTX.Process(target=_accord_fixed, args=(share, n, queue)) for _ in range(4)]
            for p in procs:
                p.start()
            for _ in procs:
                first, flush = queue.get(timeout=120)
                firsts.append(first)
                flushes.append(flush)
            for p in procs:
                p.join()
    start = time.perf_counter()
    for _ in range(rounds):
        procs = [CTX.Process(target=_nothing) for _ in range(4)]
        for p in procs:
            p.start()
        for p in procs:
            p.join()
    empty = (time.perf_counter() - start) / rounds
    firsts.sort()
    flushes.sort()
    table.add(
        "first `share.counter += 1` (connects), median",
        firsts[len(firsts) // 2] * 1e6,
        "µs once per process",
    )
    table.add("final `share.flush()`, median", flushes[len(flushes) // 2] * 1e6)
    table.add("start and join 4 processes that do nothing", empty * 1e6)
    table.print()


def bench_big_append(n: int) -> None:
    table = Table("Append onto a list that already holds 0 / 10k / 200k items")
    for size in (0, 10_000, 200_000):
        with Share() as share:
            share.lst = list(range(size))
            share.flush()

            def appends():
                lst = share.lst
                for i in range(n):
                    lst.append(i)
                share.flush()

            us = timed(appends) / n * 1e6
            assert len(share.lst) == size + n
            table.add(f"accord, {size} items", us)
    for size in (0, 200_000):
        with multiprocessing.Manager() as manager:
            ml = manager.list(range(size))
            table.add(f"Manager list, {size} items", per_op(lambda: ml.append(1), n // 10))  # noqa: B023
    table.print()


def _drain_socket(sock, count, size):
    need = count * (4 + size)
    while need > 0:
        chunk = sock.recv(1 << 20)
        if not chunk:
            break
        need -= len(chunk)
    sock.close()


def _drain_ring(name, count):
    from accord.backends.shm._rings import Consumer, RingSegment

    rings = RingSegment.attach(name)
    consumer = Consumer(rings, resume=True)
    got = 0
    while got < count:
        entries, position = consumer.drain(0)
        if entries:
            got += len(entries)
            consumer.commit(0, position)
        else:
            consumer.sleep(0.1)
    rings.close()


def bench_command_transport(n: int) -> None:
    """The mechanism under every shm write, alone: a process hands n
    commands of 100 bytes to another that reads them all."""
    import os
    import socket
    import struct

    from accord._core._segment import unlink
    from accord.backends.shm._rings import Producer, RingSegment

    table = Table(f"One-way commands of 100 bytes to another process ({n}, until all are read)")
    payload = b"x" * 100
    name = f"accord.{os.getuid()}.bench-ring-{os.getpid()}"
    rings = RingSegment.create(name, 1)
    try:
        producer = Producer(rings, 0, name, lambda: None)
        reader = CTX.Process(target=_drain_ring, args=(name, n))
        reader.start()
        start = time.perf_counter()
        for _ in range(n):
            producer.append(payload)
        reader.join()
        table.add("accord ring append (shared memory)", (time.perf_counter() - start) / n * 1e6)
    finally:
        rings.close()
        unlink(name)
    ours, theirs = socket.socketpair()
    reader = CTX.Process(target=_drain_socket, args=(theirs, n, len(payload)))
    reader.start()
    theirs.close()
    frame = struct.pack("<I", len(payload)) + payload
    start = time.perf_counter()
    for _ in range(n):
        ours.sendall(frame)
    reader.join()
    ours.close()
    table.add(
        "Unix socket sendall (the write path before the rings)",
        (time.perf_counter() - start) / n * 1e6,
    )
    table.print()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer iterations")
    benches = {
        "transport": (bench_command_transport, 200_000),
        "read": (bench_read, 100_000),
        "append": (bench_append, 50_000),
        "call": (bench_call, 2_000),
        "counter": (bench_counter, 5_000),
        "fixed": (bench_fixed, 5_000),
        "big": (bench_big_append, 50_000),
    }
    parser.add_argument(
        "--only", default=",".join(benches), help=f"comma-separated, of: {', '.join(benches)}"
    )
    args = parser.parse_args()
    scale = 0.1 if args.quick else 1.0
    print(f"# accord benchmarks ({time.strftime('%Y-%m-%d')}, Python {sys.version.split()[0]})")
    for name in args.only.split(","):
        bench, n = benches[name]
        bench(int(n * scale))


if __name__ == "__main__":
    main()
