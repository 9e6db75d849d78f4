"""The command rings alone (accord.backends.shm._rings): order, wrap-around,
spills, full rings, producers killed mid-append, many producers."""

from __future__ import annotations

import itertools
import os
import pickle
import signal
import stat
import struct
import threading
import time
from collections import deque

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from ring_workers import append_forever, append_then_die, check, entry, produce
from run_names import share_name

from accord._core._errors import AccordError, CoordinatorStalled, ForeignSegment, SegmentCorrupt
from accord._core._segment import leftovers, unlink
from accord.backends.shm import _ring
from accord.backends.shm._rings import (
    BELL,
    RING_CLOSED,
    SPILL,
    WAKE,
    Consumer,
    Inbox,
    Producer,
    RingSegment,
)

_names = itertools.count()


def _name() -> str:
    # This run's prefix: the suite's leftover check covers these segments.
    return f"accord.{os.getuid()}.{share_name(f'ring-{next(_names)}')}"


@pytest.fixture
def rings(request):
    """A segment of rings (`count`, `size` from the test's parameters) and
    its cleanup, spill segments included."""
    made = []

    def make(count=2, size=4096):
        name = _name()
        segment = RingSegment.create(name, count, size)
        made.append(segment)
        return segment

    yield make
    for segment in made:
        name = segment.segment.name
        segment.close()
        for left in leftovers(name + "~"):
            unlink(left)
        unlink(name)


def _nothing(*_):
    return None


def test_entries_come_out_in_order_across_wrap_around(rings):
    segment = rings(1, 1024)
    producer = Producer(segment, 0, segment.segment.name, _nothing)
    consumer = Consumer(segment)
    capacity = producer.state()[2]
    sent = 0
    got = []
    # Sizes coprime to the ring: entries land at every offset, and many wrap.
    while sent * 8 < capacity * 20:
        producer.append(entry(0, sent, sent % 37))
        sent += 1
        if sent % 5 == 0:
            entries, position = consumer.drain(0)
            got += [check(e) for e in entries]
            consumer.commit(0, position)
    entries, position = consumer.drain(0)
    got += [check(e) for e in entries]
    consumer.commit(0, position)
    assert got == [(0, i) for i in range(sent)]
    head, tail, _ = producer.state()
    assert head == tail == position > 10 * capacity  # wrapped many times


def test_a_full_ring_waits_for_the_consumer_then_fails_with_a_deadline(rings):
    segment = rings(1, 1024)
    producer = Producer(segment, 0, segment.segment.name, _nothing)
    consumer = Consumer(segment)
    appended = 0
    started = time.monotonic()
    with pytest.raises(CoordinatorStalled, match="stayed full"):
        while True:
            producer.append(b"x" * 100, timeout=0.3)
            appended += 1
    assert time.monotonic() - started < 10
    entries, position = consumer.drain(0)
    assert len(entries) == appended  # nothing half-appended by the failed call
    consumer.commit(0, position)
    producer.append(b"y", timeout=0.3)  # room again
    assert consumer.drain(0)[0] == [b"y"]


def test_a_full_ring_with_a_dead_consumer_raises_its_error(rings):
    segment = rings(1, 1024)

    def gone():
        raise AccordError("the coordinator is gone")

    producer = Producer(segment, 0, segment.segment.name, gone)
    with pytest.raises(AccordError, match="is gone"):
        for _ in range(100):
            producer.append(b"x" * 100)


def test_big_payloads_spill_to_a_private_segment_removed_on_commit(rings):
    segment = rings(1, 1024)
    name = segment.segment.name
    producer = Producer(segment, 0, name, _nothing)
    consumer = Consumer(segment)
    big = os.urandom(100_000)
    producer.append(b"small")
    producer.append(big)
    producer.append(b"after")
    (spill,) = leftovers(name + "~spill.")
    assert stat.S_IMODE(os.stat(f"/dev/shm/{spill}").st_mode) == 0o600
    entries, position = consumer.drain(0)
    assert entries == [b"small", big, b"after"]
    assert leftovers(name + "~spill.") == [spill]  # until committed: a successor needs it
    consumer.commit(0, position)
    assert leftovers(name + "~spill.") == []


def test_a_spill_entry_naming_a_foreign_segment_is_refused(rings):
    segment = rings(1, 1024)
    consumer = Consumer(segment)
    base = segment.base(0)
    _ring.ring_append(segment.buf, base, b"accord.0.other~spill.1\x0010", SPILL, segment.buf, BELL)
    with pytest.raises(ForeignSegment, match="foreign segment"):
        consumer.drain(0)


