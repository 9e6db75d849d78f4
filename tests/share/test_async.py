"""share.aio and `async with share.lock(...)`: the event loop never waits on the share."""

from __future__ import annotations

import asyncio
import concurrent.futures
import time

import pytest

from accord import RemoteTraceback


@pytest.fixture
def share(any_share):
    return any_share  # every backend


class Slow:
    def __init__(self):
        self.calls = 0

    def work(self, seconds):
        time.sleep(seconds)  # on the coordinator: stands for a long call
        self.calls += 1
        return self.calls

    def fail(self):
        self.calls = -1  # a write: the call runs on the coordinator
        raise ValueError("from the coordinator")


async def _ticking_while(awaitable):
    ticks = 0

    async def tick():
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0.005)

    ticker = asyncio.create_task(tick())
    await asyncio.sleep(0)
    try:
        return await awaitable, ticks
    finally:
        ticker.cancel()


def test_a_long_call_does_not_block_the_event_loop(share):
    share.slow = Slow()
    result, ticks = asyncio.run(_ticking_while(share.aio.slow.work(0.3)))
    assert result == 1
    assert ticks >= 10  # the loop ran all along (a blocked loop would tick once)
    assert share.slow.calls == 1


def test_awaited_reads_are_private_copies_after_pending_writes(share):
    share.cfg = {"model": {"lr": 0.1, "layers": [1, 2]}}
    share.counter = 0

    async def main():
        for _ in range(20):
            share.counter += 1  # fire-and-forget writes, then an awaited read
        counter = await share.aio.counter
        model = await share.aio.cfg["model"]
        model["layers"].append(3)  # a private copy: the share does not change
        return counter, model, await share.aio.cfg["model"]["layers"]

    counter, model, layers = asyncio.run(main())
    assert counter == 20
    assert model == {"lr": 0.1, "layers": [1, 2, 3]}
    assert layers == [1, 2]


def test_awaited_calls_apply_flush_and_errors(share):
    share.jobs = [1, 2, 3]
    share.slow = Slow()
    share.best = 0

    async def main():
        popped = await share.aio.jobs.pop()
        await share.aio.jobs.append(9)
        best = await share.aio.update("best", max, 7)
        length = await share.aio.apply("jobs", len)
        share.best += 1
        await share.aio.flush()
        with pytest.raises(ValueError, match="from the coordinator") as info:
            await share.aio.slow.fail()
        assert isinstance(info.value.__cause__, RemoteTraceback)
        with pytest.raises(AttributeError, match="assignments do not wait"):
            share.aio.best = 3
        return popped, best, length

    assert asyncio.run(main()) == (3, 7, 3)
    assert share.jobs == [1, 2, 9]
    assert share.best == 8


def test_async_with_lock(share):
    share.stock = 2

    async def holder(entered, leave):
        async with share.lock("stock"):
            entered.set()
            await leave.wait()
            share.stock -= 1

    async def main():
        entered, leave = asyncio.Event(), asyncio.Event()
        task = asyncio.create_task(holder(entered, leave))
        await entered.wait()
        # Held: neither another thread nor another task gets it meanwhile.
        assert share.lock("stock").acquire(timeout=0.05) is False
        waiter = asyncio.create_task(share.lock("stock").__aenter__())
        await asyncio.sleep(0.05)
        assert not waiter.done()
        waiter.cancel()  # gives up waiting; must not keep the lock once granted
        leave.set()
        await task
        with pytest.raises(asyncio.CancelledError):
            await waiter

    asyncio.run(main())
    assert share.stock == 1
    lock = share.lock("stock")
    assert lock.acquire(timeout=10)  # the cancelled waiter gave it back
    lock.release()


def test_tasks_waiting_for_a_lock_do_not_starve_its_holder(share):
    # Each waiting `async with share.lock(...)` used to block a thread of the
    # loop's default executor: with as many waiters as threads, the holder's
    # own `await share.aio...` queued behind them and nobody ever went on.
    share.stock = 0

    async def holder(entered, go):
        async with share.lock("stock"):
            entered.set()
            await go.wait()
            share.stock = await share.aio.stock + 10

    async def waiter():
        async with share.lock("stock"):
            share.stock += 1

    async def main():
        asyncio.get_running_loop().set_default_executor(concurrent.futures.ThreadPoolExecutor(2))
        entered, go = asyncio.Event(), asyncio.Event()
        held = asyncio.create_task(holder(entered, go))
        await entered.wait()
        waiters = [asyncio.create_task(waiter()) for _ in range(3)]
        await asyncio.sleep(0)  # each waiter asks for the lock
        go.set()
        await asyncio.wait_for(asyncio.gather(held, *waiters), 20)

    asyncio.run(main())
    assert share.stock == 13


def test_leaving_a_lock_this_task_does_not_hold_says_so(share):
    async def main():
        lock = share.lock("stock")
        with pytest.raises(RuntimeError, match="not held by this task"):
            await lock.__aexit__(None, None, None)
        async with lock:
            other = asyncio.create_task(lock.__aexit__(None, None, None))
            with pytest.raises(RuntimeError, match="not held by this task"):
                await other

    asyncio.run(main())
    lock = share.lock("stock")
    assert lock.acquire(timeout=10)  # released once, by its holder
    lock.release()
