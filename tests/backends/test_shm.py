"""The shm backend's parts on their own: atomics, segments, snapshots, framing."""

from __future__ import annotations

import mmap
import os
import pickle
import secrets
import stat

import pytest
from run_names import share_name

from accord._core._atomic import fetch_add, load, store
from accord._core._segment import Segment, leftovers
from accord.backends.shm import _control
from accord.backends.shm._snapshots import MISSING, SnapshotReader, SnapshotWriter


def test_atomics():
    buf = mmap.mmap(-1, 64)
    assert fetch_add(buf, 8, 5) == 0
    assert fetch_add(buf, 8, 1) == 5
    assert load(buf, 8) == 6
    store(buf, 16, 2**64 - 1)
    assert load(buf, 16) == 2**64 - 1
    with pytest.raises(IndexError):
        load(buf, 60)
    with pytest.raises(IndexError):
        load(buf, 3)
    with pytest.raises(TypeError, match=r"store\(buffer, offset, value\)"):
        store(buf, 8)
    with pytest.raises(TypeError, match=r"load\(buffer, offset\)"):
        load(buf, 8, 1)
    with pytest.raises(OverflowError):
        fetch_add(buf, 8, -1)
    assert load(buf, 8) == 6  # a refused call changes nothing


@pytest.fixture
def stem():
    name = f"accord.{os.getuid()}.{share_name(secrets.token_hex(4))}"
    yield name
    for left in leftovers(name + "~"):
        Segment.attach(left).unlink()


def test_segments_are_private_and_unlinked(stem):
    seg = Segment.create(stem + "~x", 4096)
    assert stat.S_IMODE(os.stat(f"/dev/shm/{stem}~x").st_mode) == 0o600
    other = Segment.attach(stem + "~x")
    other.buf[0] = 7
    assert seg.buf[0] == 7
    seg.unlink()
    assert leftovers(stem + "~") == []
    with pytest.raises(FileNotFoundError):
        Segment.attach(stem + "~x")


def test_snapshots_round_trip_grow_and_delete(stem):
    control = Segment.create(stem + "~control", _control.SIZE)
    _control.init_header(control.buf, os.getpid())
    writer = SnapshotWriter(control, stem)
    reader = SnapshotReader(Segment.attach(stem + "~control"), stem)
    assert reader.read("a") is MISSING
    writer.write("a", pickle.dumps([1, 2]))
    first = reader.read("a")
    assert first == [1, 2]
    assert reader.read("a") is first  # unchanged: the cached object, no unpickling
    writer.write("a", pickle.dumps(list(range(100_000))))  # outgrows its segment
    assert reader.read("a") == list(range(100_000))
    for i in range(300):  # outgrows the index
        writer.write(f"name-{i}", pickle.dumps(i))
    assert reader.read("name-299") == 299
    writer.delete("a")
    assert reader.read("a") is MISSING
    writer.close()
    control.unlink()
    assert leftovers(stem + "~") == []


def test_a_deleted_names_includes_survive_index_compaction_until_forgotten(stem):
    """restart() skips the ring entries a deleted name's tombstone includes:
    a compaction of the index must keep it (else a write before the delete,
    still in a ring, is replayed and the name comes back), until the rings
    have settled past the delete."""
    control = Segment.create(stem + "~control", _control.SIZE)
    _control.init_header(control.buf, os.getpid())
    writer = SnapshotWriter(control, stem)
    reader = SnapshotReader(Segment.attach(stem + "~control"), stem)
    try:
        writer.includes = 1
        writer.write("x", pickle.dumps(1))
        writer.includes = 2
        writer.delete("x")  # committed, then deleted
        writer.includes = 5
        writer.delete("never")  # created and deleted between two commits
        gen = load(control.buf, _control.INDEX_GEN)
        for i in range(300):
            writer.includes = 0
            writer.write(f"name-{i}", pickle.dumps(i))
        assert load(control.buf, _control.INDEX_GEN) > gen  # compacted
        found, lost, includes = reader.salvage()
        assert lost == []
        assert "x" not in found and "never" not in found
        assert includes["x"] == 2 and includes["never"] == 5
        assert pickle.loads(found["name-299"]) == 299
        # Re-created: its snapshot says what it includes, the tombstone goes.
        writer.includes = 7
        writer.write("x", pickle.dumps(3))
        assert "x" not in writer.deleted
        # Once settled, tombstones are left out of the next compaction.
        writer.forget_deleted(float("inf"))
        for i in range(300, 600):
            writer.write(f"name-{i}", pickle.dumps(i))
        reader = SnapshotReader(Segment.attach(stem + "~control"), stem)
        found, lost, includes = reader.salvage()
        assert "never" not in includes
        assert includes["x"] == 7 and pickle.loads(found["x"]) == 3
    finally:
        writer.close()
        control.unlink()


def test_a_record_being_rewritten_reads_as_the_old_or_the_new_never_as_none():
    # restart() rewrites the share's record while other processes follow
    # it: an empty file in between read as "closed" (ShareClosed in a
    # writer of test_restart_loss, 1 run in 4).
    import threading

    from accord.backends.shm import _transport
    from accord.backends.shm._client import ShareInfo, load_record, save_record

    name = share_name("record")
    infos = [
        ShareInfo(name, f"accord.{os.getuid()}.{name}~{i}", f"/nonexistent/{i}", b"k" * 32, i + 1)
        for i in range(2)
    ]
    save_record(infos[0])
    stop = threading.Event()

    def rewrite():
        i = 0
        while not stop.is_set():
            i += 1
            save_record(infos[i % 2])

    writer = threading.Thread(target=rewrite)
    writer.start()
    try:
        seen = [load_record(name) for _ in range(3000)]
    finally:
        stop.set()
        writer.join(30)
        (_transport.runtime_dir() / f"{name}.key").unlink()
    assert all(info is not None for info in seen)
    assert {info.pid for info in seen} <= {1, 2}
    assert list(_transport.runtime_dir().glob(f".{name}.*")) == []  # nothing left aside