def test_a_new_consumer_resumes_from_the_committed_position(rings):
    segment = rings(1, 2048)
    producer = Producer(segment, 0, segment.segment.name, _nothing)
    first = Consumer(segment)
    for i in range(10):
        producer.append(entry(0, i, 3))
    entries, position = first.drain(0)
    first.commit(0, position)
    for i in range(10, 20):
        producer.append(entry(0, i, 3))
    entries, position = first.drain(0)
    assert len(entries) == 10
    # `first` dies having drained 10..19 without committing them.
    with pytest.raises(SegmentCorrupt, match="resume=True"):
        Consumer(segment)
    second = Consumer(segment, resume=True)
    entries, position = second.drain(0)
    assert [check(e)[1] for e in entries] == list(range(10, 20))


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    ops=st.lists(
        st.one_of(
            st.integers(0, 600),  # append an entry of this size (> 496 spills)
            st.just(-1),  # drain and commit
            st.just(-2),  # drain, commit only half of it
        ),
        max_size=120,
    )
)
def test_any_sequence_of_entry_sizes(rings, ops):
    segment = rings(1, 1280)
    producer = Producer(segment, 0, segment.segment.name, _nothing)
    consumer = Consumer(segment)
    model: deque[bytes] = deque()
    seq = 0
    for op in ops:
        if op >= 0:
            data = entry(0, seq, op)
            seq += 1
            try:
                producer.append(data, timeout=0)
            except CoordinatorStalled:  # full: the model says so too
                entries, position = consumer.drain(0)
                assert entries == [model.popleft() for _ in entries]
                consumer.commit(0, position)
                producer.append(data, timeout=0)
            model.append(data)
        else:
            entries, position = consumer.drain(0, max_bytes=1 << 20 if op == -1 else 300)
            assert entries == [model.popleft() for _ in entries]
            consumer.commit(0, position)
    entries, position = consumer.drain(0)
    assert entries == list(model)
    consumer.commit(0, position)
    assert leftovers(segment.segment.name + "~spill.") == []


# -- producers in other processes ------------------------------------------------


def _wait_exit(process, deadline_s=60):
    process.join(deadline_s)
    assert process.exitcode is not None, "the producer did not exit"
    return process.exitcode


@pytest.mark.parametrize("stop", [_ring.STOP_AFTER_PAYLOAD, _ring.STOP_AFTER_HEADER])
def test_a_producer_killed_mid_append_leaves_no_half_entry(rings, ctx, separate_processes, stop):
    segment = rings(1, 8192)  # room for every entry: the producer never waits
    consumer = Consumer(segment)
    process = ctx.Process(target=append_then_die, args=(segment.segment.name, 30, stop))
    process.start()
    assert _wait_exit(process) == -signal.SIGKILL
    got = []
    while True:
        entries, position = consumer.drain(0)
        if not entries:
            break
        got += [check(e) for e in entries]
        consumer.commit(0, position)
    assert got == [(0, i) for i in range(30)]  # every whole entry, not the half one
    # Not stuck: the ring is recycled for the next producer.
    consumer.reset(0)
    Producer(segment, 0, segment.segment.name, _nothing).append(b"next")
    assert consumer.drain(0)[0] == [b"next"]


@pytest.mark.timeout(120)
def test_a_producer_killed_at_a_random_instant(rings, ctx, separate_processes):
    segment = rings(1, 1 << 16)  # roomy: the producer is mostly mid-append
    consumer = Consumer(segment)
    process = ctx.Process(target=append_forever, args=(segment.segment.name,))
    process.start()
    got = []
    try:
        # Drain while it appends; kill it at whatever instant it is at.
        deadline = time.monotonic() + 60
        while len(got) < 2000 and time.monotonic() < deadline:
            entries, position = consumer.drain(0)
            got += [check(e) for e in entries]
            consumer.commit(0, position)
            if not entries:
                consumer.sleep(0.05)
    finally:
        os.kill(process.pid, signal.SIGKILL)
        _wait_exit(process)
    entries, position = consumer.drain(0)
    got += [check(e) for e in entries]
    consumer.commit(0, position)
    assert got == [(0, i) for i in range(len(got))]
    assert len(got) >= 2000
    consumer.reset(0)


