"""The memory backend: client, coordinator thread and their shared state.

Every thread of the process talks to the coordinator thread through one
queue; a write raises its flags and is queued under one lock, so the queue
is in flag order and the coordinator runs it as it comes
(`OrderedCoordinator`).  Snapshots are pickled bytes, as elsewhere: a read
gets its own copy, never the coordinator's object.
"""

from __future__ import annotations

import itertools
import os
import pickle
import threading
import time
from collections import deque
from multiprocessing.reduction import ForkingPickler
from typing import TYPE_CHECKING

from ..._core._coordinator import OrderedCoordinator
from ..._core._errors import (
    CoordinatorLost,
    RestartRefused,
    ShareClosed,
    ShareNotPortable,
)
from ..._core._protocol import NO_KIND, Kind, Reply
from ..._core._slots import MISSING, SLOTS
from .._clients import own_coordinator
from .._replies import Replies, kind_of

if TYPE_CHECKING:
    from .._protocol import Backend

HEARTBEAT_S = 0.1
_ids = itertools.count(1)


class _State:
    """What the client side and the coordinator thread share."""

    def __init__(self) -> None:
        self.pending = [0] * SLOTS
        self.applied = [0] * SLOTS
        self.snapshots: dict[str, tuple[int, bytes, Kind]] = {}
        self.versions = itertools.count(1)
        self.inbox: deque = deque()
        self.inbox_ready = threading.Condition()
        self.replies: deque = deque()
        self.replies_ready = threading.Condition()
        self.stopping = False
        self.thread: threading.Thread | None = None


class MemoryInfo:
    """A memory share: found by its id in this process only."""

    backend = "memory"
    __slots__ = ("id", "name")

    def __init__(self, name: str) -> None:
        self.name = name
        self.id = next(_ids)

    def __reduce__(self):
        # Pickled within the process (a value that holds the share), fine;
        # unpickled in another, refused there.
        return _find, (self.id, self.name, os.getpid())

    @property
    def pid(self) -> int:
        return os.getpid()

    def client(self) -> MemoryClient:
        client = _clients.get(self.id)
        if client is None:
            raise ShareClosed(f"share {self.name!r} is closed")
        if threading.current_thread() is client.state.thread:
            raise own_coordinator(f"share {self.name!r}")
        return client

    def reload(self) -> None:
        return None

    def remove(self) -> None:
        client = _clients.pop(self.id, None)
        if client is not None:
            client.lost = ShareClosed(f"share {self.name!r} is closed")


def _refuse_to_leave(info: MemoryInfo):
    # multiprocessing pickles for another process (a Pool task, a Process
    # started by spawn): refuse here, in the caller, rather than kill the
    # worker that would fail to unpickle it.
    raise ShareNotPortable(
        f"share {info.name!r} uses the memory backend: it lives in process {os.getpid()} "
        "(its threads) only and cannot be sent to another process; create it with "
        "Share(backend='shm') to hand it to processes"
    )


ForkingPickler.register(MemoryInfo, _refuse_to_leave)


def _find(share_id: int, name: str, pid: int) -> MemoryInfo:
    client = _clients.get(share_id)
    if pid != os.getpid() or client is None:
        raise ShareNotPortable(
            f"share {name!r} uses the memory backend: it lives in process {pid} (its "
            "threads) only; create it with Share(backend='shm') to hand it to processes"
        )
    return client.info


class _Snapshot:
    __slots__ = ("kind", "obj", "version")

    def __init__(self, version: int, kind: Kind, obj) -> None:
        self.version = version
        self.kind = kind
        self.obj = obj


