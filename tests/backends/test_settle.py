"""When the shm coordinator lets a ring reuse space (`ShmCoordinator.settle`):
only what committed snapshots include, but without waiting for a peer's
queue to empty, and before a busy producer finds its ring full."""

from __future__ import annotations

import itertools
import os
from collections import deque
from types import SimpleNamespace

from run_names import share_name

from accord.backends.shm._coordinator import ShmCoordinator
from accord.backends.shm._server import ShmServer

_names = itertools.count()


class _Server:
    """What settle uses of a ShmServer: its peers and the ring commits."""

    def __init__(self, *peers) -> None:
        self.peers = {peer.id: peer for peer in peers}
        self.retiring: dict = {}
        self.committed: list = []
        self.crowded: set = set()
        self.snapshots = SimpleNamespace(deleted={})

    def wants_room(self, peer) -> bool:
        return peer.id in self.crowded

    def commit(self, peer, position: int) -> None:
        peer.committed = position
        self.committed.append((peer.id, position))


def _peer(peer_id: int) -> SimpleNamespace:
    return SimpleNamespace(
        id=peer_id, received=0, drained=0, committed=0, checkpoints=deque(), batches=deque()
    )


def _drained(peer, count: int, position: int, when: float = 0.0) -> None:
    # as ShmServer.drain records a drain
    peer.received += count
    peer.drained = position
    peer.batches.append((peer.received, position, when))


def _coordinator(server) -> ShmCoordinator:
    coordinator = ShmCoordinator(server, os.getppid(), 0.002)
    coordinator.commit = lambda name: coordinator.dirty.pop(name)
    return coordinator


def test_a_queue_that_never_empties_still_lets_its_ring_reuse_what_is_applied():
    # Several processes writing one counter: each one's next command
    # usually waits for another's, so its queue is seldom empty.
    peer = _peer(0)
    server = _Server(peer)
    coordinator = _coordinator(server)
    _drained(peer, 10, 800, when=0.5)
    _drained(peer, 5, 1200, when=1.5)
    coordinator.queues[0] = deque(range(3))  # 12 applied: the first drain wholly
    coordinator.dirty["counter"] = 1.0
    coordinator.settle(applied=2.0)
    assert server.committed == []  # applied, not committed yet: kept for a restart
    coordinator.dirty.clear()  # committed since
    coordinator.settle(applied=3.0)
    assert server.committed == [(0, 800)]  # not 1200: 3 of that drain are not applied
    # What follows 800 may have been applied before 2.0 (2 of the second
    # drain were): only since that drain (1.5) is everything committed, so
    # a delete committed before then keeps its tombstone (see _settled).
    assert coordinator.settled_at[0] == 1.5
    assert coordinator._settled(10.0) == 1.5
    coordinator.queues[0].clear()
    del coordinator.queues[0]
    coordinator.settle(applied=4.0)
    assert server.committed == [(0, 800), (0, 1200)]


def test_a_crowded_ring_has_the_dirty_names_committed_at_once():
    peer = _peer(0)
    server = _Server(peer)
    coordinator = _coordinator(server)
    _drained(peer, 10, 800)
    coordinator.dirty["lst"] = 1.0  # within its window
    coordinator.settle(applied=2.0)
    assert server.committed == [] and coordinator.dirty
    server.crowded.add(0)
    coordinator.settle(applied=3.0)
    assert not coordinator.dirty and server.committed == [(0, 800)]


def test_a_ring_half_full_of_applied_commands_wants_room():
    stem = f"accord.{os.getuid()}.{share_name(f'settle-{next(_names)}')}"
    server = ShmServer(stem, f"/tmp/{stem}.sock", os.urandom(32))
    try:
        half = server.rings.ring_size // 2
        peer = SimpleNamespace(id=0, drained=half - 8, committed=0)
        assert not server.wants_room(peer)  # (and its producer does not wait)
        peer.drained = half
        assert server.wants_room(peer)
        peer.committed = 8
        assert not server.wants_room(peer)
    finally:
        server.close()
