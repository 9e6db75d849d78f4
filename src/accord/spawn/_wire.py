"""Length-prefixed frames on a file descriptor (a Unix socket of the pool).

Used on both sides of the pool: by the parent and by workers, processes and
sub-interpreters alike.  It only needs ``os`` and ``struct`` so it imports in
any sub-interpreter.
"""

from __future__ import annotations

import os
import struct

_HEADER = struct.Struct("<Q")


def frame(payload: bytes) -> bytes:
    """`payload` with its length in front."""
    return _HEADER.pack(len(payload)) + payload


def send(fd: int, payload: bytes) -> None:
    """Write one frame, all of it (blocking)."""
    data = memoryview(frame(payload))
    while data:
        data = data[os.write(fd, data) :]


def recv(fd: int) -> bytes | None:
    """Read one frame (blocking); None at end of stream."""
    header = _read_exactly(fd, _HEADER.size)
    if header is None:
        return None
    (size,) = _HEADER.unpack(header)
    payload = _read_exactly(fd, size)
    if payload is None:
        return None
    return payload


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


class FrameReader:
    """Frames arriving on a non-blocking descriptor, as they become complete."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self._buffer = bytearray()

    def read(self) -> tuple[list[bytes], bool]:
        """(complete frames now readable, whether the stream has ended)."""
        ended = False
        try:
            chunk = os.read(self.fd, 1 << 16)
            ended = not chunk
            self._buffer += chunk
        except BlockingIOError:
            pass
        except (ConnectionResetError, OSError):
            ended = True
        frames = []
        buffer = self._buffer
        start = 0
        while len(buffer) - start >= _HEADER.size:
            (size,) = _HEADER.unpack_from(buffer, start)
            end = start + _HEADER.size + size
            if len(buffer) < end:
                break
            frames.append(bytes(buffer[start + _HEADER.size : end]))
            start = end
        del buffer[:start]
        return frames, ended
