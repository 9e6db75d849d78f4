"""The Share contract within one process: every operation, every error, on
every backend (tests that take the `share` fixture run once per backend)."""

from __future__ import annotations

import collections
import threading

import pytest

from accord import (
    Proxy,
    RemoteTraceback,
    Share,
    ShareClosed,
    ShareNotFound,
    UnshareableError,
    UsedFromOwnCoordinator,
)


@pytest.fixture
def share(any_share):
    return any_share


class Stats:
    def __init__(self):
        self.n = 0
        self.items = []
        self.inner = Inner()

    def record(self, x):
        self.n += 1
        self.items.append(x)

    def push(self, x):
        self.items.append(x)
        return len(self.items)

    def total(self):
        return sum(self.items)

    def withdraw(self, k):
        if k > self.n:
            raise ValueError(f"only {self.n} left")
        self.n -= k

    @property
    def mean(self):
        return sum(self.items) / len(self.items) if self.items else 0.0


class Inner:
    def __init__(self):
        self.items = []


def test_assign_and_read_values(share):
    share.i = 1
    share.f = 2.5
    share.s = "text"
    share.t = (1, "a")
    share.none = None
    assert (share.i, share.f, share.s, share.t, share.none) == (1, 2.5, "text", (1, "a"), None)
    assert type(share.i) is int


def test_containers_come_back_as_live_proxies(share):
    share.results = []
    results = share.results
    assert isinstance(results, Proxy)
    share.results.append(1)
    share.results.extend([2, 3])
    assert results == [1, 2, 3]  # the proxy held before sees later writes
    assert len(share.results) == 3
    assert share.results[-1] == 3
    assert list(share.results) == [1, 2, 3]
    assert 2 in share.results
    assert share.results[1:] == [2, 3]
    assert repr(share.results) == "[1, 2, 3]"
    assert share.results + [4] == [1, 2, 3, 4]


def test_augmented_assignments_are_applied(share):
    share.counter = 0
    share.counter += 5
    share.counter -= 1
    share.counter *= 3
    assert share.counter == 12
    share.s = {1}
    share.s |= {2, 3}
    assert share.s == {1, 2, 3}
    share.d = {"k": 1}
    share.d["k"] += 1
    assert share.d["k"] == 2
    share.lst = [1]
    share.lst += [2]
    share.lst[0] += 10
    assert share.lst == [11, 2]
    share["by_item"] = 1
    share["by_item"] += 1
    assert share["by_item"] == 2


def test_blocking_methods_return_values(share):
    share.lst = [1, 2, 3]
    assert share.lst.pop() == 3
    assert share.lst == [1, 2]
    share.d = {}
    assert share.d.setdefault("a", []) == []
    share.d["a"].append(1)
    assert share.d == {"a": [1]}
    assert share.d.pop("a") == [1]
    assert share.d == {}


def test_user_object_methods_and_attributes(share):
    share.stats = Stats()
    share.stats.record(3)
    share.stats.record(4)
    assert share.stats.n == 2
    assert share.stats.items == [3, 4]
    assert share.stats.push(5) == 3
    assert share.stats.total() == 12
    assert share.stats.mean == 4.0
    share.stats.n += 10
    assert share.stats.n == 12
    share.stats.label = "new attribute"
    assert share.stats.label == "new attribute"
    del share.stats.label
    with pytest.raises(AttributeError):
        share.stats.label  # noqa: B018


def test_remote_exception_has_type_message_and_traceback(share):
    share.stats = Stats()
    with pytest.raises(ValueError, match="only 0 left") as info:
        share.stats.withdraw(5)
    assert isinstance(info.value.__cause__, RemoteTraceback)
    assert "withdraw" in str(info.value.__cause__)
    share.lst = []
    with pytest.raises(IndexError):
        share.lst.pop()


def test_fire_and_forget_error_is_raised_by_next_blocking_call(share):
    share.lst = [2, 1]
    share.lst.sort(key=42)  # TypeError on the coordinator, returns at once
    with pytest.raises(TypeError) as info:
        share.flush()
    assert any("fire-and-forget" in note for note in info.value.__notes__)
    share.flush()  # reported once


def test_nested_writes_persist(share):
    share.cfg = {"model": {"lr": 1.0}, "layers": [1, 2]}
    share.cfg["model"]["lr"] = 0.1
    share.cfg["layers"].append(3)
    share.cfg["model"]["opt"] = {"name": "sgd"}
    share.cfg["model"]["opt"]["name"] = "adam"
    assert share.cfg == {"model": {"lr": 0.1, "opt": {"name": "adam"}}, "layers": [1, 2, 3]}
    share.stats = Stats()
    share.stats.inner.items.append("x")
    share.stats.inner.items[0] += "y"
    assert share.stats.inner.items == ["xy"]


