"""The shm backend's coordinator process: the core state machine driven by
this backend's loop over authenticated Unix sockets.

Run as ``python -m accord.backends.shm._coordinator`` by `Share`; it reads
its configuration as JSON on stdin, prints READY when it listens, and exits
when the owner closes the share or dies.
"""

from __future__ import annotations

import logging
import os
import pickle
import signal
import time
from collections import deque

from ..._core._coordinator import HEARTBEAT_S, SPIN_S, Coordinator, Stop
from ..._core._server import PeerServer
from .._process import coordinator_main
from . import _client
from ._server import Peer, ShmServer

log = logging.getLogger("accord.backends.shm")


class ShmCoordinator(Coordinator):
    """Commands arrive through each client's ring, in any interleaving: the
    core's per-peer queues order them; this loop drains the rings, sleeps in
    select() on the sockets (wake-up bytes, arrivals, departures) only once
    every ring is empty, and beats."""

    server: PeerServer

    def run(self) -> None:
        last_beat = 0.0
        last_input = 0.0
        server = self.server
        while True:
            # Right after a reply, poll without sleeping for a moment: a
            # client waiting for a reply usually sends its next command
            # within tens of microseconds, and waking a sleeping process
            # costs about that.  Fire-and-forget writes alone do not keep it
            # spinning (on a busy machine that takes a core from the
            # writers): their producers wake it once a ring fills up a
            # little, and it then applies them in one batch.
            busy = time.monotonic() - last_input < SPIN_S
            timeout = 0 if busy else self._timeout()
            # Commands come through the rings; sleep in select() only once
            # every ring is drained (a client that appends then wakes us).
            if timeout and server.arm():
                timeout = 0
            left = server.poll(timeout)
            server.disarm()
            for peer in list(server.peers.values()):
                self.take(peer)
            for peer in left:
                self.take(peer)  # what it appended before it died is applied
                self.peer_left(peer)
            replied = self.replied
            self.process()
            if self.replied != replied:
                last_input = time.monotonic()
            for peer in list(server.peers.values()):
                if peer.id not in self.queues:
                    server.commit(peer)
            now = time.monotonic()
            self.commit_due(now)
            self.expire_lock_waits(now)
            if now - last_beat >= HEARTBEAT_S / 2:
                last_beat = now
                server.heartbeat()
                if os.getppid() != self.owner_pid:
                    break  # the owner died without closing: nobody can close now
        self.print_held()
        server.close()

    def take(self, peer: Peer) -> bool:
        """Queue what `peer` appended to its ring; whether there was any."""
        entries = self.server.drain(peer)
        if entries is None:
            log.warning("dropping a client that wrote garbage to its ring")
            self.queues.pop(peer.id, None)
            self.server.disconnect(peer)  # poll reports it left
            return False
        if not entries:
            return False
        self.peers[peer.id] = peer
        queue = self.queues.get(peer.id)
        if queue is None:
            self.queues[peer.id] = deque(entries)
        else:
            queue.extend(entries)
        return True

    def peer_left(self, peer: Peer) -> None:
        self.peers[peer.id] = peer  # to be dropped once its queue is done
        super().peer_left(peer)


def serve(config: dict, extra: bytes, ready) -> None:
    """Coordinate the share `config` describes until it is closed (see
    `_process.coordinator_main`, which runs it)."""
    _client._clients.coordinating = config["stem"]
    # After a restart, the owner sends the last committed state (pickled
    # snapshots, from our own predecessor) behind the configuration.
    restored = pickle.loads(extra) if config.get("restore") else {}
    server: PeerServer = ShmServer(
        config["stem"], config["socket_path"], bytes.fromhex(config["key"])
    )
    coordinator = ShmCoordinator(server, config["owner_pid"], config["window"])
    try:
        coordinator.restore(restored)
        ready()  # only now may anyone read or connect
        coordinator.run()
    except Stop:
        coordinator.print_held()
        server.close()
    except BaseException:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        server.close()
        raise


def main() -> None:
    coordinator_main(serve)


if __name__ == "__main__":
    main()
