"""Property-based: a shared list/dict behaves like a local one under any operation sequence."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from accord import Share
from accord._core._protocol import INPLACE_OPERATORS

SYMBOLS = sorted(set(INPLACE_OPERATORS) - {"@="})  # no int defines @=

values = st.one_of(st.integers(-5, 5), st.text(max_size=3), st.lists(st.integers(), max_size=3))

small = st.none() | st.integers(-4, 4)
slices = st.builds(slice, small, small, st.none() | st.sampled_from([-2, -1, 1, 2]))

list_ops = st.lists(
    st.one_of(
        st.tuples(st.just("append"), values),
        st.tuples(st.just("extend"), st.lists(values, max_size=3)),
        st.tuples(st.just("insert"), st.integers(-3, 3), values),
        st.tuples(st.just("pop")),
        st.tuples(st.just("setitem"), st.integers(-3, 3), values),
        st.tuples(st.just("delitem"), st.integers(-3, 3)),
        st.tuples(st.just("iadd"), st.lists(values, max_size=2)),
        st.tuples(st.just("reverse")),
        st.tuples(st.just("clear")),
        st.tuples(st.just("read"), st.integers(-3, 3)),
        st.tuples(st.just("len")),
        st.tuples(st.just("getslice"), slices),
        st.tuples(st.just("setslice"), slices, st.lists(values, max_size=3)),
        st.tuples(st.just("delslice"), slices),
        st.tuples(st.just("iaddslice"), slices, st.lists(values, max_size=2)),
        st.tuples(st.just("imul"), st.integers(0, 2)),
    ),
    max_size=25,
)

operands = st.integers(-3, 3)

dict_ops = st.lists(
    st.one_of(
        st.tuples(st.just("set"), st.text(max_size=2), values),
        st.tuples(st.just("del"), st.text(max_size=2)),
        st.tuples(st.just("pop"), st.text(max_size=2)),
        st.tuples(st.just("setdefault"), st.text(max_size=2), values),
        st.tuples(st.just("update"), st.dictionaries(st.text(max_size=2), values, max_size=3)),
        st.tuples(st.just("get"), st.text(max_size=2)),
        st.tuples(st.just("incr"), st.text(max_size=2)),
        st.tuples(st.just("inplace"), st.sampled_from(SYMBOLS), st.text(max_size=2), operands),
    ),
    max_size=25,
)


# The share is module-scoped on purpose: each example resets what it uses.
_FIXTURE_OK = [HealthCheck.function_scoped_fixture]


@pytest.fixture(scope="module", params=["shm", "memory", "redis"])
def module_share(request):
    backend = request.param
    if backend == "redis":
        backend = request.getfixturevalue("redis_server").url
    with Share(backend=backend) as share:
        yield share


def _outcome(fn, share=None):
    """("ok", result) or ("error", type name).  For the share, flush() too:
    a fire-and-forget command reports its error there, as documented."""
    try:
        result = fn()
        if share is not None:
            share.flush()
        return ("ok", result)
    except Exception as exc:
        return ("error", type(exc).__name__)


def _apply_list(target, op):
    name, *args = op
    if name == "append":
        return target.append(*args)
    if name == "extend":
        return target.extend(*args)
    if name == "insert":
        return target.insert(*args)
    if name == "pop":
        return target.pop()
    if name == "setitem":
        target[args[0]] = args[1]
        return None
    if name == "delitem":
        del target[args[0]]
        return None
    if name == "iadd":
        target += args[0]
        return None
    if name == "reverse":
        return target.reverse()
    if name == "clear":
        return target.clear()
    if name == "read":
        return target[args[0]]
    if name == "getslice":
        return target[args[0]]
    if name == "setslice":
        target[args[0]] = args[1]
        return None
    if name == "delslice":
        del target[args[0]]
        return None
    if name == "iaddslice":
        target[args[0]] += args[1]
        return None
    if name == "imul":
        target *= args[0]
        return None
    return len(target)


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(ops=list_ops)
def test_shared_list_matches_local_list(module_share, ops):
    module_share.lst = []
    local = []
    for op in ops:
        expected = _outcome(lambda: _apply_list(local, op))  # noqa: B023
        got = _outcome(lambda: _apply_list(module_share.lst, op), module_share)  # noqa: B023
        assert got == expected, op
        assert module_share.lst == local
    assert module_share.get("lst") == local


def _apply_dict(target, op):
    name, *args = op
    if name == "set":
        target[args[0]] = args[1]
        return None
    if name == "del":
        del target[args[0]]
        return None
    if name == "pop":
        return target.pop(args[0])
    if name == "setdefault":
        return target.setdefault(*args)
    if name == "update":
        return target.update(args[0])
    if name == "get":
        return target.get(args[0])
    if name == "inplace":
        symbol, key, operand = args
        exec(f"target[key] {symbol} operand", {"target": target, "key": key, "operand": operand})
        return None
    target[args[0]] += 1  # KeyError when missing (reported by flush for the share)
    return None


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(ops=dict_ops)
def test_shared_dict_matches_local_dict(module_share, ops):
    module_share.d = {}
    local = {}
    for op in ops:
        expected = _outcome(lambda: _apply_dict(local, op))  # noqa: B023
        got = _outcome(lambda: _apply_dict(module_share.d, op), module_share)  # noqa: B023
        assert got == expected, op
        assert module_share.d == local
        if any(isinstance(v, int) and abs(v) > 10**9 for v in local.values()):
            break  # (**= and <<= grow fast)
    assert module_share.get("d") == local


@settings(
    max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(increments=st.lists(st.integers(-1000, 1000), max_size=30))
def test_counter_matches_sum(module_share, increments):
    module_share.counter = 0
    for n in increments:
        module_share.counter += n
    assert module_share.counter == sum(increments)


@settings(
    max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(steps=st.lists(st.tuples(st.sampled_from(SYMBOLS), operands), max_size=25))
def test_counter_with_every_inplace_operator(module_share, steps):
    """Any sequence of `share.counter op= n`: the same values, the same
    errors (ZeroDivisionError, a negative shift, & on a float) as locally."""
    module_share.counter = 7
    local = {"counter": 7}
    for symbol, operand in steps:
        statement = f"target.counter {symbol} {operand}"
        expected = _outcome(lambda: exec(statement, {"target": _Namespace(local)}))  # noqa: B023
        got = _outcome(lambda: exec(statement, {"target": module_share}), module_share)  # noqa: B023
        assert got == expected, (symbol, operand)
        assert module_share.counter == local["counter"]
        if abs(local["counter"]) > 10**9:
            module_share.counter = local["counter"] = 7  # (**= and <<= grow fast)


class _Namespace:
    """The local model: attribute access on a dict."""

    def __init__(self, values):
        object.__setattr__(self, "values", values)

    def __getattr__(self, name):
        return self.values[name]

    def __setattr__(self, name, value):
        self.values[name] = value
