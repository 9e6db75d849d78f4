"""The shm backend against other local users and dead writers (issue 9):
every retry loop of a reader is bounded, segments are checked on open."""

from __future__ import annotations

import os
import pickle
import secrets
import time

import pytest

from accord import ShareClosed, SnapshotNotSettled
from accord.backends.shm import _control, _snapshots
from accord.backends.shm._atomic import load, store
from accord.backends.shm._segment import Segment, leftovers, unlink
from accord.backends.shm._snapshots import SnapshotReader, SnapshotWriter


@pytest.fixture
def stem():
    name = f"accord.{os.getuid()}.test-{secrets.token_hex(4)}"
    yield name
    for left in leftovers(name + "~"):
        unlink(left)


@pytest.fixture
def pair(stem):
    """(control, writer, reader) of a share with one committed name, "a"."""
    control = Segment.create(stem + "~control", _control.SIZE)
    _control.init_header(control.buf, os.getpid())
    writer = SnapshotWriter(control, stem)
    writer.write("a", pickle.dumps([1, 2]))
    reader = SnapshotReader(Segment.attach(stem + "~control"), stem)
    yield control, writer, reader
    reader.close()
    writer.close()
    control.unlink()
    control.close()


def _segment_of(reader, name):
    return reader._refresh_index()[name][0]


def test_odd_seqlock_on_a_closed_share_raises(pair):
    control, _writer, reader = pair
    seg = Segment.attach(_segment_of(reader, "a"))
    store(seg.buf, 0, load(seg.buf, 0) + 1)  # a writer that never finishes
    store(control.buf, _control.CLOSED, 1)
    started = time.monotonic()
    with pytest.raises(ShareClosed):
        reader.read("a")
    assert time.monotonic() - started < 2.0
    seg.close()


def test_vanished_segment_on_a_closed_share_raises(pair):
    control, _writer, reader = pair
    reader._refresh_index()  # the index is mapped; "a" never read
    unlink(_segment_of(reader, "a"))
    store(control.buf, _control.CLOSED, 1)
    with pytest.raises(ShareClosed):
        reader.read("a")


def test_vanished_index_on_a_closed_share_raises(pair):
    control, _writer, reader = pair
    store(control.buf, _control.INDEX_GEN, 99)  # an index that is not there
    store(control.buf, _control.CLOSED, 1)
    with pytest.raises(ShareClosed):
        reader.read("a")


def test_a_loop_that_never_settles_gives_up_at_its_deadline(pair, monkeypatch):
    control, _writer, reader = pair
    monkeypatch.setattr(_snapshots, "SETTLE_S", 0.2)
    store(control.buf, _control.INDEX_GEN, 99)  # alive, yet never settles
    started = time.monotonic()
    with pytest.raises(SnapshotNotSettled):
        reader.read("a")
    assert time.monotonic() - started < 5.0
