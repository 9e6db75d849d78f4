"""After the coordinator dies and `restart()`, every write that was queued is
applied exactly once: the rings keep each command until it is in a committed
snapshot, each snapshot records the writes it includes, and the new
coordinator replays the rest (see backends/shm/_coordinator.py)."""

from __future__ import annotations

import os
import signal
import time

import pytest

from accord import CoordinatorLost, CoordinatorStartFailed, Share
from accord.backends.shm import _client as shm_client
from accord.backends.shm import _control


def _increment_until_stopped(share, stop, results):
    done = queued = 0
    deadline = time.monotonic() + 120
    while not stop.is_set() and time.monotonic() < deadline:
        try:
            share.counter += 1
            done += 1
        except CoordinatorLost as exc:
            # Raised before the write was queued (it is not applied), or,
            # for a call that waited for a reply, after (it is, once).
            if getattr(exc, "queued", False):
                queued += 1
            stop.wait(0.01)  # until the owner restarts it
    results.put((done, queued))


def _wait_until(condition, timeout=60.0):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.01)


@pytest.mark.timeout(400)  # up to 16 processes started, killed, restarted, on a loaded machine
@pytest.mark.parametrize("writers", [8, 16])
def test_writers_lose_nothing_and_nothing_twice_across_a_restart(ctx, separate_processes, writers):
    share = Share()
    try:
        share.counter = 0
        share.flush()
        stop, results = ctx.Event(), ctx.Queue()
        procs = [
            ctx.Process(target=_increment_until_stopped, args=(share, stop, results))
            for _ in range(writers)
        ]
        for p in procs:
            p.start()
        _wait_until(lambda: share.counter >= 100, timeout=200)
        os.kill(share.coordinator_pid, signal.SIGKILL)
        share._link.client.owner_process.wait(10)
        with pytest.raises(CoordinatorLost):
            share.flush()
        assert share.restart() == []
        restored = share.counter
        _wait_until(lambda: share.counter >= restored + 100, timeout=200)  # they followed
        stop.set()
        outcomes = [results.get(timeout=120) for _ in procs]
        for p in procs:
            p.join(60)
            assert p.exitcode == 0
        share.flush()
        done = sum(o[0] for o in outcomes)
        queued = sum(o[1] for o in outcomes)
        # Every increment that returned is in the final count, once; so is
        # every one that raised after it was queued (none: += does not wait).
        assert share.counter == done + queued, (done, queued)
    finally:
        share.close()


def _write_then_exit(share, count, then_flush):
    share.counter = 0
    share.lst = []
    share.flush()  # committed: the restart restores these, replays nothing of them
    for i in range(count):
        share.counter += 1
        share.lst.append(i)
    if then_flush:
        share.flush()


@pytest.mark.timeout(120)
@pytest.mark.parametrize("when", ["applied", "committed"])
def test_a_coordinator_dead_between_apply_and_commit_loses_nothing_and_replays_once(
    monkeypatch, when
):
    """The coordinator exits (as if killed) right after applying the last
    command -- before committing it, or after committing it but before its
    rings learn it: restart() replays exactly what the last commits lack."""
    count = 50
    # 3 commands set up (2 assignments and a flush), 2 per round, a flush.
    applied = 3 + 2 * count + (when == "committed")
    spec = str(applied) if when == "applied" else f"{applied}:committed"
    monkeypatch.setenv("ACCORD_TEST_EXIT_AFTER_APPLIED", spec)
    share = Share(commit_window=60.0)  # nothing is committed but by the flushes
    monkeypatch.delenv("ACCORD_TEST_EXIT_AFTER_APPLIED")
    try:
        try:
            _write_then_exit(share, count, then_flush=when == "committed")
        except CoordinatorLost:
            assert when == "committed"  # the flush's reply may not have come
        assert share._link.client.owner_process.wait(30) == 70
        with pytest.raises(CoordinatorLost):
            share.flush()
        assert share.restart() == []
        assert share.counter == count
        assert share.lst == list(range(count))
        share.counter += 1  # and the share works on
        assert share.counter == count + 1
    finally:
        share.close()


def _delete_then_make_names(share):
    del share.x
    for i in range(300):  # enough new names to compact the snapshot index
        share[f"n{i}"] = i
    share.flush()
    # Wait until this process's ring has settled: its delete is committed
    # and will not be replayed (only the tombstone's count tells restart()
    # to skip the write before it, in the other ring).
    _wait_ring_settled(share)