def test_reassignment_and_deletion_are_ordered(share):
    share.lst = [1, 2]
    share.lst = []
    share.lst.append("new")
    assert share.lst == ["new"]
    share.x = 1
    del share.x
    with pytest.raises(AttributeError, match="'x'"):
        share.x  # noqa: B018
    assert "x" not in share
    share.x = 2
    assert share.x == 2
    assert "x" in share
    with pytest.raises(AttributeError):
        del share.never_assigned


def test_reading_a_missing_name_raises_attribute_error(share):
    with pytest.raises(AttributeError, match="missing"):
        share.missing  # noqa: B018
    assert share.get("missing", 7) == 7


def test_names_and_items(share):
    share.b = 1
    share["a"] = 2
    share["close"] = "a name of the API"
    assert list(share) == ["a", "b", "close"]
    assert share["close"] == "a name of the API"
    with pytest.raises(AttributeError, match="share\\['close'\\]"):
        share.close = 1
    with pytest.raises(AttributeError, match="private"):
        share._x = 1


def test_unserializable_assignment_is_refused_with_its_path(share):
    with pytest.raises(UnshareableError, match=r"share\.bad") as info:
        share.bad = threading.Lock()
    assert "lock" in str(info.value)
    stats = Stats()
    stats.inner.items.append(threading.Lock())
    with pytest.raises(UnshareableError, match=r"share\.stats\.inner\.items\[0\]"):
        share.stats = stats
    assert "stats" not in share
    share.lst = []
    with pytest.raises(UnshareableError, match=r"arguments of share\.lst\.append"):
        share.lst.append(threading.Lock())


def test_lambdas_and_local_classes_can_be_shared(share):
    class Local:
        def __init__(self):
            self.v = 1

    share.fn = lambda x: x * 2
    share.obj = Local()
    assert share.fn(21) == 42
    assert share.obj.v == 1


def test_get_returns_a_private_copy(share):
    share.lst = [[1]]
    copy = share.get("lst")
    copy[0].append(2)
    assert share.lst == [[1]]
    assert share.get(share.lst[0]) == [1]
    share.flat = [1, 2]
    share.d = {"a": 1}
    for copy in (share.get("flat"), list(share.flat)):
        copy.append(3)
    share.get("d")["b"] = 2
    assert share.flat == [1, 2]  # the snapshot cache was not touched either
    assert share.d == {"a": 1}


def test_apply_runs_atomically_on_the_coordinator(share):
    share.stock = {"n": 5}

    def take(stock, k):
        if stock["n"] >= k:
            stock["n"] -= k
            return True
        return False

    assert share.apply("stock", take, 3) is True
    assert share.apply("stock", take, 3) is False
    assert share.stock == {"n": 2}
    share.best = 10
    assert share.update("best", max, 12) == 12
    assert share.update("best", max, 3) == 12
    assert share.best == 12
    share.nested = {"inner": [1]}
    assert share.apply(share.nested["inner"], len) == 1


def test_lock_excludes_other_holders_and_has_timeout(share):
    lock = share.lock("stock")
    assert lock.acquire()
    other = share.lock("stock")
    got = []
    thread = threading.Thread(target=lambda: got.append(other.acquire(timeout=0.2)))
    thread.start()
    thread.join(10)
    assert got == [False]
    lock.release()
    with share.lock("stock"):
        pass
    with pytest.raises(RuntimeError, match="not held"):
        lock.release()


def test_defaultdict_and_counter(share):
    share.dd = collections.defaultdict(list)
    share.dd["a"].append(1)
    share.dd["b"] += [2]
    assert share.dd == {"a": [1], "b": [2]}
    share.c = collections.Counter()
    share.c.update("abca")
    share.c["z"] += 2
    assert share.c.most_common(1) == [("a", 2)]
    assert share.c["z"] == 2


def test_threads_share_one_connection_without_losing_updates(share):
    share.counter = 0
    share.lst = []

    def work():
        for i in range(200):
            share.counter += 1
            share.lst.append(i)
            assert share.lst.pop() is not None or True

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert share.counter == 800
    assert share.lst == []


def test_invalid_names_are_refused():
    with pytest.raises(ValueError, match="invalid share name"):
        Share(name="../escape")
    with pytest.raises(ShareNotFound):
        Share.connect("does-not-exist")


def test_flush_waits_for_this_process_writes(share):
    share.lst = []
    for i in range(1000):
        share.lst.append(i)
    share.flush()
    assert share._link.peek(("lst",)) == list(range(1000))


