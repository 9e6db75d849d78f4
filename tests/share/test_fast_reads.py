"""The unchanged-read fast path (accord/_core/_fastread.c): `share.x` served
in C from what this process last read, and every guarantee kept -- a write
by another process is seen by the next read, a process reads its own
writes, `share.x += 1` stays one atomic command, a dead coordinator or a
closed share is an error, not an old value."""

from __future__ import annotations

import math
import os
import signal
import time
import types

import pytest
from fast_read_workers import READS_AND_INCREMENTS, WAIT_S, read_then_increment, serve
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from accord import CoordinatorLost, Proxy, Share, ShareClosed
from accord._core._fastread import Control
from accord.share._link import Link

# Immutable values (served by the fast path) and a few containers (never).
VALUES = st.one_of(
    st.integers(),
    st.floats(allow_nan=False),
    st.text(max_size=20),
    st.binary(max_size=20),
    st.booleans(),
    st.none(),
    st.tuples(st.integers(), st.text(max_size=5)),
    st.frozensets(st.integers(), max_size=4),
)
ANY = st.one_of(VALUES, st.lists(st.integers(), max_size=4))


class _CountingSlowPath:
    """Counts the reads of `name` Share's C hook sends to the Python slow path."""

    def __init__(self, monkeypatch, name="x"):
        self.calls = 0
        original = Share._accord_slow

        def counted(share, asked):
            self.calls += asked == name
            return original(share, asked)

        monkeypatch.setattr(Share, "_accord_slow", counted)


def _same(a, b) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return a == b and math.copysign(1, a) == math.copysign(1, b)
    return type(a) is type(b) and a == b


def test_an_unchanged_value_is_read_in_c_and_a_changed_one_in_python(share, monkeypatch):
    share.x = 42
    slow = _CountingSlowPath(monkeypatch)
    assert share.x == 42  # read (and remembered) by the slow path
    first = slow.calls
    for _ in range(100):
        assert share.x == 42
    assert slow.calls == first  # all in C
    share.x = 43  # a pending write of our own: the next read waits for it
    assert share.x == 43
    assert slow.calls == first + 1
    share.y = 1  # any commit makes the next read check again
    share.flush()
    assert share.x == 43
    assert slow.calls == first + 2
    assert share.x == 43
    assert slow.calls == first + 2


def test_containers_and_api_names_never_come_from_the_cache(share, monkeypatch):
    share.lst = [1]
    share["close"] = 5  # a shared name that the API hides (read with share["close"])
    assert share["close"] == 5
    for _ in range(3):
        assert share.lst == [1]  # a proxy each time: its reads wait for writes
        assert callable(share.close)
    share.lst.append(2)
    assert share.lst == [1, 2]


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(steps=st.lists(st.tuples(st.sampled_from("xyz"), ANY), min_size=1, max_size=12))
def test_own_writes_are_read_by_the_next_read(share, steps):
    # Attribute syntax, not getattr(): the fast path serves LOAD_ATTR only.
    read = {"x": lambda: share.x, "y": lambda: share.y, "z": lambda: share.z}
    expected = {}
    for name, value in steps:
        share[name] = value
        expected[name] = value
        for n, v in expected.items():
            got = read[n]()
            assert got == v
            if type(got) is not Proxy:  # (a name that held a list may read as a proxy)
                assert _same(got, v)
                assert _same(read[n](), v)  # again: from the cache


def test_a_write_by_another_process_is_seen_by_the_next_read(share, ctx):
    """Both ways, with the reader's cache warm before every write."""
    share.x = 0
    commands, answers = ctx.Queue(), ctx.Queue()
    worker = ctx.Process(target=serve, args=(share, commands, answers))
    worker.start()
    try:

        @settings(max_examples=15, deadline=None)
        @given(steps=st.lists(st.tuples(st.booleans(), VALUES), min_size=1, max_size=8))
        def check(steps):
            for by_worker, value in steps:
                share.x  # noqa: B018  (warm: the value before the write is cached here)
                commands.put(("read",))
                answers.get(timeout=WAIT_S)  # and there
                if by_worker:
                    commands.put(("write", value))
                    what, seen = answers.get(timeout=WAIT_S)
                    assert what == "wrote" and _same(seen, value)
                    assert _same(share.x, value)  # the write returned before we read
                    assert _same(share.x, value)
                else:
                    share.x = value
                    commands.put(("read",))
                    what, seen = answers.get(timeout=WAIT_S)
                    assert what == "read" and _same(seen, value)

        check()
    finally:
        commands.put(("stop",))
        worker.join(WAIT_S)
    assert worker.exitcode == 0


