"""Catching up in O(change): change logs of lists, dicts, sets and deques,
replayed by readers in other processes, under every spawn backend."""

from __future__ import annotations

import collections
import hashlib

from accord import Share

BACKENDS = ("shm", "redis")  # a memory share lives in one process
DEADLINE_S = 30.0


def _mirror_reads(share, steps, ask, out):
    # A reader in another process: at each step, what it reads.
    for _ in range(steps):
        ask.get(timeout=DEADLINE_S)
        out.put(_digest(share.get("lst"), share.get("d"), share.get("s"), share.get("q")))


def _digest(lst, d, s, q) -> str:
    # (a sub-interpreter's queue carries under PIPE_BUF bytes per item)
    state = repr((lst, list(d.items()), sorted(s), list(q), q.maxlen))
    return hashlib.sha256(state.encode()).hexdigest()


def _apply_steps(share, local, step):
    lst, d, s, q = local
    ops = [
        lambda: (share.lst.append(step), lst.append(step)),
        lambda: (share.lst.insert(0, -step), lst.insert(0, -step)),
        lambda: lst and (share.lst.pop(), lst.pop()),
        lambda: (share.d.__setitem__(f"k{step % 7}", step), d.__setitem__(f"k{step % 7}", step)),
        lambda: d and (share.d.popitem(), d.popitem()),
        lambda: (share.s.add(step % 5), s.add(step % 5)),
        lambda: (share.s.discard(step % 3), s.discard(step % 3)),
        lambda: (share.q.appendleft(step), q.appendleft(step)),
        lambda: (share.q.rotate(2), q.rotate(2)),
        lambda: lst and (share.lst.__setitem__(0, "x"), lst.__setitem__(0, "x")),
        lambda: "k1" in d and (share.d.__delitem__("k1"), d.__delitem__("k1")),
    ]
    ops[step % len(ops)]()
    assert isinstance(q, collections.deque)


def test_a_reader_in_another_process_catches_up_on_containers(any_share, ctx):
    share = any_share
    share.lst = list(range(1000))
    share.d = {f"k{i}": i for i in range(1000)}
    share.s = set(range(100))
    share.q = collections.deque(range(10), maxlen=8)
    local = (list(range(1000)), {f"k{i}": i for i in range(1000)}, set(range(100)))
    local = (*local, collections.deque(range(10), maxlen=8))
    steps = 30
    ask, out = ctx.Queue(), ctx.Queue()
    reader = ctx.Process(target=_mirror_reads, args=(share, steps, ask, out))
    reader.start()
    try:
        for step in range(steps):
            ask.put(step)
            seen = out.get(timeout=DEADLINE_S)
            assert seen == _digest(*local), f"step {step}"
            _apply_steps(share, local, step)
    finally:
        reader.join(60)
    assert reader.exitcode == 0


def test_catching_up_replays_the_change_log_without_a_full_read():
    with Share() as share:
        share.lst = list(range(200_000))
        share.d = {i: i for i in range(200_000)}
        assert len(share.lst) == 200_000 and len(share.d) == 200_000
        cache = share._link.client.snapshots._cache
        epochs = (cache["lst"].epoch, cache["d"].epoch)
        for i in range(50):
            share.lst.append(-i)
            share.d[-i - 1] = i
            assert share.lst[-1] == -i and share.d[-i - 1] == i
        # Still the base read first: only the changes were applied since.
        assert (cache["lst"].epoch, cache["d"].epoch) == epochs
        assert cache["lst"].used > 0
        assert share.get("lst") == [*range(200_000), *(-i for i in range(50))]
        # A mutable item is no replayable change: a full snapshot, then a log again.
        share.lst.append([1])
        share.lst[-1].append(2)
        assert share.lst[-1] == [1, 2]
        assert cache["lst"].epoch > epochs[0]


def test_a_full_log_starts_a_new_base():
    with Share() as share:
        share.lst = []
        local = []
        len(share.lst)
        cache = share._link.client.snapshots._cache["lst"]
        first = (cache.segment.name, cache.epoch)
        for i in range(3000):  # ~ 64 KiB of log and more
            share.lst.append("x" * 40 + str(i))
            local.append("x" * 40 + str(i))
            if i % 500 == 0:
                assert share.get("lst") == local
        assert share.get("lst") == local
        cache = share._link.client.snapshots._cache["lst"]
        assert (cache.segment.name, cache.epoch) != first  # a new base (or segment)
