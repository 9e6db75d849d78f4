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

from ..._core import _protocol as P
from . import _keys
from ._client import RedisInfo, call, connect_redis, parse_entry, snapshot_context
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


def stream_id(position: str) -> tuple[int, int]:
    """A stream entry id ("ms-seq") as a comparable tuple; (0, 0) for ""."""
    if not position:
        return (0, 0)
    ms, _, seq = position.partition("-")
    return (int(ms), int(seq or 0))


class Committed:
    """The committed state of a share, as a coordinator taking it finds it."""

    __slots__ = ("applied", "busy", "lost", "objects", "position", "sequences", "version")

    def __init__(self) -> None:
        self.objects: dict[str, tuple[tuple[int, bool], bytes]] = {}
        self.applied: dict[int, int] = {}
        self.sequences: dict[int, int] = {}  # client id -> last sequence applied
        self.position = ""
        self.version = 0
        self.busy: tuple[str, int, str] | None = None  # (mode, attempts, position)
        self.lost: list[str] = []  # snapshots refused (bad signature)


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
        self._sequences: dict[int, int] = {}
        self._position = ""
        self.version = 0  # of the last commit (the state's "c")
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

    def load(self) -> Committed:
        """The committed state.  A snapshot whose signature does not cover
        its name, version and epoch (written without the key, or an old one
        put back, perhaps under a raised version) is refused: its name is in
        `lost`."""
        state = call(self.info, self.r.hgetall, self.keys.state)
        snaps = call(self.info, self.r.hgetall, self.keys.snap)
        found = Committed()
        for field, value in state.items():
            if field.startswith(b"v:"):
                name = field[2:].decode()
                where = f"{self.info.where()}: the snapshot of {name!r}"
                try:
                    version, generation, is_value, epoch = parse_entry(value)
                    context = snapshot_context(name, version, epoch)
                    data = self.signer.open(context, snaps.get(field[2:]), where)
                except (ValueError, TamperedPayload) as exc:
                    log.error("refused to restore share.%s: %s", name, exc)
                    found.lost.append(name)
                    continue
                found.objects[name] = ((generation, is_value), data)
            elif field[:1] == b"a":
                found.applied[int(field[1:])] = int(value)
            elif field[:1] == b"q":
                found.sequences[int(field[1:])] = int(value)
        found.position = state.get(b"pos", b"").decode()
        found.version = int(state.get(b"c", 0))
        busy = state.get(b"busy")
        if busy:
            mode, attempts, position = busy.decode().split()
            found.busy = (mode, int(attempts), position)
        self.version = found.version
        return found

    def mark_busy(self, mode: str, attempts: int, position: str) -> None:
        """Record, before applying them, the commands up to `position`
        ("B": a batch; "S": that one command, tried `attempts` times): a
        coordinator that finds it beyond the committed position knows that
        its predecessor died applying them."""
        call(self.info, self.r.hset, self.keys.state, "busy", f"{mode} {attempts} {position}")

    # -- commands in ---------------------------------------------------------

    def read(
        self, last_id: str, block_ms: int | None
    ) -> list[tuple[str, int, int, P.Command | None]]:
        """Commands after `last_id`: [(id, client id, sequence, command)],
        verified (command None: refused)."""
        found: Any = self.r.xread({self.keys.cmd: last_id}, count=1000, block=block_ms)
        out = []
        for _stream, entries in found or ():
            for entry_id, fields in entries:
                entry_id = entry_id.decode()
                waits, _, signed = (fields.get(b"d") or b"").partition(b";")
                try:
                    data = self.signer.open(b"c", signed, f"{self.info.where()}: command")
                    client_id, sequence, message = pickle.loads(data)
                    # Its waits travel beside it, in the clear (see the client).
                    op, reply_id, _waits, writes, *fields = message
                    command = P.Command(
                        op,
                        reply_id,
                        [int(x) for x in waits.split(b",")] if waits else [],
                        writes,
                        tuple(fields),
                    )
                except TamperedPayload as exc:
                    log.warning("dropped a command: %s", exc)
                    out.append((entry_id, 0, 0, None))
                    continue
                except Exception as exc:  # signed, yet not a command: a broken client
                    log.warning("dropped a garbled command: %r", exc)
                    out.append((entry_id, 0, 0, None))
                    continue
                out.append((entry_id, client_id, sequence, command))
        return out

    # -- what the coordinator buffers, flushed in one go ------------------------

    def write(self, name: str, data: bytes, kind: P.Kind = P.NO_KIND) -> None:
        self._writes[name] = (
            f"{kind.generation} {int(kind.is_value)}",
            data,
        )  # signed at the commit

    def delete(self, name: str) -> None:
        self._writes[name] = None

    def set_applied(self, slot: int, value: int) -> None:
        self._applied[slot] = value

    def committed_at(self, position: str, sequences: dict[int, int]) -> None:
        """The next commit reflects every command up to `position`, and the
        clients' `sequences` up to there."""
        self._position = position
        self._sequences.update(sequences)

    def send(self, peer: Peer, payload: bytes) -> None:
        self._replies.append((peer.id, payload))

    def peer(self, client_id: int) -> Peer:
        return Peer(client_id)

    def lost_intent(self, peer: Peer) -> tuple[int, ...]:
        return ()  # a write's flags and its command reach Redis in one step

    def drop(self, peer: Peer) -> None:
        pass  # nothing is kept per client

    def has_replies(self) -> bool:
        return bool(self._replies)

    def flush(self) -> None:
        """Commit what was buffered, then send the replies (so a reply never
        arrives before the commit it may depend on)."""
        committing = bool(self._writes or self._applied or self._sequences)
        if not (committing or self._replies):
            return
        version = self.version + 1
        with self.r.pipeline(transaction=False) as pipe:
            if committing:
                args: list = [self.epoch, self._position, version]
                kept = [(n, w) for n, w in self._writes.items() if w is not None]
                args.append(len(kept))
                epoch = str(self.epoch).encode()
                for name, (kind, data) in kept:
                    context = snapshot_context(name, b"%d" % version, epoch)
                    args += [name, kind, self.signer.sign(context, data)]
                gone = [n for n, w in self._writes.items() if w is None]
                args += [len(gone), *gone]
                args.append(len(self._sequences))
                for client_id, sequence in self._sequences.items():
                    args += [client_id, sequence]
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
        self._writes.clear()
        self._applied.clear()
        self._sequences.clear()
        self._replies.clear()
        if committing:
            if results[0] != 1:
                raise TakenOver(f"another coordinator took {self.info.where()} over")
            self.version = version

    def close(self) -> None:
        self.r.close()