@pytest.mark.timeout(240)
def test_sixteen_producers_on_two_cores(rings, ctx):
    producers, count = 16, 1500
    segment = rings(producers, 4096)  # small rings: producers wait for room
    consumer = Consumer(segment)
    processes = [
        ctx.Process(target=produce, args=(segment.segment.name, w, count)) for w in range(producers)
    ]
    for p in processes:
        p.start()
    seen = [0] * producers
    deadline = time.monotonic() + 200
    try:
        while sum(seen) < producers * count:
            assert time.monotonic() < deadline, f"only {sum(seen)} entries arrived: {seen}"
            idle = True
            for w in range(producers):
                entries, position = consumer.drain(w)
                for data in entries:
                    who, seq = check(data)
                    assert (who, seq) == (w, seen[w]), "out of order or from the wrong ring"
                    seen[w] += 1
                if entries:
                    idle = False
                    consumer.commit(w, position)
            if idle:
                if any(p.exitcode not in (None, 0) for p in processes):
                    pytest.fail(f"a producer failed: {[p.exitcode for p in processes]}")
                consumer.sleep(0.1)
    finally:
        for p in processes:
            p.join(60)
    assert [p.exitcode for p in processes] == [0] * producers
    assert seen == [count] * producers


def test_the_c_functions_check_their_arguments():
    """_ring and _atomic share their argument checks (_shmargs.h): a wrong
    count, a misaligned or out-of-range word, a missing ring are Python
    errors, never a write outside the buffer."""
    from accord._core import _atomic

    buf = bytearray(4096)
    with pytest.raises(TypeError, match=r"load\(buffer, offset\)"):
        _atomic.load(buf)
    with pytest.raises(TypeError, match=r"bell_ring\(bell_buffer, bell_offset\)"):
        _ring.bell_ring(buf)
    for bad in (3, -8, 4096):
        with pytest.raises(IndexError, match="aligned 8-byte slot"):
            _atomic.store(buf, bad, 1)
        with pytest.raises(IndexError, match="aligned 8-byte slot"):
            _ring.bell_disarm(buf, bad)
    with pytest.raises(ValueError, match="no initialised ring"):
        _ring.ring_state(buf, 0)
    with pytest.raises(TypeError, match="positions"):
        _ring.bell_arm(buf, 0, buf, [])
    _ring.ring_init(buf, 0, 1024)
    with pytest.raises(IndexError, match="aligned 8-byte slot"):
        _ring.ring_append(buf, 0, b"x", 0, buf, 4093)
    assert _ring.ring_state(buf, 0) == (0, 0, 1024 - _ring.RING_DATA)  # nothing appended
    assert bytes(buf[1024:]) == bytes(3072)  # nothing written outside the ring


def test_an_inbox_sleeps_on_its_own_ring_until_its_producer_appends(rings):
    """A reply ring: the reader sleeps on a doorbell in its ring's header,
    not on the segment's (another ring's producer does not wake it)."""
    segment = rings(3, 1024)
    inbox = Inbox(segment, 1)
    producer = Producer(segment, 1, segment.segment.name, _nothing, own_bell=True)
    other = Producer(segment, 2, segment.segment.name, _nothing, own_bell=True)
    assert inbox.take() == []
    assert inbox.sleep(0.01) is False  # nothing came: timed out
    other.append(b"not mine")
    assert inbox.sleep(0.01) is False
    woke = []

    def sleeper():
        woke.append(inbox.sleep(60.0))

    thread = threading.Thread(target=sleeper)
    thread.start()
    deadline = time.monotonic() + 30
    while int.from_bytes(bytes(segment.buf[segment.base(1) + WAKE :][:4]), "little") == 0:
        assert time.monotonic() < deadline, "the inbox never went to sleep"
        time.sleep(0.001)
    started = time.monotonic()
    producer.append(b"reply")
    thread.join(30)
    assert woke == [True] and time.monotonic() - started < 30
    assert inbox.take() == [b"reply"]
    assert inbox.take() == []  # taken once; its space is free again
    head, tail, _ = producer.state()
    assert head == tail


