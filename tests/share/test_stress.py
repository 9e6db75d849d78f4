"""Random concurrent operations from several processes; invariants at the end
(on the shm backend under every way to start workers, on redis under fork
and spawn)."""

from __future__ import annotations

import random

import pytest

BACKENDS = ("shm", "redis")
WORKERS = 4
OPERATIONS = 600


@pytest.fixture
def share(any_share):
    return any_share


class Account:
    def __init__(self):
        self.n = 0
        self.items = []

    def add(self, x):
        self.n += 1
        self.items.append(x)

    def take(self):
        if self.items:
            self.n -= 1
            return self.items.pop()
        return None


def _random_worker(share, seed, out):
    rnd = random.Random(seed)
    counts = {"incremented": 0, "bumped": [0, 0, 0], "guarded": 0, "appended": 0}
    added, taken = [], []
    for i in range(OPERATIONS):
        r = rnd.random()
        if r < 0.2:
            share.counter += 1
            counts["incremented"] += 1
        elif r < 0.4:
            share.account.add((seed, i))
            added.append((seed, i))
        elif r < 0.5:
            item = share.account.take()
            if item is not None:
                taken.append(tuple(item))
        elif r < 0.6:
            share.cfg["k"][seed % 3] += 1
            counts["bumped"][seed % 3] += 1
        elif r < 0.7:
            share.scratch.append(i)
            counts["appended"] += 1
        elif r < 0.8:
            assert share.counter >= 0
        elif r < 0.9:
            assert len(share.account.items) >= 0
        else:
            with share.lock("guard"):
                share.guarded = share.guarded + 1  # safe only under the lock
            counts["guarded"] += 1
    share.flush()
    out.put((counts, added, taken))


def test_random_operations_keep_every_invariant(share, ctx):
    share.counter = 0
    share.account = Account()
    share.cfg = {"k": [0, 0, 0]}
    share.scratch = []
    share.guarded = 0
    out = ctx.Queue()
    procs = [ctx.Process(target=_random_worker, args=(share, s, out)) for s in range(WORKERS)]
    for p in procs:
        p.start()
    results = [out.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    counts = [r[0] for r in results]
    added = [x for r in results for x in r[1]]
    taken = [x for r in results for x in r[2]]
    remaining = [tuple(x) for x in share.account.items]
    assert share.counter == sum(c["incremented"] for c in counts)
    assert sorted(added) == sorted(taken + remaining)  # nothing lost, nothing twice
    assert share.account.n == len(remaining)
    assert share.cfg["k"] == [sum(c["bumped"][k] for c in counts) for k in range(3)]
    assert share.guarded == sum(c["guarded"] for c in counts)
    assert len(share.scratch) == sum(c["appended"] for c in counts)
