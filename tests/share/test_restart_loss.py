"""After the coordinator dies and `restart()`, no write is lost silently: a
process whose sent writes the dead coordinator had not committed gets
`WritesLost` (naming them) at its next operation."""

from __future__ import annotations

import os
import pickle
import signal
import time

import pytest

from accord import CoordinatorLost, Share, WritesLost
from accord.backends.shm import _client as shm_client

WRITERS = 8


def _increment_until_stopped(share, stop, results):
    done = reported = uncertain = 0
    names = set()
    deadline = time.monotonic() + 120
    while not stop.is_set() and time.monotonic() < deadline:
        try:
            share.counter += 1
            done += 1
        except WritesLost as exc:
            reported += exc.count
            names.update(exc.names)
        except CoordinatorLost as exc:
            if not getattr(exc, "undelivered", False):
                uncertain += 1  # in flight when it died: applied or not, unknown
            stop.wait(0.01)  # until the owner restarts it
    results.put((done, reported, uncertain, sorted(names)))


def _wait_until(condition, timeout=60.0):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.01)


@pytest.mark.timeout(300)  # 8 processes started, killed, restarted, on a loaded machine
def test_eight_writers_lose_nothing_silently(ctx, separate_processes):
    share = Share()
    try:
        share.counter = 0
        share.flush()
        stop, results = ctx.Event(), ctx.Queue()
        procs = [
            ctx.Process(target=_increment_until_stopped, args=(share, stop, results))
            for _ in range(WRITERS)
        ]
        for p in procs:
            p.start()
        _wait_until(lambda: share.counter >= 100, timeout=200)
        os.kill(share.coordinator_pid, signal.SIGKILL)
        share._link.client.owner_process.wait(10)
        with pytest.raises(CoordinatorLost):
            share.flush()
        assert "counter" not in share.restart()
        restored = share.counter
        _wait_until(lambda: share.counter >= restored + 100, timeout=200)  # they followed
        stop.set()
        outcomes = [results.get(timeout=120) for _ in procs]
        for p in procs:
            p.join(60)
            assert p.exitcode == 0
        share.flush()
        final = share.counter
        done = sum(o[0] for o in outcomes)
        reported = sum(o[1] for o in outcomes)
        uncertain = sum(o[2] for o in outcomes)
        # Every increment that returned normally is in the final count,
        # unless its process was told it was lost.
        assert done - reported <= final <= done + uncertain, (done, reported, uncertain, final)
        assert all(o[3] in ([], ["counter"]) for o in outcomes)
    finally:
        share.close()


def test_the_owner_is_told_too():
    share = Share()
    try:
        share.counter = 0
        share.flush()
        share.big = list(range(200_000))  # a commit that takes a while: then kill
        for _ in range(100):
            share.counter += 1
        os.kill(share.coordinator_pid, signal.SIGKILL)
        share._link.client.owner_process.wait(10)
        with pytest.raises(CoordinatorLost):
            share.flush()
        share.restart()
        if not shm_client._lost_writes.get(share._link.info.name):
            pytest.skip("the coordinator committed everything before it died")
        # Told once per process, by whichever handle of the share is used
        # first (a Pool worker unpickles a new one for each task).
        other = pickle.loads(pickle.dumps(share))
        with pytest.raises(WritesLost, match=r"share\.counter") as info:
            other.counter  # noqa: B018  (the first operation after the restart)
        assert "counter" in info.value.names
        assert share.counter < 100  # the share works on
        share.counter += 1
        share.flush()
    finally:
        share.close()
