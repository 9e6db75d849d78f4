"""Readers never spin: a closed or dead share is an error within about a
second, whatever the reader was doing (issue 9, point 2)."""

from __future__ import annotations

import os
import signal
import time

import pytest

from accord import CoordinatorLost, Share, ShareClosed
from accord._core._atomic import load, store
from accord._core._segment import Segment

NAMES = 50


def _read_after(share, ready, go, results):
    share.n0  # noqa: B018  (maps the index: later names are looked up in it)
    ready.set()
    go.wait(60)
    started = time.monotonic()
    try:
        for i in range(1, NAMES):
            share[f"n{i}"]  # names this process has never read
        results.put(("read them all", time.monotonic() - started))
    except (CoordinatorLost, ShareClosed) as exc:
        results.put((type(exc).__name__, time.monotonic() - started))


def _reader(ctx, share):
    ready, go, results = ctx.Event(), ctx.Event(), ctx.Queue()
    p = ctx.Process(target=_read_after, args=(share, ready, go, results))
    p.start()
    assert ready.wait(60)
    return p, go, results


def _outcome(p, results):
    # The reader has 2 s to answer; a reader that spins is ended here.
    try:
        return results.get(timeout=2.0 + 3.0)  # + the queue's own latency under load
    except Exception:
        return ("no answer: the reader spins", None)
    finally:
        p.join(5)
        if p.is_alive():
            p.kill()
            p.join(5)


def test_reader_of_unread_names_gets_share_closed_when_the_owner_closes(ctx, separate_processes):
    share = Share()
    for i in range(NAMES):
        share[f"n{i}"] = i
    share.flush()
    p, go, results = _reader(ctx, share)
    share.close()
    go.set()
    what, took = _outcome(p, results)
    assert what == "ShareClosed", what
    assert took < 2.0


def _odd_seqlock(share, name):
    """Leave the snapshot of `name` as a writer killed mid-commit would."""
    client = share._link.client
    segname = client.snapshots._refresh_index()[name][0]
    seg = Segment.attach(segname)
    store(seg.buf, 0, load(seg.buf, 0) + 1)
    seg.close()


def test_odd_seqlock_of_a_killed_writer_raises_coordinator_lost(ctx, separate_processes):
    with Share() as share:
        for i in range(NAMES):
            share[f"n{i}"] = list(range(i))
        share.flush()
        p, go, results = _reader(ctx, share)
        _odd_seqlock(share, "n1")
        os.kill(share.coordinator_pid, signal.SIGKILL)
        share._link.client.owner_process.wait(10)
        go.set()
        what, took = _outcome(p, results)
        assert what == "CoordinatorLost", what
        assert took < 2.0


def test_the_owner_reading_a_name_left_odd_raises_within_two_seconds():
    with Share() as share:
        share.big = list(range(1000))
        share.flush()
        _odd_seqlock(share, "big")
        os.kill(share.coordinator_pid, signal.SIGKILL)
        share._link.client.owner_process.wait(10)
        started = time.monotonic()
        with pytest.raises(CoordinatorLost):
            share.big  # noqa: B018  (never read here before: the odd segment)
        assert time.monotonic() - started < 2.0