def test_an_inbox_polls_for_a_reply_only_while_its_producer_is_awake(rings, monkeypatch):
    """Before it sleeps, an inbox polls (without the GIL) while the
    coordinator's doorbell says it is awake: a reply appended meanwhile is
    taken without a futex sleep.  Bounded, and never while the coordinator
    sleeps (it then has nothing coming)."""
    from accord.backends.shm import _rings

    segment = rings(2, 1024)
    commands = rings(1, 1024)  # its doorbell says whether the coordinator is awake
    inbox = Inbox(segment, 1, producer=commands)
    producer = Producer(segment, 1, segment.segment.name, _nothing, own_bell=True)
    monkeypatch.setattr(_rings, "SPIN_S", 60.0)
    # No core to spare (the coordinator says so): no poll at all.
    started = time.monotonic()
    assert inbox.sleep(0.0) is False
    assert time.monotonic() - started < 30
    struct.pack_into("<Q", commands.buf, _rings.SPIN_PAYS, 1)
    # Awake: a reply that comes while it polls is taken (the futex sleep
    # that follows a poll would time out at once here: 0 s).
    polling = threading.Event()

    def reply():
        polling.wait(30)
        time.sleep(0.05)  # lands while the caller polls (or before: True too)
        producer.append(b"reply")

    thread = threading.Thread(target=reply)
    thread.start()
    polling.set()
    started = time.monotonic()
    assert inbox.sleep(0.0) is True
    assert time.monotonic() - started < 30  # the reply ended the poll
    thread.join(30)
    assert inbox.take() == [b"reply"]
    # Asleep in select(): no poll at all, the sleep times out as usual.
    struct.pack_into("<I", commands.buf, BELL, 2)  # SLEEPS_ON_SELECT
    started = time.monotonic()
    assert inbox.sleep(0.01) is False
    assert time.monotonic() - started < 30
    # Awake but nothing comes: the poll is bounded by SPIN_S.
    struct.pack_into("<I", commands.buf, BELL, 0)
    monkeypatch.setattr(_rings, "SPIN_S", 0.02)
    assert inbox.sleep(0.0) is False


def test_polling_pays_only_with_a_core_to_spare():
    from accord.backends.shm._rings import spare_cores, spinning_pays

    assert spare_cores("0.52 0.58 0.59 2/789 12345\n", 2)  # ourselves and one other
    assert not spare_cores("21.75 20.1 15.2 3/1234 5678\n", 2)
    assert spare_cores("9.0 9.0 9.0 3/1234 5678\n", 4)
    assert spare_cores("garbage", 2)  # not Linux's format: as before
    assert spinning_pays() in (True, False)


# -- ring_send: a fire-and-forget write whole (intent, flags, patched entry) --

_INTENT_AT, _PENDING_AT = 64, 1024  # in a scratch "control" buffer of ours


def _write(producer: Producer, control, seq: int, writes: tuple, command: tuple) -> int:
    from accord.backends.shm._rings import WAIT_MARK

    payload = pickle.dumps((*command[:2], (writes[0], WAIT_MARK), writes, *command[2:]), 5)
    return producer.write(control, _INTENT_AT, _PENDING_AT, seq, writes, payload)


_plain = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False)
    | st.text()
    | st.binary(),
    lambda inner: st.tuples(inner, inner),
    max_leaves=6,
)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    fields=st.lists(_plain, max_size=4),
    before=st.integers(0, 2**62 - 1),
    writes=st.lists(st.integers(0, 100), min_size=1, max_size=13, unique=True),
)
# The largest counts the returned `old * 4 + how` carries (a signed return
# once turned 2**61 negative).
@example(fields=[], before=2**61, writes=[0])
@example(fields=[], before=2**62 - 1, writes=[100, 0])
def test_a_sent_write_round_trips_with_its_wait_and_raises_its_flags(rings, fields, before, writes):
    """Whatever the command holds -- even the wait mark's bytes, after the
    wait -- the entry drained is the command with the first flag's count
    before this write as its wait; each flag rose by one and the intent
    record names the write."""
    from accord.backends.shm._rings import WAIT_MARK_BYTES

    segment = rings(1, 4096)
    producer = Producer(segment, 0, segment.segment.name, _nothing)
    consumer = Consumer(segment)
    control = bytearray(_PENDING_AT + 8 * 101)
    writes = tuple(writes)
    struct.pack_into("<Q", control, _PENDING_AT + 8 * writes[0], before)
    command = (3, 0, ("name", 0, "attr"), "iadd", *fields, WAIT_MARK_BYTES)
    done = _write(producer, control, 7, writes, command)
    assert done >= 0 and done >> 2 == before
    (data,), position = consumer.drain(0)
    consumer.commit(0, position)
    assert pickle.loads(data) == (3, 0, (writes[0], before), writes, *command[2:])
    counts = [struct.unpack_from("<Q", control, _PENDING_AT + 8 * s)[0] for s in writes]
    assert counts == [before + 1] + [1] * (len(writes) - 1)
    seq, mask, count, *slots = struct.unpack_from(f"<{3 + len(writes)}Q", control, _INTENT_AT)
    assert (seq, mask, count, tuple(slots)) == (7, (1 << len(writes)) - 1, len(writes), writes)