class MemoryClient:
    remote = False

    def __init__(self, info: MemoryInfo, state: _State) -> None:
        self.info = info
        self.state = state
        self.cache: dict[str, _Snapshot] = {}
        self.lost: CoordinatorLost | ShareClosed | None = None
        self.owner_process = None
        self.replies = Replies()
        self._send_lock = threading.Lock()
        self._next_reply = 0

    def known(self, name: str) -> None:
        """For remote clients only (`remote` is False here): nothing unchecked."""
        return None

    def check_alive(self) -> None:
        if self.lost is not None:
            raise type(self.lost)(*self.lost.args)
        thread = self.state.thread
        if thread is None or not thread.is_alive():
            raise CoordinatorLost(f"the coordinator thread of share {self.info.name!r} is gone")

    def applied_all(self, slots) -> bool:
        pending, applied = self.state.pending, self.state.applied
        for s in slots:
            if applied[s] < pending[s]:
                return False
        return True

    def lookup(self, name: str, slots):
        clear = self.applied_all(slots)
        entry = self.state.snapshots.get(name)
        cached = self.cache.get(name)
        if cached is None or entry is None or entry[0] != cached.version:
            return None, clear
        return cached, clear

    def read(self, name: str):
        self.check_alive()
        entry = self.state.snapshots.get(name)
        if entry is None:
            self.cache.pop(name, None)
            return MISSING
        version, data, kind = entry
        cached = self.cache.get(name)
        if cached is not None and cached.version == version:
            return cached.obj
        obj = pickle.loads(data)
        self.cache[name] = _Snapshot(version, kind, obj)
        return obj

    def kind(self, name: str):
        return kind_of(self.read(name), self.cache.get(name))

    def send(self, op: int, fields: tuple, writes: tuple = (), reads: tuple = (), reply=False):
        if self.replies.deferred:
            self.replies.raise_deferred()
        self.check_alive()
        state = self.state
        with self._send_lock:  # flags and queue in one order
            pending = state.pending
            waits = []
            for s in reads:
                waits += (s, pending[s])
            for i, s in enumerate(writes):
                if i == 0:
                    waits += (s, pending[s])
                pending[s] += 1
            if reply:
                self._next_reply += 1
                reply_id = self._next_reply
            else:
                reply_id = 0
            with state.inbox_ready:
                state.inbox.append(("", 1, (op, reply_id, waits, writes, *fields)))
                state.inbox_ready.notify()
        if reply:
            return self._await(reply_id)
        return None

    def _await(self, reply_id: int) -> Reply:
        return self.replies.wait(reply_id, self._receive)

    def _receive(self) -> list[tuple]:
        state = self.state
        with state.replies_ready:
            if not state.replies:
                self.check_alive()
                state.replies_ready.wait(HEARTBEAT_S)
            payloads = list(state.replies)
            state.replies.clear()
        return [pickle.loads(p) for p in payloads]

    def raise_deferred(self) -> None:
        self.replies.raise_deferred()


class _Peer:
    __slots__ = ("id",)

    def __init__(self, client_id: int) -> None:
        self.id = client_id


class MemoryServer:
    """The coordinator thread's side: commits into the shared state."""

    def __init__(self, state: _State) -> None:
        self.state = state
        self.snapshots = self

    def peer(self, client_id: int) -> _Peer:
        return _Peer(client_id)

    def lost_intent(self, peer: _Peer) -> tuple[int, ...]:
        return ()  # a write's flags and its command are queued in one step

    def drop(self, peer: _Peer) -> None:
        pass  # nothing is kept per client

    def write(self, name: str, data: bytes, kind: Kind = NO_KIND) -> None:
        self.state.snapshots[name] = (next(self.state.versions), data, kind)

    def delete(self, name: str) -> None:
        self.state.snapshots.pop(name, None)

    def set_applied(self, slot: int, value: int) -> None:
        self.state.applied[slot] = value

    def send(self, peer: _Peer, payload: bytes) -> None:
        with self.state.replies_ready:
            self.state.replies.append(payload)
            self.state.replies_ready.notify_all()

    def heartbeat(self) -> None:
        pass

    def close(self) -> None:
        pass


class _Thread:
    """The coordinator thread, shaped like the Popen of the other backends
    (what `Share` uses to stop it)."""

    def __init__(self, state: _State) -> None:
        self.state = state
        self.pid = os.getpid()

    def poll(self):
        thread = self.state.thread
        return None if thread is not None and thread.is_alive() else 0

    def terminate(self) -> None:
        with self.state.inbox_ready:
            self.state.stopping = True
            self.state.inbox_ready.notify()

    kill = terminate

    def wait(self, timeout: float | None = None) -> int:
        if self.state.thread is not None:
            self.state.thread.join(timeout)
        return 0


def _run(coordinator, state: _State) -> None:
    while True:
        with state.inbox_ready:
            if not state.inbox and not state.stopping:
                state.inbox_ready.wait(coordinator._timeout())
            if state.stopping:
                return
            coordinator.inbox.extend(state.inbox)
            state.inbox.clear()
        coordinator.process()
        now = time.monotonic()
        coordinator.commit_due(now)
        coordinator.expire_lock_waits(now)


class MemoryBackend:
    """The memory backend's `Backend`: a coordinator thread per share."""

    def create(self, name: str, url: str, key, window: float) -> tuple[MemoryInfo, _Thread]:
        return start(name, window)

    def attach(self, url: str, name: str | None, key) -> MemoryInfo:
        raise ValueError(
            "a memory share cannot be connected to: hand its Share object to the threads "
            "that use it (or create it with Share(name=..., backend='shm') to connect by name)"
        )

    def restart(self, info, window: float):
        raise RestartRefused("a memory share cannot be restarted: its coordinator is a thread")


def start(name: str, window: float) -> tuple[MemoryInfo, _Thread]:
    state = _State()
    coordinator = OrderedCoordinator(MemoryServer(state), os.getpid(), window)
    state.thread = threading.Thread(
        target=_run, args=(coordinator, state), name=f"accord-coordinator-{name}", daemon=True
    )
    info = MemoryInfo(name)
    _clients[info.id] = MemoryClient(info, state)
    state.thread.start()
    return info, _Thread(state)


_clients: dict[int, MemoryClient] = {}
BACKEND: Backend = MemoryBackend()  # checked against the protocol by basedpyright
