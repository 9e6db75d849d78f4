"""SQLite's writers queue at an flock beside the database instead of polling its lock."""

from __future__ import annotations

import fcntl
import logging
import os
import threading
import types

import pytest
from sqlalchemy import text
from work_helpers import wait_until

from accord.work import WorkQueue, _db

pytestmark = pytest.mark.timeout(120)

GATE_THREAD = "accord-sqlite-gate"


def _waiting_at_the_gate() -> bool:
    return any(t.name == GATE_THREAD and t.is_alive() for t in threading.enumerate())


def _write(engine) -> None:
    with engine.begin() as conn:
        conn.execute(text("UPDATE accord_queues SET created_at = created_at"))


@pytest.fixture
def engines(sqlite_db):
    # Two engines: two workers, as far as the gate can tell.
    first, second = _db.open_engine(sqlite_db), _db.open_engine(sqlite_db)
    WorkQueue([], db=sqlite_db, name="q", progress=False).dispose()  # the tables
    yield first, second
    first.dispose()
    second.dispose()


def test_a_writer_waits_at_the_gate_not_on_sqlites_lock(engines, monkeypatch):
    first, second = engines
    events = []
    take = _db._take_write_lock
    monkeypatch.setattr(_db, "_take_write_lock", lambda c: (events.append("take"), take(c)))
    writer = threading.Thread(target=_write, args=(second,))
    with first.begin() as conn:
        conn.execute(text("UPDATE accord_queues SET created_at = created_at"))
        events.clear()  # the first writer's own
        writer.start()
        # The second writer sleeps in the kernel (in a thread that waits for
        # the flock) and does not ask SQLite for its lock meanwhile.
        wait_until(_waiting_at_the_gate, 60, "the second writer to wait at the gate")
        assert events == []
        events.append("commit")
    writer.join(60)
    assert events == ["commit", "take"]
    wait_until(lambda: not _waiting_at_the_gate(), 60, "the gate's thread to end")


def test_the_gate_is_free_after_a_commit_a_rollback_and_an_error(engines, sqlite_db):
    first, _ = engines
    gate = f"{sqlite_db.removeprefix('sqlite:///')}-accord-gate"

    def free() -> bool:
        fd = os.open(gate, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            return False
        finally:
            os.close(fd)

    _write(first)
    assert free()
    with first.connect() as conn:
        conn.begin()
        conn.execute(text("UPDATE accord_queues SET created_at = created_at"))
        assert not free()  # held while the transaction runs
        conn.rollback()
    assert free()
    with pytest.raises(Exception, match="no such table"), first.begin() as conn:
        conn.execute(text("UPDATE no_such_table SET x = 1"))
    assert free()


def test_a_gate_held_too_long_is_passed_by(engines, sqlite_db, monkeypatch, caplog):
    # A process suspended in a transaction holds the gate; SQLite's lock is
    # free here, so after the timeout the writer goes on without the gate.
    caplog.set_level(logging.WARNING, logger="accord.work")
    first, _ = engines
    monkeypatch.setattr(_db, "BUSY_TIMEOUT_S", 0.3)
    holder = os.open(f"{sqlite_db.removeprefix('sqlite:///')}-accord-gate", os.O_RDONLY)
    try:
        fcntl.flock(holder, fcntl.LOCK_EX)
        _write(first)
        assert any("going on without it" in r.getMessage() for r in caplog.records)
    finally:
        fcntl.flock(holder, fcntl.LOCK_UN)
        os.close(holder)
    # The thread that waited gets the flock at last, lets go of it and ends;
    # the next transaction queues at the gate again, on a new descriptor.
    wait_until(lambda: not _waiting_at_the_gate(), 60, "the abandoned wait to end")
    caplog.clear()
    _write(first)
    assert not caplog.records


@pytest.mark.parametrize("when", ["waiting", "just given the gate"])
def test_an_interrupted_wait_leaves_the_gate_free(engines, sqlite_db, monkeypatch, when):
    # Ctrl-C while a writer waits at the gate: the flock must not stay held
    # by this process (every other worker would wait for it).
    first, _ = engines
    gate = f"{sqlite_db.removeprefix('sqlite:///')}-accord-gate"
    holder = os.open(gate, os.O_RDONLY)
    fcntl.flock(holder, fcntl.LOCK_EX)

    class Interrupted(threading.Event):
        def wait(self, timeout=None):
            if when == "just given the gate":
                fcntl.flock(holder, fcntl.LOCK_UN)
                super().wait(timeout)  # the thread has the flock now
            raise KeyboardInterrupt

    # Only the gate's own event: threading's internals keep theirs.
    fake = types.SimpleNamespace(Event=Interrupted, Lock=threading.Lock, Thread=threading.Thread)
    monkeypatch.setattr(_db, "threading", fake)
    try:
        with pytest.raises(KeyboardInterrupt):
            _write(first)
    finally:
        fcntl.flock(holder, fcntl.LOCK_UN)
        os.close(holder)
    monkeypatch.undo()
    wait_until(lambda: not _waiting_at_the_gate(), 60, "the gate's thread to end")
    probe = os.open(gate, os.O_RDONLY)
    try:
        fcntl.flock(probe, fcntl.LOCK_EX | fcntl.LOCK_NB)  # free: BlockingIOError otherwise
    finally:
        os.close(probe)
    _write(first)  # and the next transaction passes it as usual
