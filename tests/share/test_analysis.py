"""The method analysis is sound: a method that can write is never run on the
caller's copy, and what it writes is flagged (when in doubt, a write)."""

from __future__ import annotations

import array
import collections

import pytest

from accord.share._methods import _TABLES, CALL, LOCAL, QUEUE, checked, method_access

BUILTINS = [
    list,
    dict,
    set,
    collections.deque,
    bytearray,
    collections.OrderedDict,
    collections.defaultdict,
    collections.Counter,
    array.array,
]


@pytest.mark.parametrize("cls", BUILTINS, ids=lambda c: c.__name__)
def test_every_method_of_the_running_python_is_classified(cls):
    """A method this Python has that the table does not name fails here:
    3.12 and 3.13 additions are caught, not taken for reads."""
    assert cls in _TABLES
    queue, call, reads = _TABLES[cls]
    methods = {n for n in dir(cls) if callable(getattr(cls, n, None))} - {"__class__"}
    unclassified = methods - queue - call - reads
    assert not unclassified, f"{cls.__name__}: classify {sorted(unclassified)} in _methods"
    assert not queue & reads and not call & reads and not queue & call


@pytest.mark.parametrize(
    ("cls", "name", "kind"),
    [
        (collections.deque, "insert", QUEUE),
        (collections.deque, "__imul__", QUEUE),
        (bytearray, "__imul__", QUEUE),
        (collections.Counter, "__iadd__", QUEUE),
        (collections.Counter, "_keep_positive", CALL),
        (collections.OrderedDict, "__delitem__", CALL),
        (collections.defaultdict, "__missing__", CALL),
        (array.array, "frombytes", QUEUE),
        (array.array, "clear", QUEUE),
        (bytearray, "__buffer__", CALL),
        (array.array, "tolist", LOCAL),
        (list, "__init__", CALL),
        (dict, "__setattr__", CALL),
        (list, "count", LOCAL),
    ],
)
def test_builtin_tables(cls, name, kind):
    if not hasattr(cls, name):
        pytest.skip(f"{cls.__name__}.{name} is new in a later Python")
    assert method_access(cls, name).kind == kind


def test_an_unknown_method_of_a_builtin_is_a_write(monkeypatch):
    queue, call, reads = _TABLES[list]
    monkeypatch.setitem(_TABLES, list, (queue, call, reads - {"count"}))
    from accord.share import _methods

    monkeypatch.setattr(_methods, "_cache", {})
    assert method_access(list, "count").kind == CALL


class Bag:
    def __init__(self):
        self._items = []
        self.n = 0

    @property
    def items(self):
        return self._items

    def _bucket(self):
        return self._items

    def add(self, x):
        self.items.append(x)

    def add_through_helper(self, x):
        self._bucket().append(x)

    def count_items(self):
        return len(self._items)


class Raw:
    def __init__(self):
        self.x = 0
        self.log = []

    def set_through_dict(self, v):
        self.__dict__["x"] = v

    def set_through_vars(self, v):
        vars(self)["x"] = v

    def append_through_getattr(self, v):
        getattr(self, "log").append(v)  # noqa: B009


class LRU:
    """A user class whose `get` writes (as an LRU cache's does)."""

    def __init__(self):
        self.hits = 0

    def get(self, key):
        self.hits += 1
        return key


class Holder:
    def __init__(self):
        self.cache = LRU()
        self.groups = {"a": []}
        self.names = ["x"]

    def lookup(self, key):
        return self.cache.get(key)

    def add_to_group(self, key, value):
        self.groups.get(key).append(value)

    def group_size(self, key):
        return len(self.groups.get(key, ()))

    def first_name(self):
        return self.names.index("x")


def test_writes_through_a_property_or_a_helper_are_writes(any_share):
    assert method_access(Bag, "add").kind == QUEUE
    assert "_items" in method_access(Bag, "add").writes
    assert "_items" in method_access(Bag, "add_through_helper").writes
    assert method_access(Bag, "count_items").kind == LOCAL
    any_share.bag = Bag()
    any_share.bag.add(1)
    any_share.bag.add_through_helper(2)
    assert any_share.bag.items == [1, 2]
    assert any_share.bag.count_items() == 2


def test_writes_through_dict_vars_or_getattr_are_writes_of_everything(any_share):
    for name in ("set_through_dict", "set_through_vars", "append_through_getattr"):
        assert method_access(Raw, name).writes is None, name
    any_share.raw = Raw()
    for i in range(200):  # each read must see the write before it
        any_share.raw.set_through_dict(i)
        assert any_share.raw.x == i
        any_share.raw.set_through_vars(-i)
        assert any_share.raw.x == -i
    any_share.raw.append_through_getattr(1)
    assert any_share.raw.log == [1]


def test_a_read_only_name_is_checked_against_the_attributes_type(any_share):
    access = method_access(Holder, "lookup")
    assert access.kind == LOCAL and ("cache", "get") in access.assumes
    holder = Holder()
    assert checked(access, holder).kind == CALL  # LRU.get is not dict.get
    assert checked(method_access(Holder, "group_size"), holder).kind == LOCAL
    assert checked(method_access(Holder, "first_name"), holder).kind == LOCAL
    any_share.h = holder
    assert any_share.h.lookup("k") == "k"
    assert any_share.h.lookup("k") == "k"
    assert any_share.h.cache.hits == 2  # ran on the coordinator, not on a copy


def test_a_value_returned_by_a_read_only_method_then_mutated_is_a_write(any_share):
    access = method_access(Holder, "add_to_group")
    assert access.kind == QUEUE and "groups" in access.writes
    any_share.h = Holder()
    any_share.h.add_to_group("a", 1)
    assert any_share.h.groups == {"a": [1]}