def test_big_objects_grow_their_segments(share):
    share.blob = b"x" * 10
    share.blob = b"y" * 5_000_000
    assert len(share.blob) == 5_000_000
    share.big = list(range(100_000))
    share.big.append(-1)
    assert share.big[-1] == -1
    assert len(share.big) == 100_001


class Split:
    def __init__(self):
        self.n = 0
        self.values = []

    def add_value(self, x):
        self.values.append(x)


def test_reads_wait_only_for_writes_to_what_they_read(monkeypatch):
    from accord._core import _protocol as P
    from accord.share._link import Link

    share = Share(commit_window=60)  # nothing is committed unless a reader asks

    barriers = []
    original = Link.request

    def counting(self, op, fields, writes=(), reads=()):
        if op == P.BARRIER:
            barriers.append(reads)
        return original(self, op, fields, writes, reads)

    share.stats = Split()
    share.flush()
    monkeypatch.setattr(Link, "request", counting)
    share.stats.add_value(1)  # writes `values` only
    assert share.stats.n == 0
    assert barriers == []  # reading n did not wait for the write to values
    assert share.stats.values == [1]
    assert len(barriers) == 1  # reading values did
    share.close()


class Holder:
    def __init__(self, share):
        self.share = share  # a handle on the very share this object lives in

    def reach_back(self):
        self.calls = 1  # a write: this method runs on the coordinator
        return self.share.other


def test_using_the_share_from_its_own_coordinator_fails_instead_of_hanging(share):
    share.other = 1
    share.holder = Holder(share)
    with pytest.raises(UsedFromOwnCoordinator):
        share.holder.reach_back()
    with pytest.raises(UsedFromOwnCoordinator):
        share.apply("other", lambda value, s: s.other, share)


def test_a_handle_on_a_closed_share_says_so_after_others_come_and_go():
    first = Share()
    first.x = 1
    other_handle = Share._attach(first._link.info)  # as a worker would hold it
    assert other_handle.x == 1
    first.close()
    with Share() as second:
        second.y = 2  # attaching anew sweeps the closed share's client away
        with pytest.raises(ShareClosed):
            other_handle.x  # noqa: B018


def test_builtin_protocols_on_proxies_give_private_results(share):
    share.d = {"a": [1], "b": 2}
    assert share.d.keys() == {"a", "b"}
    assert list(share.d.items()) == [("a", [1]), ("b", 2)]
    assert dict(share.d) == {"a": [1], "b": 2}
    assert set(share.d) == {"a", "b"}
    next(iter(share.d.values())).append("local only")
    assert share.d["a"] == [1]
    share.lst = [3, 1, 2]
    assert list(reversed(share.lst)) == [2, 1, 3]
    assert sorted(share.lst) == [1, 2, 3]
    assert list(share.lst.__reversed__()) == [2, 1, 3]
    share.s = {1, 2}
    assert share.s | {3} == {1, 2, 3}
    assert 3 not in share.s
    share.bag = collections.deque([1, 2])
    assert share.bag.popleft() == 1
    assert list(share.bag) == [2]
    share.raw = bytearray(b"ab")
    share.raw.append(99)
    assert bytes(share.raw) == b"abc"


class Temperature:
    def __init__(self):
        self._celsius = 0.0

    @property
    def fahrenheit(self):
        return self._celsius * 9 / 5 + 32

    @fahrenheit.setter
    def fahrenheit(self, value):
        self._celsius = (value - 32) * 5 / 9


def test_property_setters_and_their_reads_are_ordered():
    # A big commit window: only the flags can make the read see the write.
    with Share(commit_window=60) as share:
        share.t = Temperature()
        share.t.fahrenheit = 212
        assert share.t.fahrenheit == 212
        share.t.fahrenheit += 18
        assert share.t.fahrenheit == 230
        assert share.t._celsius == 110


def test_classes_with_slots_defined_where_they_are_shipped_by_value(share):
    import dataclasses

    class Slotted:  # local: cloudpickle ships it by value, and back again
        __slots__ = ("a", "items")

        def __init__(self):
            self.a = 1
            self.items = []

        def push(self, x):
            self.items.append(x)

    @dataclasses.dataclass(slots=True)
    class Point:
        x: int
        y: int

    share.s = Slotted()
    share.s.push(3)
    share.s.a += 2
    assert (share.s.a, share.s.items) == (3, [3])
    share.p = Point(1, 2)
    share.p.x += 10
    assert share.get("p") == Point(11, 2)


def test_setdefault_and_get_hand_out_the_live_item(share):
    share.groups = {}
    share.groups.setdefault("a", []).append(1)
    share.groups.setdefault("a", []).append(2)
    share.groups.get("a").append(3)
    assert share.groups == {"a": [1, 2, 3]}
    assert share.groups.get("missing", []) == []
    assert share.groups.get("missing") is None
