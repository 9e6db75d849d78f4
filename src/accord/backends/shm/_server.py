"""The coordinator's side of the shm backend.

Owns every resource of a share: the control segment, the snapshot segments,
the command and reply rings, the listening socket and the key file.
`ShmServer.close()` removes all of them; nothing else ever unlinks (but the
process that made a spill segment and could not reference it, and the
client that removes a reply's spill once it read it).

Commands arrive through each client's ring (see _rings) and replies go back
through another ring per client, on which it sleeps alone; a client's
socket carries its authentication, a byte that wakes the coordinator when
it sleeps, and -- by closing -- its death.
"""

from __future__ import annotations

import contextlib
import logging
import os
import pickle
import selectors
import socket
import struct
import time
from collections import deque
from pathlib import Path

from ..._core import _protocol as P
from ..._core._atomic import store
from ..._core._errors import AccordError
from ..._core._segment import Segment, leftovers, unlink
from . import _control, _transport
from ._rings import Consumer, Producer, RingSegment
from ._snapshots import SnapshotWriter

log = logging.getLogger("accord.backends.shm")

# A reply waits this long at most for room in a client's reply ring (the
# client reads it whenever it waits for a reply; the room is only short while
# it is busy between two reads).
REPLY_TIMEOUT_S = 5.0

_INTENT = struct.Struct(f"<{3 + _control.INTENT_SLOTS}Q")


class Peer:
    """One connected client process, as the coordinator sees it."""

    __slots__ = (
        "batches",
        "broken",
        "checkpoints",
        "committed",
        "drained",
        "id",
        "outbox",
        "pid",
        "received",
        "sock",
    )

    def __init__(self, sock: socket.socket, client_id: int, replies: RingSegment, stem: str):
        self.sock = sock
        self.id = client_id
        # Its reply ring: it sleeps there alone while it waits for a reply.
        self.outbox = Producer(replies, client_id, stem, self.reading, own_bell=True)
        self.received = 0  # commands drained from its ring
        self.drained = 0  # ring position drained to
        self.committed = 0  # ring position whose commands are all in committed snapshots
        # (when, position, settled): every command before `position` was
        # applied by `when`, and committed once every name dirty then is;
        # none after it was applied before `settled` (ShmCoordinator.settle).
        self.checkpoints: deque[tuple[float, int, float]] = deque()
        # (received, position, when) after each drain not yet wholly
        # applied: once `received` of its commands are, the ring up to
        # `position` is; none of them was applied before `when`.
        self.batches: deque[tuple[int, int, float]] = deque()
        self.broken = False  # wrote garbage to its ring: being cut off
        self.pid = _peer_pid(sock)  # 0: unknown

    def reading(self) -> None:
        """For a reply waiting for room in the peer's reply ring: raise if
        the peer is gone (its replies will never be read)."""
        if not self.alive():
            raise ConnectionError(f"client {self.id} (pid {self.pid}) is gone")

    def alive(self) -> bool:
        """Is the peer's process still there?  (Its socket may outlive it,
        held open by a child it forked without going through os.fork.)"""
        if self.pid <= 0:
            return True
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        try:  # a zombie is dead too
            with open(f"/proc/{self.pid}/stat") as f:
                return f.read().rsplit(")", 1)[1].split()[0] != "Z"
        except (OSError, IndexError):
            return True


_CREDENTIALS = struct.Struct("3i")  # struct ucred: pid, uid, gid


def _peer_pid(sock: socket.socket) -> int:
    try:
        return _CREDENTIALS.unpack(
            sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _CREDENTIALS.size)
        )[0]
    except (OSError, AttributeError):
        return 0

    def __repr__(self) -> str:
        return f"<peer {self.id}>"


