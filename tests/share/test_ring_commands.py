"""Writes of the shm backend travel through per-client rings in shared
memory: many processes stay exact, a writer killed mid-append leaves no half
command, big commands spill, and the coordinator sleeps and wakes."""

from __future__ import annotations

import os
import secrets
import signal
import threading
import time

import pytest

from accord import Share
from accord._core._segment import leftovers
from accord.backends.shm import _ring
from accord.backends.shm._rings import BELL, Consumer, Producer, RingClosed, RingSegment, collect


def _stem(share) -> str:
    return share._link.info.stem


def _increment(share, n):
    for _ in range(n):
        share.counter += 1
    share.flush()


@pytest.mark.timeout(300)
@pytest.mark.parametrize("processes", [8, 16])
def test_more_writers_than_cores_stay_exact(share, ctx, processes):
    share.counter = 0
    n = 150
    workers = [ctx.Process(target=_increment, args=(share, n)) for _ in range(processes)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(240)
    assert [w.exitcode for w in workers] == [0] * processes
    assert share.counter == processes * n


def _append_then_die_mid_append(share, count, stop, path="python"):
    for i in range(count):
        share.lst.append(i)
    # The next command stops half-appended, and the process dies right there.
    client = share._link.client
    if path == "c":  # the C path of `lst.append(value)` (_ring.c's Sender)
        client.sender.stop = stop
        share.lst.append("half")
        os.kill(os.getpid(), signal.SIGKILL)
    client.sender.close()  # the Python path, whatever the argument
    client._producer = _DiesMidAppend(client._producer, client._id, stop)
    share.lst.append("half")


class _DiesMidAppend:
    def __init__(self, producer, index, stop):
        self.producer, self.stop = producer, stop
        self.rings, self.base = producer.rings, producer.rings.base(index)

    def append(self, payload, timeout=None):
        buf = self.rings.buf
        _ring.ring_append(buf, self.base, payload, 0, buf, BELL, self.stop)
        os.kill(os.getpid(), signal.SIGKILL)

    def write(self, *args):
        # A fire-and-forget write: intent, flags and append in one C call.
        self.producer.write(*args, stop=self.stop)
        os.kill(os.getpid(), signal.SIGKILL)


@pytest.mark.parametrize("path", ["python", "c"])
@pytest.mark.parametrize("stop", [_ring.STOP_AFTER_PAYLOAD, _ring.STOP_AFTER_HEADER])
def test_a_writer_killed_mid_append_leaves_no_half_command(
    share, ctx, separate_processes, stop, path
):
    share.lst = []
    process = ctx.Process(target=_append_then_die_mid_append, args=(share, 50, stop, path))
    process.start()
    process.join(60)
    assert process.exitcode == -signal.SIGKILL
    # Every whole command is applied, the half one is not, and its raised
    # flag is credited (this read would otherwise wait).
    started = time.monotonic()
    assert share.lst == list(range(50))
    assert time.monotonic() - started < 1.5
    # Its ring is recycled for the next client; nothing is stuck.
    again = ctx.Process(target=_append_then_die_mid_append, args=(share, 5, stop, path))
    again.start()
    again.join(60)
    assert share.lst == list(range(50)) + list(range(5))


def _assign_big(share, size):
    share.big = b"x" * size
    share.flush()


def test_big_commands_spill_to_a_segment_removed_once_applied(share, ctx):
    size = 1 << 20  # far over half a ring
    process = ctx.Process(target=_assign_big, args=(share, size))
    process.start()
    process.join(60)
    assert process.exitcode == 0
    assert share.big == b"x" * size
    share.flush()
    assert leftovers(_stem(share) + "~spill.") == []


def test_an_idle_coordinator_sleeps_and_an_append_wakes_it():
    with Share() as share:
        share.lst = []
        share.flush()
        # Idle for longer than its spin and heartbeat: it sleeps in select().
        deadline = time.monotonic() + 5
        bell = share._link.client._rings.buf
        while time.monotonic() < deadline and _ring_bell_state(bell) == 0:
            time.sleep(0.01)
        assert _ring_bell_state(bell) == 2, "the coordinator never slept"
        share.lst.append(1)  # appended to the ring; a byte on the socket wakes it
        started = time.monotonic()
        assert share.lst == [1]
        assert time.monotonic() - started < 1.0


def _ring_bell_state(buf) -> int:
    return int.from_bytes(bytes(buf[BELL : BELL + 4]), "little")


@pytest.mark.timeout(120)
def test_a_full_ring_does_not_wait_for_a_long_commit_window():
    # A ring keeps each command until it is committed (so that restart()
    # can replay it): a producer out of room has the coordinator commit at
    # once rather than at the end of its window (here far beyond the test's
    # timeout).
    with Share(commit_window=600.0) as share:
        share.lst = []
        count = 20_000  # about 30 times what one ring holds
        for i in range(count):
            share.lst.append(i)
        assert len(share.lst) == count


def test_a_closed_ring_refuses_appends_and_keeps_what_it_held():
    stem = f"accord.{os.getuid()}.test-{secrets.token_hex(6)}"
    rings = RingSegment.create(f"{stem}~rings", 2, ring_size=1024)
    try:
        producer = Producer(rings, 0, stem, lambda: None)
        producer.append(b"first")
        producer.append(b"second")
        full = Producer(rings, 1, stem, lambda: None)
        while _ring.ring_append(rings.buf, rings.base(1), b"x" * 300, 0, rings.buf, BELL):
            pass  # ring 1 is full now
        outcome = []

        def append_when_room():
            try:
                full.append(b"y" * 300, timeout=60)
                outcome.append("appended")
            except RingClosed:
                outcome.append("closed")

        waiter = threading.Thread(target=append_when_room)
        waiter.start()
        deadline = time.monotonic() + 30
        while not Consumer(rings, resume=True).producer_waits(1):
            assert time.monotonic() < deadline, "the producer never waited for room"
            time.sleep(0.001)
        found = collect(rings)  # closes both rings, wakes the waiting producer
        waiter.join(30)
        assert outcome == ["closed"]
        assert found[0] == [b"first", b"second"]
        assert all(entry == b"x" * 300 for entry in found[1])
        with pytest.raises(RingClosed):
            producer.append(b"late")
        assert collect(rings)[0] == [b"first", b"second"]  # nothing was added
    finally:
        rings.segment.unlink()
        rings.close()
