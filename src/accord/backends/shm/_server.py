"""The coordinator's side of the shm backend.

Owns every resource of a share: the control segment, the snapshot segments,
the listening socket and the key file.  `ShmServer.close()` removes all of
them; nothing else ever unlinks.
"""

from __future__ import annotations

import contextlib
import os
import selectors
import socket
import struct
import time
from collections.abc import Iterator
from pathlib import Path

from . import _control, _transport
from ._atomic import store
from ._segment import Segment, unlink
from ._snapshots import SnapshotWriter

_INTENT = struct.Struct(f"<{3 + _control.INTENT_SLOTS}Q")


class Peer:
    """One connected client process, as the coordinator sees it."""

    __slots__ = ("buffer", "id", "pid", "received", "sock")

    def __init__(self, sock: socket.socket, client_id: int) -> None:
        self.sock = sock
        self.id = client_id
        self.buffer = _transport.FrameBuffer()
        self.received = 0  # complete frames received from this peer
        self.pid = _peer_pid(sock)  # 0: unknown

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
        self.listener = _transport.listen(self.socket_path)
        self.listener.setblocking(False)
        self.selector = selectors.DefaultSelector()
        self.selector.register(self.listener, selectors.EVENT_READ, None)
        self.peers: dict[int, Peer] = {}
        self.closed = False
        self._inbox = bytearray(1 << 20)  # reused: no allocation per recv
        self._inbox_view = memoryview(self._inbox)
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

    def poll(self, timeout: float | None) -> Iterator[tuple[Peer, list[bytes] | None]]:
        """Yield (peer, frames) for peers with input; frames None when it left."""
        for key, _ in self.selector.select(timeout):
            if key.data is None:
                self._accept()
                continue
            peer: Peer = key.data
            try:
                size = peer.sock.recv_into(self._inbox)
            except (BlockingIOError, InterruptedError):
                continue
            except OSError:
                size = 0
            if not size:
                yield peer, None
                continue
            peer.buffer.feed(self._inbox_view[:size])
            frames = peer.buffer.frames()
            peer.received += len(frames)
            yield peer, frames

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
        try:
            sock = _transport.accept(self.listener, self.key, client_id)
        except (OSError, _transport.AuthenticationError):  # BlockingIOError included
            self._free_ids.append(client_id)
            return
        sock.setblocking(False)
        peer = Peer(sock, client_id)
        self.peers[client_id] = peer
        self.selector.register(sock, selectors.EVENT_READ, peer)

    def send(self, peer: Peer, payload: bytes) -> None:
        """Send a reply; a peer that cannot take it any more is dropped later."""
        data = _transport.frame(payload)
        try:
            peer.sock.setblocking(True)
            peer.sock.settimeout(5.0)
            peer.sock.sendall(data)
        except OSError:
            pass
        finally:
            with contextlib.suppress(OSError):
                peer.sock.setblocking(False)

    def drop(self, peer: Peer) -> None:
        if self.peers.pop(peer.id, None) is None:
            return
        with contextlib.suppress(KeyError, ValueError):
            self.selector.unregister(peer.sock)
        peer.sock.close()
        self._free_ids.append(peer.id)

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
        self.control.unlink()
        self.control.close()


def remove_leftovers(stem: str, socket_path: str, keep_record: bool = False) -> None:
    """Remove whatever a dead coordinator of this share left behind.

    `keep_record`: leave the share's key file while it is restarted, so a
    process attaching meanwhile is told CoordinatorLost, not ShareClosed.
    """
    from ._segment import leftovers

    for name in leftovers(stem + "~"):
        unlink(name)
    paths = [Path(socket_path)]
    if not keep_record:
        paths.append(Path(socket_path).with_suffix(".key"))
    for path in paths:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
