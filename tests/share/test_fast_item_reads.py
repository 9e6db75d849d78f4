"""The unchanged-read fast path of items and attributes (ProxyBase in
accord/_core/_fastread.c): `share.d[k]`, `proxy[k]`, `share.lst[i]`,
`share.obj.attr`, `share.cfg[k][j]` served in C from what this proxy last
read, with every guarantee of the slow path kept -- a write by another
process is seen by the next read, a process reads its own writes,
`share.d[k] += 1` stays one atomic command, a defaultdict's missing key is
inserted by the coordinator, selectors copy, mutable items come back as
proxies and are never the held object itself."""

from __future__ import annotations

import collections
import os
import signal
import time

import pytest
from fast_item_workers import (
    READS_AND_INCREMENTS,
    WAIT_S,
    Plain,
    read_then_increment_items,
    serve_items,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from accord import CoordinatorLost, Proxy, Share, ShareClosed
from accord._core import _protocol as P
from accord.share._link import Link

VALUES = st.one_of(
    st.integers(),
    st.floats(allow_nan=False),
    st.text(max_size=10),
    st.booleans(),
    st.none(),
    st.tuples(st.integers(), st.text(max_size=5)),
)
ITEMS = st.one_of(VALUES, st.lists(st.integers(), max_size=3))  # a list: a proxy
KEYS = st.one_of(st.sampled_from(["a", "b", "c"]), st.integers(-3, 3))


class _CountingSlowPaths:
    """Counts the reads that ProxyBase's C hooks send to Python."""

    def __init__(self, monkeypatch):
        self.items = self.attrs = 0
        getitem, getattr_ = Proxy._accord_getitem, Proxy._accord_getattr

        def counted_item(proxy, key):
            self.items += 1
            return getitem(proxy, key)

        def counted_attr(proxy, name):
            self.attrs += 1
            return getattr_(proxy, name)

        monkeypatch.setattr(Proxy, "_accord_getitem", counted_item)
        monkeypatch.setattr(Proxy, "_accord_getattr", counted_attr)

    @property
    def calls(self) -> int:
        return self.items + self.attrs


def _plain(value):
    """A proxy's value as a plain object (for comparisons), anything else as it is."""
    if type(value) is Proxy:
        return Link.value(object.__getattribute__(value, "_accord_link"), value._accord_path)
    return value


def _slow(share, *path):
    """What the Python slow path reads at `path`, after the writes queued before now."""
    return share._link.value(path)


def test_unchanged_items_and_attributes_are_read_in_c_and_changed_ones_in_python(
    share, monkeypatch
):
    share.d = {"k": 1, "sub": [1, 2]}
    share.lst = [10, 20, 30]
    share.obj = Plain(5)
    share.cfg = {"model": {"lr": 0.5}}
    share.flush()  # every name committed: nothing changes while the loop below reads
    slow = _CountingSlowPaths(monkeypatch)
    proxy = share.d
    reads = [
        (lambda: share.d["k"], 1),
        (lambda: proxy["k"], 1),
        (lambda: share.lst[1], 20),
        (lambda: share.lst[-1], 30),
        (lambda: share.obj.attr, 5),
        (lambda: share.cfg["model"]["lr"], 0.5),
    ]
    for read, expected in reads:
        assert read() == expected  # read (and held) by the slow path
    first = slow.calls
    assert first >= len(reads)
    for _ in range(50):
        for read, expected in reads:
            assert read() == expected
    # All in C (300 reads) -- but for a coordinator heartbeat found stale on
    # a loaded machine, which sends reads to Python until it is fresh again.
    assert slow.calls - first <= 30
    assert share.d._accord_held() == (1, 0)  # "k" (share.d is `proxy`: the same handle)
    before = slow.calls
    share.d["k"] = 2  # a pending write of our own: the next read waits for it
    assert share.d["k"] == 2
    assert slow.calls == before + 1
    share.other = 1  # any commit makes the next read check again
    share.flush()
    before = slow.calls
    assert share.lst[1] == 20 and share.obj.attr == 5
    assert slow.calls == before + 2
    for _ in range(20):  # held again (updated in place): in C
        assert share.lst[1] == 20 and share.obj.attr == 5
    assert slow.calls - before - 2 <= 10


def test_a_mutable_item_comes_back_as_a_live_proxy_and_never_as_the_held_object(share):
    share.d = {"sub": [1, 2], "t": (1, [2]), "frozen": (1, 2)}
    for _ in range(3):
        sub = share.d["sub"]
        assert type(sub) is Proxy and sub == [1, 2]
    share.d["sub"].append(3)
    assert share.d["sub"] == [1, 2, 3]  # the proxy reads afresh
    first, second = share.d["t"], share.d["t"]  # a tuple holding a list: a copy each time
    assert first == second == (1, [2]) and first is not second and first[1] is not second[1]
    first[1].append(99)
    assert share.d["t"] == (1, [2])
    assert share.d["frozen"] is share.d["frozen"]  # immutable: may be the same object
    assert share.d._accord_held() == (2, 0)  # "sub" (its proxy) and "frozen", never "t"


def test_selectors_still_copy(share):
    share.lst = [0, 1, 2, 3]
    for _ in range(3):
        part = share.lst[1:3]
        assert type(part) is list and part == [1, 2]
        part.append(9)  # a private copy
    assert share.lst == [0, 1, 2, 3]
    assert share.lst._accord_held() == (0, 0)


def test_a_missing_key_of_a_defaultdict_is_still_inserted_by_the_coordinator(share):
    share.dd = collections.defaultdict(int, {"a": 1})
    for _ in range(3):
        assert share.dd["a"] == 1  # held after the first read
    assert share.dd["missing"] == 0
    share.flush()
    assert share.dd == {"a": 1, "missing": 0}  # inserted on the coordinator's copy
    share.dd["a"] += 5
    assert share.dd["a"] == 6


def test_only_reads_that_run_no_user_code_are_held(share):
    class Custom(dict):
        def __getitem__(self, key):
            return "custom"

    class WithProperty:
        def __init__(self):
            self._v = 1
            self.plain = 2

        @property
        def v(self):
            return self._v

    share.c = Custom(a=1)
    share.w = WithProperty()
    for _ in range(3):
        assert share.c["a"] == "custom"
        assert share.w.v == 1 and share.w.plain == 2
    assert share.c._accord_held() == (0, 0)
    assert share.w._accord_held() == (0, 1)  # `plain` only


def test_a_key_of_another_type_that_compares_equal_is_read_in_python(share, monkeypatch):
    share.d = {1: "one", "k": "v"}
    assert share.d[1] == "one"
    slow = _CountingSlowPaths(monkeypatch)
    assert share.d[1.0] == "one" and share.d[True] == "one"
    assert slow.items == 2  # float and bool keys: never served from what int 1 held


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    start=st.dictionaries(KEYS, ITEMS, max_size=5),
    steps=st.lists(st.tuples(KEYS, ITEMS), min_size=1, max_size=8),
)
def test_own_writes_are_read_by_the_next_read_as_the_slow_path_reads_them(share, start, steps):
    share.d = start
    expected = dict(start)
    d = share.d
    for key, value in [(None, None), *steps]:
        if key is not None:
            d[key] = value
            expected[key] = value
        for k, v in expected.items():
            for _ in range(2):  # the second: from what the first held
                got = d[k]
                assert _plain(got) == v == _slow(share, "d", P.ITEM, k)
                assert type(got) is (Proxy if isinstance(v, list) else type(v))


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    start=st.lists(ITEMS, min_size=1, max_size=5),
    steps=st.lists(st.tuples(st.integers(-5, 4), ITEMS), min_size=1, max_size=8),
)
def test_list_items_are_read_as_the_slow_path_reads_them(share, start, steps):
    share.lst = start
    expected = list(start)
    lst = share.lst
    for index, value in [(None, None), *steps]:
        if index is not None:
            index %= len(expected)
            lst[index] = value
            expected[index] = value
        for i in range(-len(expected), len(expected)):
            for _ in range(2):  # the second: from what the first held
                got = share.lst[i]
                assert _plain(got) == expected[i] == _slow(share, "lst", P.ITEM, i)
                assert type(got) is (Proxy if isinstance(expected[i], list) else type(expected[i]))


