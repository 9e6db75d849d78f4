"""Eight processes mixing every kind of write this issue made exact: all 13
in-place operators on a user class, slices, counters, item writes and
deletes, numpy slices, fire-and-forget methods.  Everything adds up."""

from __future__ import annotations

import pytest

from accord import Share
from accord._core import _protocol as P

BACKENDS = ("shm", "redis")
WORKERS = 8
ROUNDS = 26  # each round uses every in-place operator once (13) on two targets
SYMBOLS = list(P.INPLACE_OPERATORS)


class Log:
    """Only in-place operators (no binary ones); each records itself."""

    def __init__(self):
        self.entries = []


def _recorder(symbol):
    def method(self, other):
        self.entries.append((symbol, other))
        return self

    return method


for _symbol, _name in P.INPLACE_OPERATORS.items():
    setattr(Log, f"__{_name}__", _recorder(_symbol))


class Account:
    def __init__(self):
        self.items = []

    @property
    def bucket(self):
        return self.items

    def add(self, x):
        self.bucket.append(x)  # through a property: a write all the same


def _worker(share, w):
    np_available = share.get("has_numpy")
    for i in range(ROUNDS):
        symbol = SYMBOLS[i % len(SYMBOLS)]
        exec(f"share.log {symbol} v", {"share": share, "v": (w, i)})
        exec(f"share.box['log'] {symbol} v", {"share": share, "v": (w, i)})
        share.counter += 1
        share.nums[w] += 3
        share.nums[w] -= 1
        share.nums[w] //= 1
        share.lst[0:0] = [(w, i)]  # a slice assignment: insert at the front
        share.d[(w, i)] = i
        if i % 2 == 0:
            del share.d[(w, i)]
        share.account.add((w, i))
        if np_available:
            share.arr[w : w + 1] += 1
        if i % 5 == 0:
            assert share.counter >= i  # reads wait for this process's writes


@pytest.fixture
def share(backend):
    with Share(backend=backend) as s:
        yield s


def test_eight_processes_mixing_everything_stay_exact(share, ctx, spawn_backend):
    share.has_numpy = False
    if spawn_backend != "subinterpreter":  # numpy loads in one interpreter per process
        try:
            import numpy as np

            share.arr = np.zeros(WORKERS, dtype=int)
            share.has_numpy = True
        except ImportError:
            pass
    share.log = Log()
    share.box = {"log": Log()}
    share.counter = 0
    share.nums = [0] * WORKERS
    share.lst = []
    share.d = {}
    share.account = Account()
    share.flush()
    procs = [ctx.Process(target=_worker, args=(share, w)) for w in range(WORKERS)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(240)
        assert p.exitcode == 0
    share.flush()
    total = WORKERS * ROUNDS
    assert share.counter == total
    assert share.nums == [2 * ROUNDS] * WORKERS
    lst = share.get("lst")
    assert len(lst) == total
    assert len(share.d) == WORKERS * (ROUNDS // 2)
    items = share.account.items
    assert len(items) == total
    for log in (share.log.entries, share.box["log"].entries):
        assert len(log) == total
    for w in range(WORKERS):
        order = [(s, tuple(v)) for s, v in share.log.entries if v[0] == w]
        assert order == [(SYMBOLS[i % len(SYMBOLS)], (w, i)) for i in range(ROUNDS)]
        assert [tuple(x) for x in lst if x[0] == w] == [(w, i) for i in reversed(range(ROUNDS))]
        assert [tuple(x) for x in items if x[0] == w] == [(w, i) for i in range(ROUNDS)]
    if share.has_numpy:
        assert share.get("arr").tolist() == [ROUNDS] * WORKERS
