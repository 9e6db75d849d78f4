"""accord.Pool against multiprocessing.Pool and ProcessPoolExecutor, one run.

    make bench            # or: python benchmarks/pool.py [--quick]

Per backend: start-up (construct the pool, then one 20 ms task on each
worker, so every worker must be up), round-trip latency of one tiny task
(``submit(f).result()``), 100 tasks each given a 1 MB numpy array, and the
default ``map`` of 20,000 tiny tasks (each pool's own default chunking:
accord's adaptive chunks, ``multiprocessing.Pool.map``'s length / 4 per
worker, ``ProcessPoolExecutor.map``'s one call per task), over a range
and again over a list (accord sends a range's chunks as ranges).  The
alternatives use the same start method; the sub-interpreter backend is
compared with forkserver, the default.  Ratios are other/accord: above 1,
accord is that many times faster.  Each figure is the best of a few runs
(the development machine is shared: the best run is the least disturbed).

Then CPU-bound scaling: a pure-Python loop, 8 tasks on 1 and then 2
workers (the best of 3 runs each), sub-interpreters against processes --
on 3.12 and later each sub-interpreter has its own GIL and should scale
like processes; on 3.11 they share one.
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


def total(array):
    return float(array.sum())


def burn(n):
    s = 0
    for i in range(n):
        s += i
    return s


def best(measure, repeat: int) -> float:
    return min(measure() for _ in range(repeat))


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


def elapsed_ms(pool, run) -> float:
    start = time.perf_counter()
    run(pool)
    return (time.perf_counter() - start) * 1e3


def _executor_wave(pool):
    list(pool.map(nap, range(WORKERS)))


def _mp_wave(pool):
    pool.map(nap, range(WORKERS), chunksize=1)


def _executor_call(pool):
    return pool.submit(noop, 1).result()


def _mp_call(pool):
    return pool.apply(noop, (1,))


_ARRAY = None


def _array():
    global _ARRAY
    if _ARRAY is None:
        import numpy

        _ARRAY = numpy.arange(125_000, dtype=numpy.float64)  # 1 MB
    return _ARRAY


def _executor_arrays(pool, n=100):
    a = _array()
    for future in [pool.submit(total, a) for _ in range(n)]:
        future.result()


def _mp_arrays(pool, n=100):
    a = _array()
    for result in [pool.apply_async(total, (a,)) for _ in range(n)]:
        result.get()


def _executor_map(pool, n):
    for _ in pool.map(noop, range(n)):
        pass


def _mp_map(pool, n):
    pool.map(noop, range(n))  # its default chunksize


_LIST = list(range(20000))


def _executor_map_list(pool, n):
    for _ in pool.map(noop, _LIST[:n]):
        pass


def _mp_map_list(pool, n):
    pool.map(noop, _LIST[:n])


def _has_numpy() -> bool:
    try:
        import numpy  # noqa: F401
    except ImportError:
        return False
    return True


def compare(backends, quick: bool) -> None:
    calls, items, repeat = (300, 2000, 2) if quick else (2000, 20000, 5)
    header = f"{'backend':<15}{'measure':<30}{'accord':>10}{'mp.Pool':>10}{'PPExecutor':>12}"
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
                best(lambda: startup_s(ours, _executor_wave), 2) * 1e3,
                best(lambda: startup_s(mp_pool, _mp_wave), 2) * 1e3,
                best(lambda: startup_s(executor, _executor_wave), 2) * 1e3,
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
            # numpy cannot be imported in sub-interpreters (single-phase init).
            if _has_numpy() and backend != "subinterpreter":
                for pool, run in zip(
                    pools, (_executor_arrays, _mp_arrays, _executor_arrays), strict=True
                ):
                    run(pool, 10)  # warm up
                rows.append(
                    (
                        "100 x 1 MB numpy arg (ms)",
                        best(lambda: elapsed_ms(pools[0], _executor_arrays), repeat),  # noqa: B023
                        best(lambda: elapsed_ms(pools[1], _mp_arrays), repeat),  # noqa: B023
                        best(lambda: elapsed_ms(pools[2], _executor_arrays), repeat),  # noqa: B023
                    )
                )
            for pool, run in zip(pools, (_executor_map, _mp_map, _executor_map), strict=True):
                run(pool, 200)  # warm up
            rows.append(
                (
                    f"default map, {items} tiny (ms)",
                    best(lambda: elapsed_ms(pools[0], lambda p: _executor_map(p, items)), repeat),  # noqa: B023
                    best(lambda: elapsed_ms(pools[1], lambda p: _mp_map(p, items)), repeat),  # noqa: B023
                    best(lambda: elapsed_ms(pools[2], lambda p: _executor_map(p, items)), 1),  # noqa: B023
                )
            )
            # The same over a list (a range's chunks pickle as three numbers each);
            # not ProcessPoolExecutor: one call per task as above, 2 s for nothing new.
            ours_list, mp_list = (
                best(lambda p=pool, r=run: elapsed_ms(p, lambda q: r(q, items)), repeat)
                for pool, run in zip(pools, (_executor_map_list, _mp_map_list), strict=False)
            )
            rows.append(("  the same over a list (ms)", ours_list, mp_list, None))
        finally:
            for pool in pools:
                _close(pool)
        for measure, a, m, p in rows:
            other = f"{'-':>12}" if p is None else f"{p:>12.1f}"
            ratio = f"{'-':>10}" if p is None else f"{p / a:>9.2f}x"
            print(f"{backend:<15}{measure:<30}{a:>10.1f}{m:>10.1f}{other}{m / a:>9.2f}x{ratio}")


def _burn_s(pool, n: int, tasks: int) -> float:
    start = time.perf_counter()
    list(pool.map(burn, [n] * tasks, chunksize=1))
    return time.perf_counter() - start


def scaling(quick: bool) -> None:
    """CPU-bound: 8 pure-Python tasks on 1 then 2 workers (best of 3 each); start-up
    against spawn."""
    n, tasks = (300_000, 4) if quick else (2_000_000, 8)
    print(f"\nCPU-bound scaling: {tasks} tasks of burn({n:,}) (a pure-Python loop)")
    print(f"{'workers are':<28}{'1 worker (s)':>14}{'2 workers (s)':>15}{'speed-up':>10}")
    kinds = [("sub-interpreters", "subinterpreter")] if _interpreters.available() else []
    kinds += [("processes (forkserver)", "forkserver"), ("processes (spawn)", "spawn")]
    for label, backend in kinds:
        times = []
        for workers in (1, 2):
            with Pool(workers, backend=backend) as pool:
                list(pool.map(noop, range(workers * 2), chunksize=1))  # every worker up
                times.append(best(lambda p=pool: _burn_s(p, n, tasks), 3))
        print(f"{label:<28}{times[0]:>14.2f}{times[1]:>15.2f}{times[0] / times[1]:>9.2f}x")
    if _interpreters.available():
        sub = best(lambda: startup_s(lambda: Pool(WORKERS, "subinterpreter"), _executor_wave), 3)
        spawn = best(lambda: startup_s(lambda: Pool(WORKERS, "spawn"), _executor_wave), 3)
        own = "own GIL each" if _interpreters.OWN_GIL else "one shared GIL"
        print(
            f"start-up of {WORKERS} workers: sub-interpreters ({own}) {sub * 1e3:.0f} ms, "
            f"spawn {spawn * 1e3:.0f} ms: {spawn / sub:.1f}x faster"
        )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="fewer repetitions")
    parser.add_argument("--only", choices=["compare", "scaling"], help="one part only")
    args = parser.parse_args()
    backends = ["fork", "forkserver", "spawn"]
    if _interpreters.available():
        backends.append("subinterpreter")
    print(f"Python {sys.version.split()[0]}, {WORKERS} workers, {time.strftime('%Y-%m-%d')}")
    if args.only != "scaling":
        compare(backends, args.quick)
    if args.only != "compare":
        scaling(args.quick)


if __name__ == "__main__":
    main()
