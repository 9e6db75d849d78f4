"""A Pool of workers on one Share, under every backend, then the same from asyncio.

    python examples/pool.py

Each backend runs 1,000 tasks on 4 workers.  The tasks count their hits in
`share` — a module global here, so `work` takes just the item — and one in
a hundred raises, to show how errors come back.
"""

from __future__ import annotations

import asyncio
import time

from accord import Pool, Share

share: Share  # set below, before any task runs; workers receive it with `work`


def work(i: int) -> int:
    share.hits += 1
    if i % 100 == 99:
        raise ValueError(f"item {i} is bad")
    return i * i


def run(backend: str) -> None:
    share.hits = 0
    started = time.perf_counter()
    with Pool(workers=4, backend=backend) as pool:
        futures = [pool.submit(work, i) for i in range(1000)]
        good = bad = 0
        for future in futures:
            try:
                future.result()
                good += 1
            except ValueError:
                bad += 1
    elapsed = time.perf_counter() - started
    assert share.hits == 1000, share.hits
    print(f"{backend:>15}: {good} results, {bad} errors, {share.hits} hits in {elapsed:.2f} s")


async def from_asyncio() -> None:
    with Pool(workers=2) as pool:
        squares = await asyncio.gather(*(pool.submit(work, i) for i in range(10)))
    hits = await share.aio.hits  # waits for queued writes without blocking the loop
    print(f"asyncio: {sum(squares)} from 10 awaited tasks; hits now {hits}")


if __name__ == "__main__":
    with Share() as share:
        for backend in ("forkserver", "spawn", "fork", "subinterpreter"):
            run(backend)
        asyncio.run(from_asyncio())
