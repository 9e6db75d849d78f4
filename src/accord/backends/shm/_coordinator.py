"""The shm backend's coordinator process: the core state machine driven by
this backend's loop over authenticated Unix sockets.

Run as ``python -m accord.backends.shm._coordinator`` by `Share`; it reads
its configuration as JSON on stdin, prints READY when it listens, and exits
when the owner closes the share or dies.
"""

from __future__ import annotations

import os
import pickle
import signal
import time
from collections import deque

from ..._core._coordinator import HEARTBEAT_S, SPIN_S, Coordinator, Stop
from ..._core._server import PeerServer
from .._process import coordinator_main
from . import _client
from ._server import ShmServer


class ShmCoordinator(Coordinator):
    """Commands arrive per client connection, in any interleaving: the core's
    per-peer queues order them; this loop polls the sockets and beats."""

    server: PeerServer

    def run(self) -> None:
        last_beat = 0.0
        last_input = 0.0
        while True:
            # Right after input, poll without sleeping for a moment: a client
            # waiting for a reply usually sends its next command within tens
            # of microseconds, and waking a sleeping process costs about that.
            busy = time.monotonic() - last_input < SPIN_S
            for peer, frames in self.server.poll(0 if busy else self._timeout()):
                last_input = time.monotonic()
                if frames is None:
                    self.peer_left(peer)
                else:
                    self.peers[peer.id] = peer
                    self.queues.setdefault(peer.id, deque()).extend(frames)
            self.process()
            now = time.monotonic()
            self.commit_due(now)
            self.expire_lock_waits(now)
            if now - last_beat >= HEARTBEAT_S / 2:
                last_beat = now
                self.server.heartbeat()
                if os.getppid() != self.owner_pid:
                    break  # the owner died without closing: nobody can close now
        self.print_held()
        self.server.close()


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
