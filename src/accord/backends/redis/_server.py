"""The coordinator's side of the redis backend.

Reads commands from the share's stream in order, and commits buffered
snapshots, applied flags and the stream position in one Lua script — only
while it holds the share (its epoch is current), so a coordinator that was
replaced can never overwrite its successor's state.
"""

from __future__ import annotations

import logging
import os
import pickle
import socket
import threading
from typing import Any

from . import _keys
from ._client import RedisInfo, call, connect_redis
from ._keys import Keys
from ._signing import Signer, TamperedPayload

log = logging.getLogger("accord.backends.redis")


class TakenOver(Exception):
    """Another coordinator took the share over (this one was presumed dead).

    Private: ends this coordinator's loop; never reaches a user."""


class Peer:
    """A client, as the coordinator sees it: where its replies go."""

    __slots__ = ("id",)

    def __init__(self, client_id: int) -> None:
        self.id = client_id


class RedisServer:
    def __init__(self, info: RedisInfo, lease_s: float) -> None:
        self.info = info
        self.keys = Keys(info.name)
        self.r = connect_redis(info.url, info.timeout)
        self.signer = Signer(info.key, info.name)
        self.lease_ms = int(lease_s * 1000)
        self.ttl_ms = int(info.ttl * 1000)
        self.token = os.urandom(16).hex()
        self.epoch: int | None = None
        self._commit = self.r.register_script(_keys.COMMIT)
        self._acquire = self.r.register_script(_keys.ACQUIRE)
        self._beat = self.r.register_script(_keys.BEAT)
        self._release = self.r.register_script(_keys.RELEASE)
        self.snapshots = self  # the coordinator calls server.snapshots.write(...)
        self._writes: dict[str, tuple[str, bytes] | None] = {}
        self._applied: dict[int, int] = {}
        self._position = ""
        self._replies: list[tuple[int, bytes]] = []
        self._lock = threading.Lock()  # the beat thread has its own connection

    # -- holding the share -----------------------------------------------------

    def acquire(self) -> int:
        """Take the lease if it is free: the new epoch; -1 if held, -2 if no share."""
        epoch = call(
            self.info,
            self._acquire,
            keys=[self.keys.state, self.keys.lease],
            args=[self.token, self.lease_ms, os.getpid(), socket.gethostname()],
        )
        if epoch > 0:
            self.epoch = epoch
        return epoch

    def beat(self, r) -> int:
        """Renew the lease and the keys' TTL: 1; 0 if the share was deleted,
        -1 if another coordinator took it."""
        assert self.epoch is not None  # beats follow a successful acquire()
        return self._beat(
            keys=[self.keys.state, self.keys.lease, self.keys.snap, self.keys.cmd],
            args=[self.token, self.epoch, self.lease_ms, self.ttl_ms],
            client=r,
        )

    def release(self) -> None:
        self._release(keys=[self.keys.lease], args=[self.token])

    def load(self):
        """The committed state: ({name: (kind, data)}, {slot: applied}, position)."""
        state = call(self.info, self.r.hgetall, self.keys.state)
        snaps = call(self.info, self.r.hgetall, self.keys.snap)
        objects, applied = {}, {}
        for field, value in state.items():
            if field.startswith(b"v:"):
                name = field[2:].decode()
                _version, generation, is_value = value.split()
                where = f"{self.info.where()}: the snapshot of {name!r}"
                data = self.signer.open(b"s" + field[2:], snaps.get(field[2:]), where)
                objects[name] = ((int(generation), is_value == b"1"), data)
            elif field[:1] == b"a":
                applied[int(field[1:])] = int(value)
        return objects, applied, state.get(b"pos", b"").decode()

    # -- commands in ---------------------------------------------------------

    def read(self, last_id: str, block_ms: int | None) -> list[tuple[str, int, tuple]]:
        """Commands after `last_id`: [(id, client id, message)], verified."""
        found: Any = self.r.xread({self.keys.cmd: last_id}, count=1000, block=block_ms)
        out = []
        for _stream, entries in found or ():
            for entry_id, fields in entries:
                entry_id = entry_id.decode()
                waits, _, signed = (fields.get(b"d") or b"").partition(b";")
                try:
                    data = self.signer.open(b"c", signed, f"{self.info.where()}: command")
                    client_id, message = pickle.loads(data)
                    message = list(message)
                    message[2] = [int(x) for x in waits.split(b",")] if waits else []
                except TamperedPayload as exc:
                    log.warning("dropped a command: %s", exc)
                    out.append((entry_id, 0, None))
                    continue
                except Exception as exc:  # signed, yet not a command: a broken client
                    log.warning("dropped a garbled command: %r", exc)
                    out.append((entry_id, 0, None))
                    continue
                out.append((entry_id, client_id, tuple(message)))
        return out

    # -- what the coordinator buffers, flushed in one go ------------------------

    def write(self, name: str, data: bytes, kind: tuple = (0, False)) -> None:
        signed = self.signer.sign(b"s" + name.encode(), data)
        self._writes[name] = (f"{kind[0]} {int(kind[1])}", signed)

    def delete(self, name: str) -> None:
        self._writes[name] = None

    def set_applied(self, slot: int, value: int) -> None:
        self._applied[slot] = value

    def committed_at(self, position: str) -> None:
        self._position = position

    def send(self, peer: Peer, payload: bytes) -> None:
        self._replies.append((peer.id, payload))

    def peer(self, client_id: int) -> Peer:
        return Peer(client_id)

    def has_replies(self) -> bool:
        return bool(self._replies)

    def flush(self) -> None:
        """Commit what was buffered, then send the replies (so a reply never
        arrives before the commit it may depend on)."""
        if not (self._writes or self._applied or self._replies):
            return
        with self.r.pipeline(transaction=False) as pipe:
            if self._writes or self._applied:
                args: list = [self.epoch, self._position]
                kept = [(n, w) for n, w in self._writes.items() if w is not None]
                args.append(len(kept))
                for name, (kind, data) in kept:
                    args += [name, kind, data]
                gone = [n for n, w in self._writes.items() if w is None]
                args += [len(gone), *gone]
                for slot, value in self._applied.items():
                    args += [slot, value]
                self._commit(
                    keys=[self.keys.state, self.keys.snap, self.keys.cmd], args=args, client=pipe
                )
            for client_id, payload in self._replies:
                key = self.keys.replies(client_id)
                pipe.rpush(key, self.signer.sign(b"r%d" % client_id, payload))
                pipe.pexpire(key, self.ttl_ms)
            results = pipe.execute()
        committed = bool(self._writes or self._applied)
        self._writes.clear()
        self._applied.clear()
        self._replies.clear()
        if committed and results[0] != 1:
            raise TakenOver(f"another coordinator took {self.info.where()} over")

    def close(self) -> None:
        self.r.close()
