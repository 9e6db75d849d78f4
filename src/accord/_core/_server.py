"""What the coordinator's state machine asks of a backend's server.

The core (`_coordinator.Coordinator`) applies commands and commits; a
backend's server carries the results: snapshots out, write flags set,
replies sent, departed clients' intents read.  Two shapes:

* `PeerServer` (shm): commands arrive per client (its ring), in any
  interleaving; the backend's loop drains and polls it and beats, and the
  core orders commands by their waits.
* `OrderedServer` (memory, redis): commands arrive in one total order;
  `peer(client id)` makes a reply target.

Declared here, in the core, because the core is what calls them (the
backends implement them; `backends/_protocol.py` documents the whole seam).
basedpyright checks each backend's server where its coordinator is built.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Protocol


class Peer(Protocol):
    """A reply target: one client of the share."""

    @property
    def id(self) -> int: ...  # the client id the client's commands carry


class Server(Protocol):
    """What every backend's server does for the core."""

    # Where commits go: write(name, data, kind, ...) and delete(name); a
    # writer with `zero_copy` takes big buffers out of band (and one with
    # `adopt` then says what the coordinator keeps of the object: the shm
    # backend's copy-on-write mapping of them), one with `append` takes
    # change logs (see Coordinator.commit).
    snapshots: Any

    def set_applied(self, slot: int, value: int) -> None: ...  # publish a flag's applied count
    def send(self, peer: Any, payload: bytes) -> None: ...  # a reply or a deferred error
    def lost_intent(self, peer: Any) -> tuple[int, ...]: ...  # flags a dead peer never sent
    def drop(self, peer: Any) -> None: ...  # forget a departed peer
    def close(self) -> None: ...


class LivePeer(Peer, Protocol):
    """A connected client whose process can be checked."""

    @property
    def pid(self) -> int: ...  # 0 if unknown

    def alive(self) -> bool: ...


class PeerServer(Server, Protocol):
    """A server with one connection and one command ring per client (shm)."""

    @property
    def peers(self) -> dict[int, Any]: ...  # client id -> LivePeer

    def poll(self, timeout: float | None) -> Iterable[Any]:
        """Wait for input at most `timeout` s (after `arm`); the peers
        whose connection ended."""
        ...

    def arm(self) -> bool: ...  # about to sleep in poll: True if a ring has input (then do not)
    def disarm(self) -> None: ...  # awake again
    def drain(self, peer: Any) -> list[bytes] | None: ...  # its new commands; None: garbage
    def commit(
        self, peer: Any, position: int
    ) -> None: ...  # its commands before position are committed
    def disconnect(self, peer: Any) -> None: ...  # cut it off: poll then reports it left
    def heartbeat(self) -> None: ...  # tell clients the coordinator lives


class OrderedServer(Server, Protocol):
    """A server whose commands arrive in one total order (memory, redis)."""

    def peer(self, client_id: int) -> Peer: ...