@pytest.mark.timeout(120)
def test_a_name_deleted_before_a_restart_stays_deleted_after_index_compaction(ctx, monkeypatch):
    """A write to x still in one ring (its client's commands never settle,
    as when its queue is blocked), x deleted by another process, whose ring
    settles; the index is compacted: restart() must not replay the write
    and bring x back."""
    monkeypatch.setenv("ACCORD_TEST_HOLD_RING", "0")  # this process's ring
    share = Share()
    monkeypatch.delenv("ACCORD_TEST_HOLD_RING")
    try:
        share.x = 1
        share.flush()
        process = ctx.Process(target=_delete_then_make_names, args=(share,))
        process.start()
        process.join(90)
        assert process.exitcode == 0
        os.kill(share.coordinator_pid, signal.SIGKILL)
        share._link.client.owner_process.wait(10)
        with pytest.raises(CoordinatorLost):
            share.flush()
        assert share.restart() == []
        assert "x" not in share
        assert share.n299 == 299
    finally:
        share.close()


def _wait_ring_settled(share):
    producer = share._link.client._producer
    _wait_until(lambda: producer.state()[0] == producer.state()[1])


@pytest.mark.timeout(120)
def test_tombstones_are_dropped_once_every_ring_has_settled_past_them():
    """The tombstones kept for restart() do not pile up in the index: once
    no ring holds a write from before a delete, compactions leave it out."""
    share = Share()
    try:
        for i in range(100):
            share[f"gone{i}"] = i
        share.flush()
        for i in range(100):
            del share[f"gone{i}"]
        share.flush()
        _wait_ring_settled(share)
        for i in range(300):  # compacts the index, more than once
            share[f"kept{i}"] = i
        share.flush()
        _found, lost, includes = share._link.client.snapshots.salvage()
        assert lost == []
        assert not [name for name in includes if name.startswith("gone")]
        assert includes["kept299"] >= 1
    finally:
        share.close()


def _late_writer(share, ready, go, done):
    share.lst.append("early")
    share.flush()
    ready.set()
    go.wait(120)
    # As if this process passed the REPLACED check just before restart()
    # marked the old coordinator replaced: its append meets a closed ring.
    real = shm_client.load
    shm_client.load = lambda buf, offset: 0 if offset == _control.REPLACED else real(buf, offset)
    share.lst.append("late")  # told the ring is closed: sent to the new coordinator
    shm_client.load = real
    share.flush()
    done.set()


@pytest.mark.timeout(120)
def test_a_write_racing_restart_is_applied_once_by_the_new_coordinator(ctx, separate_processes):
    share = Share()
    try:
        share.lst = []
        share.flush()
        ready, go, done = ctx.Event(), ctx.Event(), ctx.Event()
        process = ctx.Process(target=_late_writer, args=(share, ready, go, done))
        process.start()
        assert ready.wait(60)
        os.kill(share.coordinator_pid, signal.SIGKILL)
        share._link.client.owner_process.wait(10)
        with pytest.raises(CoordinatorLost):
            share.flush()
        share.restart()
        go.set()
        process.join(60)
        assert process.exitcode == 0
        assert done.is_set()
        assert share.lst == ["early", "late"]
    finally:
        share.close()


@pytest.mark.timeout(120)
def test_a_call_waiting_when_the_coordinator_died_is_applied_once_if_it_was_queued():
    share = Share()
    try:
        share.lst = [1, 2, 3]
        share.flush()
        os.kill(share.coordinator_pid, signal.SIGKILL)
        share._link.client.owner_process.wait(10)
        with pytest.raises(CoordinatorLost) as lost:
            share.lst.pop()  # waits for its result
        assert share.restart() == []
        # Queued before the death was noticed (usually: the ring takes it
        # at once): applied once, its result lost.  Else not applied at all.
        assert share.lst == ([1, 2] if lost.value.queued else [1, 2, 3])
    finally:
        share.close()


@pytest.mark.timeout(120)
def test_a_restart_whose_coordinator_fails_to_start_can_be_tried_again(monkeypatch):
    monkeypatch.setenv("ACCORD_TEST_EXIT_AFTER_APPLIED", "12")  # 2 set-up commands, 10 appends
    share = Share(commit_window=60.0)
    monkeypatch.delenv("ACCORD_TEST_EXIT_AFTER_APPLIED")
    try:
        share.lst = []
        share.flush()
        for i in range(10):
            share.lst.append(i)  # applied, never committed
        assert share._link.client.owner_process.wait(30) == 70
        with pytest.raises(CoordinatorLost):
            share.flush()
        monkeypatch.setenv("ACCORD_TEST_RESTART_FAILS", "1")
        with pytest.raises(CoordinatorStartFailed):
            share.restart()
        monkeypatch.delenv("ACCORD_TEST_RESTART_FAILS")
        # The dead incarnation's rings and snapshots are still there.
        assert share.restart() == []
        assert share.lst == list(range(10))
    finally:
        share.close()