class ShmServer:
    def __init__(self, stem: str, socket_path: str, key: bytes) -> None:
        self.stem = stem
        self.socket_path = Path(socket_path)
        self.key = key
        self.control = Segment.create(f"{stem}~control", _control.SIZE)
        _control.init_header(self.control.buf, os.getpid())
        self.snapshots = SnapshotWriter(self.control, stem)
        try:
            self.rings = RingSegment.create(f"{stem}~rings", _control.CLIENTS, init=False)
            try:  # one per client too, read by it: replies to its blocking calls
                self.replies = RingSegment.create(f"{stem}~replies", _control.CLIENTS, init=False)
            except BaseException:
                self.rings.segment.unlink()
                raise
        except BaseException:
            self.snapshots.close()
            self.control.unlink()
            raise
        self.consumer = Consumer(self.rings)
        # Commit before a busy producer finds its ring full and sleeps: once
        # this many of its bytes wait for a commit (see ShmCoordinator.settle).
        self._crowded = self.rings.ring_size // 2
        self.listener = _transport.listen(self.socket_path)
        self.listener.setblocking(False)
        self.selector = selectors.DefaultSelector()
        self.selector.register(self.listener, selectors.EVENT_READ, None)
        self.peers: dict[int, Peer] = {}
        # Departed peers whose last commands are applied but not all in
        # committed snapshots yet: their rings are not handed out again
        # before they are (a restart would need those entries).
        self.retiring: dict[int, Peer] = {}
        self.closed = False
        self._inbox = bytearray(4096)  # wake-up bytes land here, unread
        self._free_ids = list(range(_control.CLIENTS - 1, -1, -1))
        self.heartbeat()

    # -- flags ---------------------------------------------------------------

    def set_applied(self, slot: int, value: int) -> None:
        store(self.control.buf, _control.APPLIED + 8 * slot, value)

    def heartbeat(self) -> None:
        store(self.control.buf, _control.HEARTBEAT, time.monotonic_ns())

    def lost_intent(self, peer: Peer) -> tuple[int, ...]:
        """Slots a dead peer raised for a write it never delivered."""
        seq, mask, count, *slots = _INTENT.unpack_from(
            self.control.buf, _control.intent_offset(peer.id)
        )
        if seq <= peer.received:
            return ()
        return tuple(s for i, s in enumerate(slots[:count]) if mask >> i & 1)

    # -- messages ------------------------------------------------------------

    def poll(self, timeout: float | None) -> list[Peer]:
        """Wait for input at most `timeout` s; the peers whose connection
        ended.  Call `arm()` first: a sleeping coordinator is woken by a
        byte on a client's socket."""
        left = []
        for key, _ in self.selector.select(timeout):
            if key.data is None:
                self._accept()
                continue
            peer: Peer = key.data
            try:
                size = peer.sock.recv_into(self._inbox)  # wake-up bytes only
            except (BlockingIOError, InterruptedError):
                continue
            except OSError:
                size = 0
            if not size:
                left.append(peer)
        return left

    def arm(self) -> bool:
        """About to sleep in `poll`: True if a ring has input (then do not)."""
        return self.consumer.arm()

    def disarm(self) -> None:
        self.consumer.disarm()

    def drain(self, peer: Peer) -> list[bytes] | None:
        """The commands `peer` appended since the last drain, in order;
        None if its ring holds something it could not have written."""
        if peer.broken:
            return []
        try:
            entries, position = self.consumer.drain(peer.id)
        except (AccordError, RuntimeError, ValueError, OSError) as exc:
            log.warning("client %d's command ring: %s", peer.id, exc)
            peer.broken = True
            return None
        if entries:
            peer.received += len(entries)
            peer.drained = position
            peer.batches.append((peer.received, position, time.monotonic()))
        return entries

    def wants_room(self, peer: Peer) -> bool:
        """Is `peer`'s producer waiting for room in its command ring, or
        about to (half of it holds applied commands not yet committed)?"""
        return peer.drained - peer.committed >= self._crowded or self.consumer.producer_waits(
            peer.id
        )

    def commit(self, peer: Peer, position: int) -> None:
        """Every command of `peer` before `position` is in a committed
        snapshot: its ring may reuse the space, and a restart after our
        death replays only what comes after (see ShmCoordinator.settle)."""
        self.consumer.commit(peer.id, position)
        peer.committed = position
        if position == peer.drained and self.retiring.pop(peer.id, None) is not None:
            self._free_ids.append(peer.id)

    def _accept(self) -> None:
        if not self._free_ids:
            conn, _ = self.listener.accept()  # refuse: more clients than slots
            conn.close()
            return
        client_id = self._free_ids.pop()
        # A new client starts with a clean intent record — cleaned before the
        # handshake hands it the id, after which it may write there at once.
        start = _control.intent_offset(client_id)
        self.control.buf[start : start + _control.INTENT_SIZE] = bytes(_control.INTENT_SIZE)
        self.consumer.recycle(client_id)  # and empty rings
        self.replies.reset(client_id)
        try:
            sock = _transport.accept(self.listener, self.key, client_id)
        except (OSError, _transport.AuthenticationError):  # BlockingIOError included
            self._free_ids.append(client_id)
            return
        sock.setblocking(False)
        peer = Peer(sock, client_id, self.replies, self.stem)
        self.peers[client_id] = peer
        self.selector.register(sock, selectors.EVENT_READ, peer)

    def send(self, peer: Peer, payload: bytes) -> None:
        """Put a reply in the peer's reply ring, waking it if it sleeps there
        (no system call if it does not).  A peer that leaves it full for
        REPLY_TIMEOUT_S, or dies meanwhile, loses it: it is dropped later."""
        try:
            peer.outbox.append(payload, REPLY_TIMEOUT_S)
        except (AccordError, OSError) as exc:
            log.warning("a reply to client %d was not delivered: %s", peer.id, exc)

    def post(self, peer: Peer, payload: bytes) -> bool:
        """Put an unsolicited message (a fire-and-forget command's error) in
        the peer's reply ring now, if that leaves at least half of the ring
        free for replies; never waits.  Whether it was put there."""
        try:
            return peer.outbox.offer(payload, self.replies.ring_size // 2)
        except (AccordError, OSError, ValueError):
            return False

    def unread_errors(self, peer: Peer) -> list[tuple]:
        """The errors posted to a departed peer that it never took from its
        reply ring (its process is gone: nobody else reads that ring)."""
        errors: list[tuple] = []
        try:
            consumer = Consumer(self.replies, resume=True, indexes=(peer.id,))
            for _ in range(64):  # bounded, as the ring is (nobody appends now)
                entries, position = consumer.drain(peer.id)
                if not entries:
                    break
                consumer.commit(peer.id, position)
                for data in entries:
                    # Written by us (an error: ints, bytes and str).
                    try:
                        reply_id, status, *error = pickle.loads(data)
                    except Exception:  # a reply it did not wait for: not ours to read
                        continue
                    if reply_id == 0 and status == P.ERROR:
                        errors.append(tuple(error))
        except Exception as exc:  # garbled by its process: what came before
            log.warning("client %d's reply ring: %s", peer.id, exc)
        return errors

    def disconnect(self, peer: Peer) -> None:
        """End `peer`'s connection; `poll` then reports it left."""
        with contextlib.suppress(OSError):
            peer.sock.shutdown(socket.SHUT_RDWR)

    def drop(self, peer: Peer) -> None:
        if self.peers.pop(peer.id, None) is None:
            return
        with contextlib.suppress(KeyError, ValueError):
            self.selector.unregister(peer.sock)
        peer.sock.close()
        self.consumer.release(peer.id)
        if peer.committed == peer.drained:
            self._free_ids.append(peer.id)
        else:
            self.retiring[peer.id] = peer

    # -- lifetime ------------------------------------------------------------

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        store(self.control.buf, _control.CLOSED, 1)
        for peer in list(self.peers.values()):
            self.drop(peer)
        self.selector.close()
        self.listener.close()
        for path in (self.socket_path, self.socket_path.with_suffix(".key")):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        self.snapshots.close()
        for rings in (self.rings, self.replies):
            rings.segment.unlink()
            rings.close()
        for name in leftovers(f"{self.stem}~spill."):
            unlink(name)
        self.control.unlink()
        self.control.close()


def remove_leftovers(
    stem: str, socket_path: str | None, keep_record: bool = False, spare: str | None = None
) -> None:
    """Remove whatever a dead coordinator of this share left behind (its
    socket and key file too, given `socket_path`).

    `keep_record`: leave the share's key file while it is restarted, so a
    process attaching meanwhile is told CoordinatorLost, not ShareClosed.
    `spare`: leave the segments of that stem (the incarnation being
    restarted, until its successor is ready).
    """
    for name in leftovers(stem + "~"):
        if spare is None or not name.startswith(spare + "~"):
            unlink(name)
    if socket_path is None:
        return
    paths = [Path(socket_path)]
    if not keep_record:
        paths.append(Path(socket_path).with_suffix(".key"))
    for path in paths:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
