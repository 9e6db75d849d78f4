"""accord.Pool against multiprocessing.Pool and ProcessPoolExecutor, one run.

    make bench            # or: python benchmarks/pool.py [--quick]

Per backend: start-up (construct the pool, then one 20 ms task on each
worker, so every worker must be up), round-trip latency of one tiny task
(``submit(f).result()``), and throughput of tiny tasks (``map`` over many
items, chunksize 1).  The alternatives use the same start method; the
sub-interpreter backend is compared with forkserver, the default.  Ratios
are other/accord: above 1, accord is that many times faster.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import multiprocessing
import multiprocessing.pool
import sys
import time

from accord import Pool
from accord.spawn import _interpreters

WORKERS = 4


def noop(x=None):
    return x


def nap(_):
    time.sleep(0.02)


def startup_s(make, run_wave) -> float:
    start = time.perf_counter()
    pool = make()
    run_wave(pool)
    elapsed = time.perf_counter() - start
    _close(pool)
    return elapsed


def _close(pool):
    if isinstance(pool, multiprocessing.pool.Pool):
        pool.terminate()
        pool.join()
    else:
        pool.shutdown()


def latency_us(pool, n: int, call) -> float:
    for _ in range(50):
        call(pool)
    start = time.perf_counter()
    for _ in range(n):
        call(pool)
    return (time.perf_counter() - start) / n * 1e6


def throughput(pool, n: int, run_map) -> float:
    run_map(pool, 200)
    start = time.perf_counter()
    run_map(pool, n)
    return n / (time.perf_counter() - start)


def _executor_wave(pool):
    list(pool.map(nap, range(WORKERS)))


def _mp_wave(pool):
    pool.map(nap, range(WORKERS), chunksize=1)


def _executor_call(pool):
    return pool.submit(noop, 1).result()


def _mp_call(pool):
    return pool.apply(noop, (1,))


BIG = b"x" * 1_000_000


def _executor_big(pool):
    return pool.submit(len, BIG).result()


def _mp_big(pool):
    return pool.apply(len, (BIG,))


def _executor_map(pool, n):
    for _ in pool.map(noop, range(n)):
        pass


def _mp_map(pool, n):
    pool.map(noop, range(n), chunksize=1)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="fewer repetitions")
    args = parser.parse_args()
    calls, items = (300, 2000) if args.quick else (2000, 20000)
    backends = ["forkserver", "spawn", "fork"]
    if _interpreters.available():
        backends.append("subinterpreter")
    print(f"Python {sys.version.split()[0]}, {WORKERS} workers, {time.strftime('%Y-%m-%d')}")
    header = f"{'backend':<15}{'measure':<24}{'accord':>12}{'mp.Pool':>12}{'PPExecutor':>12}"
    print(header + f"{'ratio mp':>10}{'ratio PPE':>10}")
    for backend in backends:
        method = "forkserver" if backend == "subinterpreter" else backend
        ctx = multiprocessing.get_context(method)

        def ours():
            return Pool(WORKERS, backend=backend)  # noqa: B023

        def mp_pool():
            return ctx.Pool(WORKERS)  # noqa: B023

        def executor():
            return concurrent.futures.ProcessPoolExecutor(WORKERS, mp_context=ctx)  # noqa: B023

        rows = [
            (
                "start-up (ms)",
                startup_s(ours, _executor_wave) * 1e3,
                startup_s(mp_pool, _mp_wave) * 1e3,
                startup_s(executor, _executor_wave) * 1e3,
            )
        ]
        pools = ours(), mp_pool(), executor()
        try:
            rows.append(
                (
                    "round trip (us)",
                    latency_us(pools[0], calls, _executor_call),
                    latency_us(pools[1], calls, _mp_call),
                    latency_us(pools[2], calls, _executor_call),
                )
            )
            rows.append(
                (
                    "1 MB argument (us)",
                    latency_us(pools[0], calls // 10, _executor_big),
                    latency_us(pools[1], calls // 10, _mp_big),
                    latency_us(pools[2], calls // 10, _executor_big),
                )
            )
            rows.append(
                (
                    "tiny tasks (1000/s)",
                    throughput(pools[0], items, _executor_map) / 1e3,
                    throughput(pools[1], items, _mp_map) / 1e3,
                    throughput(pools[2], items, _executor_map) / 1e3,
                )
            )
        finally:
            for pool in pools:
                _close(pool)
        for measure, a, m, p in rows:
            if measure.startswith("tiny"):
                ratio_m, ratio_p = a / m, a / p  # higher throughput is better
            else:
                ratio_m, ratio_p = m / a, p / a
            print(
                f"{backend:<15}{measure:<24}{a:>12.1f}{m:>12.1f}{p:>12.1f}"
                f"{ratio_m:>9.1f}x{ratio_p:>9.1f}x"
            )


if __name__ == "__main__":
    main()
