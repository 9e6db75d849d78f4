"""A process that raised a write flag and is still sending its command (a
big value on a slow link, or stopped by SIGSTOP half-way) keeps readers and
later writers waiting: its flag is never credited while it lives, so its
write is never applied after a later one."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

from accord._core._atomic import load
from accord._core._coordinator import STUCK_S
from accord.backends.shm import _control

BACKENDS = ("shm",)  # the ordered backends queue a flag and its command in one step


class _Wrapped:
    """The client's command-ring producer, with an `append` that misbehaves
    (the command is in no ring until the real append runs)."""

    def __init__(self, producer, misbehave):
        self._producer = producer
        self._misbehave = misbehave

    def append(self, payload, timeout=None):
        return self._misbehave(self._producer.append, payload)

    def __getattr__(self, name):
        return getattr(self._producer, name)


def _stop_half_way(append, data):
    os.kill(os.getpid(), signal.SIGSTOP)  # until the test sends SIGCONT
    return append(data)


class _SendSlowly:
    """A slow sender: the command takes 2 x STUCK_S to reach its ring."""

    def __init__(self, started):
        self.started = started

    def __call__(self, append, data):
        self.started.set()
        for _ in range(40):
            time.sleep(STUCK_S * 2 / 40)  # the slowness itself, not a wait for anyone
        return append(data)


def _write_through(share, misbehave, value):
    client = share._link.client
    share.flush()  # connected, and every earlier write done
    real = client._producer
    client._producer = _Wrapped(real, misbehave)
    try:
        share.big = value  # raises the flag, then appends through `misbehave`
    finally:
        client._producer = real
    share.flush()


def _stopped(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "T"
    except OSError:
        return False


def _wait_until(condition, timeout=60.0):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.01)


def _read_in_thread(share):
    got = []
    thread = threading.Thread(target=lambda: got.append(share.big), daemon=True)
    thread.start()
    return thread, got


def _flags_balanced(share):
    """Every raised flag of `big` was credited exactly once."""
    buf = share._link.client.ctrl
    for slot in share._link.write_slots(("big",)):
        pending = load(buf, _control.PENDING + 8 * slot)
        applied = load(buf, _control.APPLIED + 8 * slot)
        assert applied == pending, (slot, applied, pending)


def test_a_stopped_sender_keeps_readers_waiting(share, ctx, separate_processes):
    share.big = "first"
    share.flush()
    child = ctx.Process(target=_write_through, args=(share, _stop_half_way, "x" * 1_000_000))
    child.start()
    try:
        _wait_until(lambda: _stopped(child.pid))  # flag raised, command not yet in its ring
        share.big = "later"  # after the child's write, in flag order
        reader, got = _read_in_thread(share)
        # Longer than the coordinator's patience for a stuck flag: the
        # read must still be waiting for the stopped, live, child.
        reader.join(STUCK_S * 2)
        assert reader.is_alive(), f"read returned {got} while the writer was stopped"
    finally:
        os.kill(child.pid, signal.SIGCONT)
    reader.join(60)
    child.join(60)
    assert child.exitcode == 0
    assert got == ["later"]
    assert share.big == "later"  # the child's older write did not land last
    share.flush()
    _flags_balanced(share)


def test_a_slow_big_send_is_waited_for(share, ctx):
    share.big = "first"
    share.flush()
    started = ctx.Event()
    child = ctx.Process(target=_write_through, args=(share, _SendSlowly(started), "y" * 400_000))
    child.start()
    assert started.wait(60)  # the child's flag is raised; its send takes 2 x STUCK_S
    share.big = "later"
    reader, got = _read_in_thread(share)
    reader.join(60)
    child.join(60)
    assert child.exitcode == 0
    assert got == ["later"]
    assert share.big == "later"
    share.flush()
    _flags_balanced(share)
