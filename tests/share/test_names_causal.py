"""`list(share)` keeps causal order like a read: a process that learns of a
write (here through a message from its writer) finds its name there, even
while the coordinator has not applied it yet (it waits for a slow sender's
earlier write to the same object)."""

from __future__ import annotations

import queue
import threading
import time

import pytest

from accord._core._atomic import load
from accord.backends.shm._control import PENDING

BACKENDS = ("shm",)  # the ordered backends run every command in one total order


class _Gated:
    """The client's command-ring producer, whose `append` waits for a gate
    (the command is in no ring, its flag raised, until the gate opens)."""

    def __init__(self, producer, gate):
        self._producer = producer
        self._gate = gate

    def append(self, payload, timeout=None):
        assert self._gate.wait(120)
        return self._producer.append(payload)

    def __getattr__(self, name):
        return getattr(self._producer, name)


def _write_then_tell(share, written):
    share.x = 1  # returns at once; applied only after the slow sender's write
    written.set()


def _list_names(share, written, asking, outcome):
    assert written.wait(120)
    asking.set()
    outcome.put(list(share))


@pytest.mark.timeout(180)
def test_names_include_a_name_whose_write_was_queued_before_the_call(share, ctx):
    share.flush()  # connected
    client = share._link.client
    gate = threading.Event()
    client._producer = _Gated(client._producer, gate)
    slow = threading.Thread(target=setattr, args=(share, "x", bytes(1 << 20)))  # big: append
    slow.start()
    try:
        # Once the slow sender has raised x's flag, a later write to x waits for it.
        slot = share._link.read_slots(("x",))[0]
        deadline = time.monotonic() + 60
        while not load(client.ctrl, PENDING + 8 * slot):
            assert time.monotonic() < deadline, "the slow sender never raised its flag"
            time.sleep(0.01)
        written, asking, outcome = ctx.Event(), ctx.Event(), ctx.Queue()
        writer = ctx.Process(target=_write_then_tell, args=(share, written))
        reader = ctx.Process(target=_list_names, args=(share, written, asking, outcome))
        writer.start()
        reader.start()
        assert asking.wait(120)
        # The answer must wait for x's writes (the gate holds the first one
        # back): an answer now is one that misses x.
        try:
            early = outcome.get(timeout=2)
        except (queue.Empty, TimeoutError):  # (a sub-interpreter queue raises the latter)
            early = None
        assert early is None, f"names answered before x's queued write was applied: {early}"
        gate.set()
        assert "x" in outcome.get(timeout=120)
        for p in (writer, reader):
            p.join(60)
            assert p.exitcode == 0
    finally:
        gate.set()
        slow.join(60)
        client._producer = client._producer._producer
    assert share.x == 1