def test_writes_by_another_process_are_seen_by_the_next_read(share, ctx):
    """The stale-read test: before every write the reader holds the old
    value, on both sides; a write that returned in one process is read by
    the next read in the other, through every fast-path shape."""
    share.d = {k: 0 for k in ["a", "b", "c", *range(-3, 4)]}  # every key of KEYS
    share.lst = [0, 0, 0]
    share.obj = Plain(0)
    commands, answers = ctx.Queue(), ctx.Queue()
    worker = ctx.Process(target=serve_items, args=(share, commands, answers))
    worker.start()
    try:
        d, lst = share.d, share.lst

        @settings(max_examples=15, deadline=None)
        @given(
            steps=st.lists(
                st.tuples(st.booleans(), st.sampled_from(["d", "lst", "attr"]), KEYS, VALUES),
                min_size=1,
                max_size=8,
            )
        )
        def check(steps):
            for by_worker, what, key, value in steps:
                key = key if what == "d" else abs(key) % 3 if isinstance(key, int) else 0
                # Warm on both sides: the value before the write is held here...
                for _ in range(2):
                    share.d["a"], d["a"], share.lst[0], lst[0], share.obj.attr
                    d[key] if what == "d" else lst[key]
                commands.put(("read", "a"))
                answers.get(timeout=WAIT_S)  # ...and there
                if by_worker:
                    commands.put((what, key, value) if what != "attr" else (what, value))
                    assert answers.get(timeout=WAIT_S) == value  # its own write
                else:
                    if what == "d":
                        d[key] = value
                    elif what == "lst":
                        lst[key] = value
                    else:
                        share.obj.attr = value
                    commands.put(("read", key if what == "d" else "a"))
                    seen = answers.get(timeout=WAIT_S)
                    if what == "d":
                        assert seen[0] == value
                    elif what == "lst" and key == 0:
                        assert seen[1] == value
                    elif what == "attr":
                        assert seen[2] == value
                # The write returned before these reads began.
                for _ in range(2):
                    if what == "d":
                        assert share.d[key] == value and d[key] == value
                        assert d[key] == _slow(share, "d", P.ITEM, key)
                    elif what == "lst":
                        assert share.lst[key] == value and lst[key] == value
                    else:
                        assert share.obj.attr == value

        check()
    finally:
        commands.put(("stop",))
        worker.join(WAIT_S)
    assert worker.exitcode == 0


