"""A snapshot segment read while the coordinator rewrites it: every read is a
state that existed, never the length of one snapshot over the bytes of
another.  (The 8-process stress test once read `pickle data was truncated`:
a reader preempted between the header's fields took an old length with a
new epoch.)

Preemption at the worst instruction is rare, so the interleavings are
forced: the writer runs in a thread that may only make each of its atomic
stores when the reader, at a chosen one of its atomic loads, lets it.  Every
placement of the writer's stores among the reader's loads is tried.
"""

from __future__ import annotations

import io
import itertools
import os
import pickle
import threading

import pytest
from run_names import share_name

from accord._core._segment import Segment
from accord.backends.shm import _snapshots
from accord.backends.shm._snapshots import HEADER, _append_log, _read_log, _write

READER_LOADS = 10  # a read takes up to 8 loads; later ones see the writer done


def value(size: int) -> bytes:
    """A self-checking snapshot: `size` copies of one byte."""
    return pickle.dumps(bytes([size % 251]) * size)


class _Held:
    """What a reader holds: nothing yet (epoch -1), or the first snapshot."""

    def __init__(self, epoch: int, used: int) -> None:
        self.epoch, self.used = epoch, used


def _decoded(log: bytes) -> list:
    stream, found = io.BytesIO(log), []
    while stream.tell() < len(log):
        found.append(pickle.load(stream))
    return found


class _Interleaving:
    """Runs `write` in a thread whose stores wait for the reader's turn."""

    def __init__(self, monkeypatch, schedule: tuple[int, ...], write) -> None:
        self.before = {i: schedule.count(i) for i in set(schedule)}
        self.loads = 0
        self.turn, self.done = threading.Semaphore(0), threading.Semaphore(0)
        self.free = False
        real_load, real_store = _snapshots.load, _snapshots.store
        reader = threading.get_ident()

        def load(buf, offset):
            if threading.get_ident() == reader:
                self._let_writer(self.before.get(self.loads, 0))
                self.loads += 1
                if self.loads >= READER_LOADS:
                    self.finish()
            return real_load(buf, offset)

        def store(buf, offset, number):
            if not self.free:
                self.turn.acquire()
            real_store(buf, offset, number)
            self.done.release()

        monkeypatch.setattr(_snapshots, "load", load)
        monkeypatch.setattr(_snapshots, "store", store)
        self.thread = threading.Thread(target=write)
        self.thread.start()

    def _let_writer(self, steps: int) -> None:
        for _ in range(steps):
            if not self.thread.is_alive():
                return
            self.turn.release()
            assert self.done.acquire(timeout=10), "the writer did not take its step"

    def finish(self) -> None:
        self.free = True
        self.turn.release(100)  # whatever it still waits for
        self.thread.join(10)
        assert not self.thread.is_alive()


def _schedules(stores: int):
    """Every placement of `stores` writer stores before the reader's loads."""
    return itertools.combinations_with_replacement(range(READER_LOADS), stores)


@pytest.mark.parametrize("held", ["nothing", "the first snapshot"])
@pytest.mark.parametrize("then", ["rewrite", "append"])
def test_every_interleaving_of_a_read_with_a_commit_reads_a_state_that_existed(
    monkeypatch, held, then
):
    name = f"accord.{os.getuid()}.{share_name('seqlock')}"
    segment = Segment.create(name, HEADER + 64 * 1024)
    first, second = value(1000), value(2500)  # different lengths, differently filled
    try:
        stores = 5 if then == "rewrite" else 3
        for schedule in _schedules(stores):
            segment.buf[:] = bytes(len(segment.buf))
            _write(segment, first)
            assert _append_log(segment, value(1))
            mine = _Held(1, len(value(1))) if held != "nothing" else _Held(-1, 0)
            if then == "rewrite":
                commit = lambda: _write(segment, second)  # noqa: E731
            else:
                commit = lambda: _append_log(segment, value(2))  # noqa: E731
            race = _Interleaving(monkeypatch, schedule, commit)
            try:
                _version, epoch, _used, base, log = _read_log(segment, mine, lambda: None, "it")
            finally:
                race.finish()
                monkeypatch.undo()
            if base is None:  # the reader's own base still holds: only new entries
                assert epoch == 1
                entries = _decoded(log)
                assert entries in ([], [b"\x02\x02"]), schedule
            else:
                snapshot = pickle.loads(base)
                entries = _decoded(log)
                if epoch == 1:
                    assert base == first, schedule
                    assert entries in ([b"\x01"], [b"\x01", b"\x02\x02"]), schedule
                else:
                    assert (epoch, base, entries) == (2, second, []), schedule
                assert snapshot in (pickle.loads(first), pickle.loads(second))
    finally:
        segment.close()
        segment.unlink()
