"""`share.x += y` stays one AUGMENT when its read is the one that finds the
coordinator replaced and follows the owner's restart: a read then an ASSIGN
would overwrite whatever other processes added in between (the silent loss
of test_restart_loss's writers)."""

from __future__ import annotations

import os
import signal
import time

import pytest

from accord import CoordinatorLost, Share
from accord._core import _protocol as P
from accord._core._atomic import load
from accord.backends.shm import _client as shm_client
from accord.backends.shm import _control
from accord.share._link import Link


@pytest.mark.timeout(60)
def test_an_augmented_assignment_that_follows_a_restart_is_still_one_augment(monkeypatch):
    share = Share()
    try:
        share.counter = 0
        share.flush()
        client_type = type(share._link.client)
        real_kind, real_send = client_type.kind, client_type.send
        lost_once: list[str] = []

        def kind(self, name):
            # As the old incarnation's check_alive does once its coordinator
            # died (stale heartbeat, dead pid) in a process that had sent
            # nothing since restart() marked it replaced.
            if not lost_once:
                lost_once.append(name)
                raise CoordinatorLost("the coordinator is gone: its process has exited")
            return real_kind(self, name)

        sent: list[int] = []

        def send(self, op, fields, *args, **kwargs):
            sent.append(op)
            return real_send(self, op, fields, *args, **kwargs)

        monkeypatch.setattr(client_type, "kind", kind)
        monkeypatch.setattr(client_type, "send", send)
        # The owner has restarted the share: following it succeeds (here the
        # same incarnation, so that only get_name's path differs).
        monkeypatch.setattr(Link, "_follow_restart", lambda self: True)
        share.counter += 1
        assert lost_once == ["counter"]
        assert P.ASSIGN not in sent, "+= became a read and an ASSIGN: concurrent increments lost"
        assert P.AUGMENT in sent
        monkeypatch.undo()
        assert share.counter == 1
    finally:
        share.close()


def _augment_after_restart(share, used, go, results):
    share.counter  # noqa: B018  (this process's client of the incarnation about to die)
    used.set()
    assert go.wait(120)
    # Its first check of the dead incarnation: once the heartbeat is stale
    # (as in a process that sent nothing while restart() ran).
    old = share._link._client
    deadline = time.monotonic() + 60
    while time.monotonic_ns() - load(old.ctrl, _control.HEARTBEAT) < shm_client.STALE_NS:
        assert time.monotonic() < deadline, "the old heartbeat never went stale"
        time.sleep(0.01)
    assigned = []
    real = Link.assign
    Link.assign = lambda self, path, value: (assigned.append(path), real(self, path, value))[1]
    try:
        share.counter += 1
    finally:
        Link.assign = real
    share.flush()
    results.put(assigned)


@pytest.mark.timeout(120)
def test_a_process_whose_first_write_after_a_restart_is_an_augmented_assignment(
    ctx, separate_processes
):
    """No patching of the restart: a process that read the share before its
    coordinator died, and next does `share.counter += 1` after restart(),
    finds the old coordinator gone in that read, follows the restart, and
    still sends one AUGMENT."""
    share = Share()
    try:
        share.counter = 0
        share.flush()
        used, go, results = ctx.Event(), ctx.Event(), ctx.Queue()
        process = ctx.Process(target=_augment_after_restart, args=(share, used, go, results))
        process.start()
        assert used.wait(60)
        os.kill(share.coordinator_pid, signal.SIGKILL)
        share._link.client.owner_process.wait(10)
        with pytest.raises(CoordinatorLost):
            share.flush()
        assert share.restart() == []
        go.set()
        assigned = results.get(timeout=90)
        process.join(60)
        assert process.exitcode == 0
        assert assigned == [], "+= became a read and an ASSIGN after following the restart"
        assert share.counter == 1
    finally:
        share.close()