def test_an_increment_after_a_cached_read_is_still_atomic(share, ctx):
    share.counter = 0
    workers = [
        ctx.Process(target=read_then_increment, args=(share, READS_AND_INCREMENTS))
        for _ in range(3)
    ]
    for w in workers:
        w.start()
    read_then_increment(share, READS_AND_INCREMENTS)
    for w in workers:
        w.join(WAIT_S)
    assert [w.exitcode for w in workers] == [0, 0, 0]
    share.flush()
    assert share.counter == 4 * READS_AND_INCREMENTS


def test_every_augmented_form_after_a_cached_read_is_one_command(share, monkeypatch):
    share.s = "a"
    share.n = 10
    share.t = (1,)
    share.flush()
    share.s, share.n, share.t  # noqa: B018  (all three remembered)
    sent = []
    for verb in ("assign", "augment"):
        original = getattr(Link, verb)

        def spy(link, place, *args, _verb=verb, _original=original):
            sent.append((_verb, place[0]))
            return _original(link, place, *args)

        monkeypatch.setattr(Link, verb, spy)
    share.s += "b"
    share.flush()  # (each read below may come from the cache again)
    share.n *= 3
    share.flush()
    share.n -= 1
    share.flush()
    share.n //= 2
    share.flush()
    share.t += (2,)
    # One AUGMENT each, never a read here and an assignment of its result.
    assert sent == [("augment", n) for n in "snnnt"]
    assert (share.s, share.n, share.t) == ("ab", 14, (1, 2))


def test_an_increment_past_the_256th_name_of_a_function_is_one_command(share, monkeypatch):
    # `share.n` there is EXTENDED_ARG + LOAD_ATTR: the C check sends it to the
    # Python detector, which must see through the prefix.
    source = "def many(share, o):\n"
    source += "".join(f"    o.a{i} = 1\n" for i in range(300))
    source += "    share.n\n    share.n += 1\n"
    namespace: dict = {}
    exec(source, namespace)
    share.n = 1
    share.flush()
    sent = []
    original = Link.assign

    def spy(link, place, *args):
        sent.append(place[0])
        return original(link, place, *args)

    monkeypatch.setattr(Link, "assign", spy)
    namespace["many"](share, types.SimpleNamespace())
    assert sent == []  # an AUGMENT, not a read and an assignment
    assert share.n == 2


def test_a_read_after_close_raises_instead_of_serving_the_cache():
    share = Share()
    share.x = 1
    assert share.x == 1
    assert share.x == 1
    share.close()
    with pytest.raises(ShareClosed):
        share.x  # noqa: B018


def test_a_cached_read_raises_once_the_coordinator_is_dead_and_restart_resumes():
    share = Share()
    try:
        share.x = 7
        share.flush()
        assert share.x == 7
        assert share.x == 7  # cached
        os.kill(share.coordinator_pid, signal.SIGKILL)
        share._link.client.owner_process.wait(WAIT_S)
        deadline = time.monotonic() + 30
        while True:  # served from the cache until the heartbeat is stale (~1 s)
            try:
                assert share.x == 7
            except CoordinatorLost:
                break
            assert time.monotonic() < deadline, "a dead coordinator went unnoticed"
            time.sleep(0.01)  # polling our own condition, not synchronising with a process
        assert share.restart() == []
        assert share.x == 7
        share.x = 8
        assert share.x == 8
    finally:
        share.close()


def test_the_values_remembered_are_bounded_and_released_on_close():
    buf = bytearray(3 * 4096)
    fast = Control(
        buf, heartbeat=8, commits=40, pending=4096, applied=8192, slots=512, stale_ns=10**9, limit=3
    )
    for i in range(5):
        fast.remember(f"n{i}", i, 0, i)
    assert 1 <= len(fast) <= 3  # started afresh when full
    fast.remember("n4", "again", 1, 4)  # an update, in place
    assert len(fast) <= 3
    with pytest.raises(IndexError):
        fast.remember("n", 1, 0, 512)  # no such flag
    with pytest.raises(ValueError):
        Control(buf, heartbeat=8, commits=40, pending=4096, applied=8192, slots=1024, stale_ns=1)
    fast.close()
    assert not fast.open and len(fast) == 0
    fast.remember("n", 1, 0, 0)  # closed: nothing is kept
    assert len(fast) == 0
    buf.append(0)  # the buffer is released: it may be resized again