def test_an_increment_of_an_item_after_a_held_read_is_still_atomic(share, ctx):
    share.d = {"n": 0, "m": 0}
    share.lst = [0]
    share.obj = Plain(0)
    workers = [
        ctx.Process(target=read_then_increment_items, args=(share, READS_AND_INCREMENTS))
        for _ in range(2)
    ]
    for w in workers:
        w.start()
    read_then_increment_items(share, READS_AND_INCREMENTS)
    for w in workers:
        w.join(WAIT_S)
    assert [w.exitcode for w in workers] == [0, 0]
    share.flush()
    total = 3 * READS_AND_INCREMENTS
    assert share.d == {"n": total, "m": total}
    assert share.lst == [total]
    assert share.obj.attr == total


def test_every_augmented_item_form_after_a_held_read_is_one_command(share, monkeypatch):
    share.d = {"s": "a", "n": 10}
    share.lst = [1]
    share.obj = Plain(1)
    share.cfg = {"m": {"lr": 1}}
    d = share.d
    share.d["s"], d["n"], share.lst[0], share.obj.attr, share.cfg["m"]["lr"]
    sent = []
    for verb in ("assign", "augment"):
        original = getattr(Link, verb)

        def spy(link, place, *args, _verb=verb, _original=original):
            sent.append((_verb, place[-1]))
            return _original(link, place, *args)

        monkeypatch.setattr(Link, verb, spy)
    share.d["s"] += "b"
    share.flush()  # (each read below may be served from what was held again)
    d["n"] *= 3
    share.flush()
    share.lst[0] -= 1
    share.flush()
    share.obj.attr += 5
    share.flush()
    share.cfg["m"]["lr"] += 1
    # One AUGMENT each, never a read here and an assignment of its result.
    assert sent == [("augment", k) for k in ("s", "n", 0, "attr", "lr")]
    assert (share.d["s"], d["n"], share.lst[0], share.obj.attr) == ("ab", 30, 0, 6)
    assert share.cfg["m"]["lr"] == 2


def test_a_held_read_raises_after_close_and_once_the_coordinator_is_dead():
    share = Share()
    try:
        share.d = {"k": 1}
        share.obj = Plain(3)
        share.flush()
        d = share.d
        assert d["k"] == 1 and d["k"] == 1 and share.obj.attr == 3 and share.obj.attr == 3
        os.kill(share.coordinator_pid, signal.SIGKILL)
        share._link.client.owner_process.wait(WAIT_S)
        deadline = time.monotonic() + 30
        while True:  # served from what was held until the heartbeat is stale (~1 s)
            try:
                assert d["k"] == 1
            except CoordinatorLost:
                break
            assert time.monotonic() < deadline, "a dead coordinator went unnoticed"
            time.sleep(0.01)  # polling our own condition, not synchronising with a process
        with pytest.raises(CoordinatorLost):
            share.obj.attr  # noqa: B018
        assert share.restart() == []
        assert d["k"] == 1 and d["k"] == 1
        d["k"] = 2
        assert d["k"] == 2 and share.d["k"] == 2
    finally:
        share.close()
    with pytest.raises(ShareClosed):
        d["k"]
