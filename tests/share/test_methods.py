"""Where a method runs: tables for builtins, analysis or declarations for user classes."""

from __future__ import annotations

import collections
import functools

from accord.share._methods import CALL, LOCAL, QUEUE, method_access, property_access


class Sample:
    _shared_meta = {"declared": {"reads": ["a"], "writes": ["b"], "returns": False}}

    def __init__(self):
        self.a = 0
        self.b = []
        self.c = {}

    def set_a(self, v):
        self.a = v

    def add(self, x):
        self.b.append(x)
        self.c[x] = True

    def both(self, x):
        self.set_a(x)
        self.add(x)

    def read_a(self):
        return self.a + 1

    def read_len(self):
        return len(self.b) + sum(self.b)

    def iterate(self):
        total = 0
        for x in self.b:
            total += x
        return total

    def mutate_items(self):
        for x in self.b:
            x.append(1)

    def alias(self):
        items = self.b
        items.append(1)

    def escape(self):
        helper(self)

    def pops(self):
        return self.b.pop()

    def checks(self, x):
        if x < 0:
            raise ValueError("negative")
        self.a = x

    def declared(self):
        self.b.append(self.a)

    def nothing(self):
        return None

    @property
    def total(self):
        return self.a + len(self.b)

    @property
    def bumping(self):
        self.a += 1
        return self.a

    @functools.cached_property
    def cached(self):
        return 1

    @staticmethod
    def static(x):
        return x

    @classmethod
    def klass(cls):
        return cls


def helper(obj):
    obj.a = 1


def test_builtin_tables():
    assert method_access(list, "append").kind == QUEUE
    assert method_access(list, "pop").kind == CALL
    assert method_access(list, "index").kind == LOCAL
    assert method_access(dict, "setdefault").kind == CALL
    assert method_access(dict, "update").kind == QUEUE
    assert method_access(dict, "get").kind == LOCAL
    assert method_access(set, "add").kind == QUEUE
    assert method_access(collections.deque, "popleft").kind == CALL
    assert method_access(collections.Counter, "most_common").kind == LOCAL
    assert method_access(collections.Counter, "subtract").kind == QUEUE
    assert method_access(list, "no_such_method") is None


def test_writes_without_result_are_fire_and_forget():
    access = method_access(Sample, "set_a")
    assert access.kind == QUEUE
    assert access.writes == {"a"}
    assert method_access(Sample, "add").writes == {"b", "c"}


def test_calls_to_other_methods_are_followed():
    access = method_access(Sample, "both")
    assert access.kind == QUEUE
    assert access.writes == {"a", "b", "c"}


def test_read_only_methods_run_locally_with_their_read_sets():
    assert method_access(Sample, "read_a") == method_access(Sample, "read_a")
    access = method_access(Sample, "read_a")
    assert (access.kind, access.reads, access.writes) == (LOCAL, {"a"}, frozenset())
    assert method_access(Sample, "read_len").kind == LOCAL
    assert method_access(Sample, "iterate").kind == LOCAL
    assert method_access(Sample, "nothing").kind == LOCAL


def test_possible_mutation_is_never_treated_as_a_read():
    assert method_access(Sample, "mutate_items").writes == {"b"}
    assert method_access(Sample, "alias").writes == {"b"}
    escape = method_access(Sample, "escape")
    assert (escape.kind, escape.reads, escape.writes) == (QUEUE, None, None)  # whole object


def test_results_and_raises_make_a_call_blocking():
    assert method_access(Sample, "pops").kind == CALL
    assert method_access(Sample, "checks").kind == CALL


def test_declarations_win():
    access = method_access(Sample, "declared")
    assert (access.kind, access.reads, access.writes) == (QUEUE, {"a"}, {"b"})


def test_properties_and_other_descriptors():
    assert property_access(Sample, "total").kind == LOCAL
    assert property_access(Sample, "bumping").kind == CALL
    assert property_access(Sample, "cached").kind == CALL
    assert method_access(Sample, "total") is None
    assert method_access(Sample, "static").kind == LOCAL
    assert method_access(Sample, "klass").kind == CALL


def test_classes_without_source_fall_back_to_the_coordinator():
    namespace = {}
    exec("class Dyn:\n    def f(self):\n        return 1\n", namespace)
    assert method_access(namespace["Dyn"], "f").kind == CALL
