"""The Backend seam: what `Share`, `Link` and `Coordinator` ask of a backend.

`Share` finds a backend by name in the registry (`_registry.backend`): a
`Backend` object that creates, attaches to and restarts shares.  A share of
it is then three parts: an *info* (what a process needs to attach; it
travels with a pickled share), a per-process *client* (reads, flags,
commands), and the coordinator's *server* (commands in, snapshots and flags
out).  These Protocols are documentation and type-checking aids only; the
implementations are `shm` (`backends/shm/_client.py`, `_server.py`),
`memory` (`backends/memory/_memory.py`) and `redis` (`backends/redis/`);
basedpyright checks each against them (each package's ``BACKEND: Backend``
and the info, client and server it leads to; each coordinator's server).
A new backend passes the same suite: add it to `BACKENDS` in
`tests/conftest.py`.
"""

from __future__ import annotations

from typing import Any, Protocol

from .._core._server import OrderedServer, PeerServer, Server

__all__ = [
    "Backend",
    "BackendClient",
    "BackendInfo",
    "BackendServer",
    "CoordinatorProcess",
    "OrderedServer",
    "PeerServer",
    "Snapshot",
]


class CoordinatorProcess(Protocol):
    """The coordinator as its owner sees it: a `subprocess.Popen`, or a
    thread shaped like one (memory)."""

    pid: int

    def poll(self) -> int | None: ...  # None while it runs
    def wait(self, timeout: float | None = None) -> int | None: ...
    def terminate(self) -> None: ...  # stop: the share is closing
    def kill(self) -> None: ...


class Backend(Protocol):
    """One backend package's entry point (its ``BACKEND``, which the registry
    returns): everything `Share` does by backend goes through it."""

    def create(
        self, name: str, url: str, key: bytes | str | None, window: float
    ) -> tuple[BackendInfo, CoordinatorProcess]:
        """Create share `name` (at `url`, for a network backend) and start
        its coordinator; `window` is the commit window (seconds)."""
        ...

    def attach(self, url: str, name: str | None, key: bytes | str | None) -> BackendInfo:
        """The live share `name` (at `url`) created elsewhere, checked to
        exist: ShareNotFound if it does not."""
        ...

    def restart(
        self, info: BackendInfo, window: float
    ) -> tuple[BackendInfo, CoordinatorProcess, list[str]]:
        """Start a new coordinator for `info`, whose coordinator died, from
        its last committed state: (the new incarnation's info, its
        coordinator, names lost with the old one).  RestartRefused if the
        backend cannot."""
        ...


class BackendInfo(Protocol):
    backend: str  # "shm", "memory", "redis"
    name: str

    @property
    def pid(self) -> int: ...  # the coordinator's process id

    def client(self) -> BackendClient: ...  # this process's client (one per share)

    def reload(self) -> BackendInfo | None: ...  # a new incarnation after a restart

    def remove(self) -> None: ...  # the owner closes: forget and delete everything


class Snapshot(Protocol):
    """What a client last read of one name."""

    @property
    def obj(self) -> Any: ...  # the unpickled object (shared by reads: never mutated)
    @property
    def kind(self) -> Any: ...  # _core._protocol.Kind: type generation, is an immutable value


class BackendClient(Protocol):
    remote: bool  # reads cost a round trip (Link then decides `+=` from `known`)
    replies: Any  # backends/_replies.Replies: replies and deferred errors of this process

    @property
    def lost(self) -> Exception | None: ...  # set once closed (or the coordinator died)

    owner_process: Any  # the coordinator process (or thread), in the owner

    def check_alive(self) -> None: ...  # CoordinatorLost / ShareClosed, cheaply
    def applied_all(self, slots: tuple[int, ...]) -> bool: ...  # every queued write applied?
    def lookup(self, name: str, slots: tuple[int, ...]) -> tuple[Snapshot | None, bool]: ...
    def known(self, name: str) -> Snapshot | None: ...  # remote clients: last read, unchecked
    def read(self, name: str) -> Any: ...  # the committed object, or MISSING
    def kind(self, name: str) -> Any: ...  # _core._protocol.Typed (type, Kind), or MISSING
    def send(
        self, op: int, fields: tuple, writes: tuple = (), reads: tuple = (), reply: bool = False
    ) -> Any: ...  # raise `writes` flags and queue; with reply, wait for its Reply
    def raise_deferred(self) -> None: ...


# The coordinator's side -- what the core's state machine calls -- is
# declared in the core, which calls it: `_core/_server.py` (Server; PeerServer
# for shm's per-connection loop, OrderedServer for memory and redis).
BackendServer = Server
