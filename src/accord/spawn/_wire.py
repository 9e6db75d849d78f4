"""Length-prefixed frames on a file descriptor (a Unix socket of the pool).

Used on both sides of the pool: by the parent and by workers, processes and
sub-interpreters alike.  It needs only ``os`` and ``struct`` (and, for bulk
frames, the small shared-memory module) so it imports in any sub-interpreter.

Bulk frames: a payload of `BULK_BYTES` or more does not go through the
socket.  It is copied into a POSIX shared-memory segment (mode 0600) and the
frame carries the segment's name; the receiver copies it out and unlinks
the segment at once.  Measured with ``benchmarks/transport.py``: a 100 KB
round trip costs about 250 µs through a Unix socket, about 15 µs through
shared memory; a 100-byte one about 16 µs through the socket, a few µs
less through shared memory — a difference the pool's thread wake-ups
(about 100 µs a task) swamp, while the socket tells for free when a worker
dies and waits in ``select`` beside every other worker.  Hence both: the
socket for every frame, shared memory for the bytes of big ones.  Segment
names start with the pool's stem, so the pool removes any that a dead
worker left behind.
"""

from __future__ import annotations

import os
import secrets
import struct

_HEADER = struct.Struct("<Q")
_BULK = 1 << 63  # set in the header: the frame is the name of a segment
BULK_BYTES = 64 * 1024


def frame(payload: bytes, stem: str | None = None) -> bytes:
    """`payload` with its length in front (a segment name, if it is big)."""
    if stem is not None and len(payload) >= BULK_BYTES:
        name = _to_segment(payload, stem).encode()
        return _HEADER.pack(len(name) | _BULK) + name
    return _HEADER.pack(len(payload)) + payload


def send(fd: int, payload: bytes, stem: str | None = None) -> None:
    """Write one frame, all of it (blocking)."""
    data = memoryview(frame(payload, stem))
    while data:
        data = data[os.write(fd, data) :]


def recv(fd: int) -> bytes | None:
    """Read one frame (blocking); None at end of stream."""
    header = _read_exactly(fd, _HEADER.size)
    if header is None:
        return None
    (size,) = _HEADER.unpack(header)
    payload = _read_exactly(fd, size & ~_BULK)
    if payload is None:
        return None
    return _from_segment(payload.decode()) if size & _BULK else payload


def _read_exactly(fd: int, size: int) -> bytes | None:
    chunks = []
    while size:
        try:
            chunk = os.read(fd, min(size, 1 << 20))
        except ConnectionResetError:
            return None
        if not chunk:
            return None
        chunks.append(chunk)
        size -= len(chunk)
    return b"".join(chunks)


def _to_segment(payload: bytes, stem: str) -> str:
    from ..backends.shm._segment import Segment

    segment = Segment.create(stem + secrets.token_hex(8), len(payload))
    try:
        segment.buf[:] = payload
    finally:
        segment.close()
    return segment.name


def _from_segment(name: str) -> bytes:
    from ..backends.shm._segment import Segment, unlink

    segment = Segment.attach(name)
    unlink(name)  # the mapping stays valid; nobody else needs the name
    try:
        return bytes(segment.buf)
    finally:
        segment.close()


def unlink_leftovers(stem: str) -> None:
    from ..backends.shm import _segment

    for name in _segment.leftovers(stem):
        _segment.unlink(name)


class FrameReader:
    """Frames arriving on a non-blocking descriptor, as they become complete."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self._buffer = bytearray()

    def read(self, final: bool = False) -> tuple[list[bytes], bool]:
        """(complete frames now readable, whether the stream has ended).

        `final`: the writer is known to be dead (a killed worker), so what it
        sent is all here: read all of it and report the end of the stream,
        whether or not the end itself shows yet.
        """
        ended = False
        while not ended:
            try:
                chunk = os.read(self.fd, 1 << 16)
                ended = not chunk
                self._buffer += chunk
            except BlockingIOError:
                ended = final
            except OSError:  # reset: the worker is gone
                ended = True
            if not final:
                break
        frames = []
        buffer = self._buffer
        start = 0
        while len(buffer) - start >= _HEADER.size:
            (size,) = _HEADER.unpack_from(buffer, start)
            end = start + _HEADER.size + (size & ~_BULK)
            if len(buffer) < end:
                break
            payload = bytes(buffer[start + _HEADER.size : end])
            frames.append(_from_segment(payload.decode()) if size & _BULK else payload)
            start = end
        del buffer[:start]
        return frames, ended
