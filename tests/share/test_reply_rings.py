"""Replies to blocking calls of the shm backend travel through a reply ring
per client in shared memory: the client sleeps on a futex the coordinator
wakes, nothing crosses the socket, big results spill, and a coordinator
that dies while a client waits is noticed at once."""

from __future__ import annotations

import os
import signal
import socket
import threading
import time
from pathlib import Path

import pytest

from accord import CoordinatorLost, Share
from accord._core._segment import leftovers
from accord.backends.shm import _ring


class Box:
    def __init__(self):
        self.items = []

    def push(self, x):
        self.items.append(x)
        return len(self.items)

    def big(self, size):
        self.items.append(size)  # a write: runs on the coordinator
        return b"y" * size

    def wait_for(self, path):
        """Runs on the coordinator: says it started, then waits for `path`
        (the test kills the coordinator meanwhile; the deadline is a bound)."""
        self.items.append(path)  # a write: runs on the coordinator
        Path(path + ".started").touch()
        deadline = time.monotonic() + 60
        while not os.path.exists(path) and time.monotonic() < deadline:
            time.sleep(0.01)
        return "finished"


def _reply_ring_head(share) -> int:
    client = share._link.client
    rings = client._reply_rings
    return _ring.ring_state(rings.buf, rings.base(client._id))[0]


def test_a_call_is_answered_through_the_reply_ring_not_the_socket(share):
    share.box = Box()
    assert share.box.push(1) == 1
    before = _reply_ring_head(share)
    assert [share.box.push(i) for i in range(2, 12)] == list(range(2, 12))
    assert _reply_ring_head(share) > before  # ten replies went through the ring
    with pytest.raises(BlockingIOError):  # and nothing through the socket
        share._link.client._sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)


def test_a_big_result_spills_to_a_segment_removed_once_read(share):
    share.box = Box()
    size = 1 << 20  # far over half a reply ring
    assert share.box.big(size) == b"y" * size
    assert share.box.big(10) == b"y" * 10
    assert leftovers(share._link.info.stem + "~spill.") == []


def test_threads_of_one_process_each_get_their_own_reply(share):
    share.box = Box()
    results: list[int] = []
    lock = threading.Lock()

    def pushes():
        mine = [share.box.push(0) for _ in range(100)]
        with lock:
            results.extend(mine)

    threads = [threading.Thread(target=pushes) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert sorted(results) == list(range(1, 601))


@pytest.mark.timeout(120)
def test_a_coordinator_killed_while_a_client_waits_for_its_reply(tmp_path):
    marker = str(tmp_path / "go")
    with Share() as share:
        share.box = Box()
        share.flush()
        outcome: list[BaseException | str] = []

        def call():
            try:
                outcome.append(share.box.wait_for(marker))
            except BaseException as exc:  # the test looks at it
                outcome.append(exc)

        caller = threading.Thread(target=call)
        caller.start()
        deadline = time.monotonic() + 60
        while not os.path.exists(marker + ".started"):
            assert time.monotonic() < deadline, "the call never started on the coordinator"
            time.sleep(0.01)
        os.kill(share.coordinator_pid, signal.SIGKILL)
        killed = time.monotonic()
        caller.join(30)
        assert not caller.is_alive(), "the caller still waits for a dead coordinator"
        # The waiting caller is told within about a second (the contract),
        # not after its method's own deadline.
        assert time.monotonic() - killed < 10
        assert len(outcome) == 1 and isinstance(outcome[0], CoordinatorLost), outcome