def test_a_send_to_a_full_ring_does_nothing_and_says_so(rings):
    segment = rings(1, 1024)
    producer = Producer(segment, 0, segment.segment.name, _nothing)
    control = bytearray(_PENDING_AT + 8 * 8)
    sent = 0
    while _write(producer, control, sent + 1, (1, 2), (4, 0, ("lst",), "append", (sent,))) >= 0:
        sent += 1
    assert sent > 0
    before = bytes(control)
    assert _write(producer, control, sent + 1, (1, 2), (4, 0, ("lst",), "append", (0,))) == -1
    assert bytes(control) == before  # no intent, no flag raised
    entries, _ = Consumer(segment, resume=True).drain(0)
    assert [pickle.loads(e)[-1] for e in entries] == [(i,) for i in range(sent)]


def test_a_send_wakes_a_consumer_asleep_in_select_only_once_the_ring_fills_up():
    """Fire-and-forget writes leave a sleeping consumer asleep until 1/8 of
    the ring is used (whoever needs them wakes it); then one of them says
    to wake it, and a plain append (a command that waits for its reply)
    always does."""
    name = _name()
    segment = RingSegment.create(name, 1, 8192)
    try:
        producer = Producer(segment, 0, name, _nothing)
        consumer = Consumer(segment)
        control = bytearray(_PENDING_AT + 8 * 8)
        assert consumer.arm() is False  # asleep in select()
        hows = []
        while not hows or hows[-1] == 1:
            hows.append(_write(producer, control, 1, (1,), (4, 0, ("lst",), "append", (0,))) & 3)
        head, tail, _capacity = producer.state()
        # Woken by the write that took the ring to 1/8 of its size, not before.
        assert head - tail >= segment.ring_size // 8 > head - tail - 128
        assert hows[-1] == 2 and len(hows) > 1
        consumer.disarm()
        assert consumer.arm() is True  # input: not armed
        entries, _position = consumer.drain(0)
        assert len(entries) == len(hows)
        # Drained, not yet committed (its commands are not in a snapshot
        # yet): writes count from what it drained, not from the tail.
        assert consumer.arm() is False
        again = []
        while not again or again[-1] == 1:
            again.append(_write(producer, control, 1, (1,), (4, 0, ("lst",), "append", (0,))) & 3)
        assert len(again) == len(hows)
        consumer.disarm()  # (the last write woke it)
        consumer.drain(0)
        assert consumer.arm() is False
        assert producer.append(b"a call") is True  # asleep again: a call wakes it at once
    finally:
        segment.close()
        unlink(name)


def test_a_send_to_a_closed_ring_says_so_and_raises_no_flag(rings):
    segment = rings(1, 4096)
    producer = Producer(segment, 0, segment.segment.name, _nothing)
    control = bytearray(_PENDING_AT + 8 * 8)
    _ring.ring_close(segment.buf, segment.base(0))
    assert _write(producer, control, 1, (1, 2), (4, 0, ("lst",), "append", (1,))) == RING_CLOSED
    assert control == bytearray(len(control))


def test_a_full_ring_wakes_a_consumer_asleep_in_select_through_its_wake(rings):
    """A producer waiting for room says so before it rings the doorbell; a
    consumer asleep in select() (drained, not yet committed) is woken through
    the producer's `wake` (its socket), not left to its next timeout."""
    segment = rings(1, 1024)
    consumer = Consumer(segment)
    woken = []

    def wake():  # what the coordinator does, woken: commit, making room
        woken.append(True)
        _entries, position = consumer.drain(0)
        consumer.commit(0, position)

    producer = Producer(segment, 0, segment.segment.name, _nothing, wake=wake)
    buf, base = segment.buf, segment.base(0)
    while _ring.ring_append(buf, base, b"x" * 40, 0, buf, BELL):
        pass
    consumer.drain(0)  # drained, not committed: the ring stays full
    assert consumer.arm() is False  # asleep in select()
    assert producer.append(b"y" * 40, timeout=30) is False
    assert woken == [True]
