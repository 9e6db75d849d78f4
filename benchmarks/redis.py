"""The redis backend beside shm, raw redis-py and a BaseManager over TCP, in one run.

    python benchmarks/redis.py [--quick] [--url redis://host:port/db]

Without --url it starts its own redis-server on a free loopback port (the
Debian package, as the tests do).  Prints µs per operation and each row's
ratio to the reference row of its table (raw redis-py): the aims are an
unchanged read within 1.5x of a raw GET and an increment within 2x of a raw
INCR round trip.
"""

from __future__ import annotations

import sys
from pathlib import Path

# This file is called redis.py: keep its folder off the path, or `import
# redis` would import it.  The suite's throwaway server lives in tests/.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]
sys.path.insert(0, str(_HERE.parent / "tests"))

import argparse  # noqa: E402
import multiprocessing  # noqa: E402
import multiprocessing.managers  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

import redis  # noqa: E402
from redis_server import RedisServer  # noqa: E402

from accord import Share  # noqa: E402

KEY = "benchmark-key-0123456789abcdef"
CTX = multiprocessing.get_context("fork")


class Box:
    """What the BaseManager serves: a value to read and a counter to raise."""

    def __init__(self):
        self.x = 42
        self.n = 0

    def get(self):
        return self.x

    def incr(self):
        self.n += 1
        return self.n


class BoxManager(multiprocessing.managers.BaseManager):
    pass


BoxManager.register("Box", Box)


def per_op(fn, n: int) -> float:
    for _ in range(min(100, n)):  # warm-up: connections, caches, method analysis
        fn()
    start = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - start) / n * 1e6


def table(title: str, rows: list[tuple[str, float, str]]) -> None:
    base = rows[0][1]
    print(f"\n### {title}\n")
    print("| implementation | µs/op | ratio to the first row | note |")
    print("|---|---:|---:|---|")
    for name, us, note in rows:
        print(f"| {name} | {us:.1f} | {us / base:.2f}x | {note} |")
    sys.stdout.flush()


def _incr_worker(url: str, n: int, barrier) -> None:
    share = Share.connect(url, name="bench", key=KEY)
    barrier.wait()
    for _ in range(n):
        share.counter += 1
    share.flush()


def _raw_incr_worker(url: str, n: int, barrier) -> None:
    r = redis.Redis.from_url(url)
    barrier.wait()
    for _ in range(n):
        r.incr("bench:counter")


def _together(target, url: str, n: int, procs: int) -> float:
    barrier = CTX.Barrier(procs + 1)
    workers = [CTX.Process(target=target, args=(url, n, barrier)) for _ in range(procs)]
    for w in workers:
        w.start()
    barrier.wait()
    start = time.perf_counter()
    for w in workers:
        w.join()
    return (time.perf_counter() - start) / (n * procs) * 1e6


def run(url: str, n: int) -> None:
    raw = redis.Redis.from_url(url)
    raw.set("bench:x", 42)
    raw.set("bench:counter", 0)
    manager = BoxManager(address=("127.0.0.1", 0), authkey=b"bench")
    manager.start()
    box = manager.Box()
    with Share(name="bench", backend=url, key=KEY) as rs, Share() as shm:
        for share in (rs, shm):
            share.x = 42
            share.counter = 0
            share.flush()
            share.x  # noqa: B018

        read = [
            ("raw redis-py `GET`", per_op(lambda: raw.get("bench:x"), n), "one round trip"),
            ("accord redis `share.x`", per_op(lambda: rs.x, n), "one HMGET: flags + version"),
            ("BaseManager over TCP `box.get()`", per_op(box.get, n), "one round trip"),
            ("accord shm `share.x`", per_op(lambda: shm.x, 50 * n), "no round trip"),
        ]
        table("Read of an unchanged value", read)

        def accord_incr(share):
            def incr():
                share.counter += 1

            return incr

        incr = [
            ("raw redis-py `INCR`", per_op(lambda: raw.incr("bench:counter"), n), "round trip"),
            (
                "accord redis `share.counter += 1`",
                per_op(accord_incr(rs), n),
                "queued: one EVALSHA",
            ),
            ("BaseManager over TCP `box.incr()`", per_op(box.incr, n), "round trip"),
            ("accord shm `share.counter += 1`", per_op(accord_incr(shm), 10 * n), "one send"),
        ]
        rs.flush()
        table("Increment (1 process)", incr)
        expected = rs.counter

        procs = 4
        raw.set("bench:counter", 0)
        raw_us = _together(_raw_incr_worker, url, n // procs, procs)
        exact_raw = int(raw.get("bench:counter")) == procs * (n // procs)
        accord_us = _together(_incr_worker, url, n // procs, procs)
        exact = rs.counter == expected + procs * (n // procs)
        table(
            f"Increment from {procs} processes at once (wall time per increment)",
            [
                ("raw redis-py `INCR`", raw_us, f"exact: {exact_raw}"),
                ("accord redis `share.counter += 1`", accord_us, f"exact: {exact}"),
            ],
        )
    manager.shutdown()
    raw.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer iterations")
    parser.add_argument("--url", help="a Redis to use (default: start one)")
    args = parser.parse_args()
    n = 500 if args.quick else 5000
    print(f"# accord redis backend ({time.strftime('%Y-%m-%d')}, Python {sys.version.split()[0]})")
    if args.url:
        run(args.url, n)
        return
    with tempfile.TemporaryDirectory() as tmp:
        server = RedisServer(Path(tmp))
        try:
            print(f"redis-server {server.binary} on port {server.port}")
            run(server.url, n)
        finally:
            server.stop()


if __name__ == "__main__":
    main()
