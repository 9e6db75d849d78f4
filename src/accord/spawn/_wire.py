"""Length-prefixed frames on a file descriptor (a Unix socket of the pool).

Used on both sides of the pool: by the parent and by workers, processes and
sub-interpreters alike.  It needs only ``os`` and ``struct`` (and, for bulk
frames, the small shared-memory module) so it imports in any sub-interpreter.

Bulk frames: a payload of `BULK_BYTES` or more does not go through the
socket.  The sender copies it into one of its own shared-memory buffers
(mode 0600, named under the pool's stem), reused from frame to frame so
its pages are faulted in once, not for every frame; the frame carries the
buffer's name and the lengths of its parts.  The receiver copies the parts
out and marks the buffer free (its first byte) for the sender to reuse.
The parts are the pickle stream and its out-of-band buffers (pickle
protocol 5): a numpy array's data is copied once into shared memory and
once out, never into the pickle stream.  Measured with
``benchmarks/transport.py``: a 100 KB round trip costs about 250 µs through
a Unix socket, about 15 µs through shared memory; a 100-byte one about
16 µs through the socket, a few µs less through shared memory -- a
difference the pool's thread wake-ups (about 100 µs a task) swamp, while
the socket tells for free when a worker dies and waits in ``select``
beside every other worker.  Hence both: the socket for every frame, shared
memory for the bytes of big ones.  Segment names start with the pool's
stem, so the pool (and a worker, as it ends) removes any left behind.
"""

from __future__ import annotations

import os
import struct

_HEADER = struct.Struct("<Q")
_BULK = 1 << 63  # set in the header: the frame names a buffer in shared memory
_COUNT = struct.Struct("<I")
_LENGTH = struct.Struct("<Q")
BULK_BYTES = 64 * 1024
OOB_BYTES = 64 * 1024  # buffers this big travel out of band (pickle protocol 5)
_START = 64  # the buffer's first byte says whether it is in use; parts start here
_KEEP = 4  # buffers a sender keeps per stem


def frame(payload: bytes, stem: str | None = None, buffers=()) -> bytes:
    """`payload` with its length in front (in a shared-memory buffer if big).

    `buffers`: out-of-band buffers of the pickle in `payload` (only with a
    `stem`: they always travel in shared memory).
    """
    if stem is not None and (buffers or len(payload) >= BULK_BYTES):
        body = _to_buffer([payload, *buffers], stem)
        return _HEADER.pack(len(body) | _BULK) + body
    return _HEADER.pack(len(payload)) + payload


def send(fd: int, payload: bytes, stem: str | None = None, buffers=()) -> None:
    """Write one frame, all of it (blocking)."""
    data = memoryview(frame(payload, stem, buffers))
    while data:
        data = data[os.write(fd, data) :]


def recv(fd: int) -> tuple[bytes, list] | None:
    """Read one frame (blocking): (payload, out-of-band buffers); None at end of stream."""
    header = _read_exactly(fd, _HEADER.size)
    if header is None:
        return None
    (size,) = _HEADER.unpack(header)
    payload = _read_exactly(fd, size & ~_BULK)
    if payload is None:
        return None
    return _from_buffer(payload) if size & _BULK else (payload, [])


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


# This side's buffers (stem -> segments) and the other side's, mapped (name -> segment).
# Not imported at run time: a worker in a sub-interpreter maps segments only
# when a big frame comes (annotations are not evaluated here).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from .._core._segment import Segment

_own: dict[str, list] = {}
_mapped: dict[str, Segment] = {}


def _to_buffer(parts: list, stem: str) -> bytes:
    from .._core._segment import Segment

    sizes = [memoryview(p).nbytes for p in parts]
    need = _START + sum(-(-n // 64) * 64 for n in sizes)
    mine = _own.setdefault(stem, [])
    segment = next((s for s in mine if s.size >= need and s.buf[0] == 0), None)
    if segment is None:
        if len(mine) >= _KEEP:  # make room: drop a free one, the smallest
            free = [s for s in mine if s.buf[0] == 0]
            if free:
                dropped = min(free, key=lambda s: s.size)
                mine.remove(dropped)
                dropped.unlink()
                dropped.close()
        size = 1 << max(need - 1, BULK_BYTES).bit_length()  # room to grow into
        # os.urandom, not secrets: importing secrets (hashlib) in a 3.12
        # sub-interpreter makes the process crash as it ends.
        segment = Segment.create(stem + os.urandom(8).hex(), size)
        mine.append(segment)
    buf = segment.buf
    buf[0] = 1  # in use until the receiver has copied it out
    offset = _START
    for part, n in zip(parts, sizes, strict=True):
        buf[offset : offset + n] = part
        offset += -(-n // 64) * 64
    lengths = b"".join(_LENGTH.pack(n) for n in sizes)
    return _COUNT.pack(len(sizes)) + lengths + segment.name.encode()


def _from_buffer(body: bytes) -> tuple[bytes, list]:
    from .._core._segment import Segment

    (count,) = _COUNT.unpack_from(body)
    sizes = [_LENGTH.unpack_from(body, _COUNT.size + i * _LENGTH.size)[0] for i in range(count)]
    name = body[_COUNT.size + count * _LENGTH.size :].decode()
    segment = _mapped.get(name)
    if segment is None:
        if len(_mapped) >= 4 * _KEEP:  # names the sender has dropped since
            for old in list(_mapped)[: len(_mapped) // 2]:
                _mapped.pop(old).close()
        segment = _mapped[name] = Segment.attach(name)
    view = memoryview(segment.buf)
    try:
        offset = _START
        parts = []
        for i, n in enumerate(sizes):
            part = view[offset : offset + n]
            parts.append(bytes(part) if i == 0 else bytearray(part))
            offset += -(-n // 64) * 64
    finally:
        view.release()
    segment.buf[0] = 0  # copied out: the sender may reuse it
    return parts[0], parts[1:]


def forget(stem: str) -> None:
    """Drop the buffers of names starting with `stem` (their worker has
    ended, or the pool): unmap them here.

    (Unlinking is `unlink_leftovers`'s job.)"""
    for mine in [m for m in _own if m.startswith(stem)]:
        for segment in _own.pop(mine):
            segment.close()
    for name in [n for n in _mapped if n.startswith(stem)]:
        _mapped.pop(name).close()


def unlink_leftovers(stem: str) -> None:
    from .._core import _segment

    forget(stem)
    for name in _segment.leftovers(stem):
        _segment.unlink(name)


class FrameReader:
    """Frames arriving on a non-blocking descriptor, as they become complete."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self._buffer = bytearray()

    def read(self, final: bool = False) -> tuple[list[tuple[bytes, list]], bool]:
        """(complete frames now readable, whether the stream has ended); each
        frame is (payload, out-of-band buffers).

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
            frames.append(_from_buffer(payload) if size & _BULK else (payload, []))
            start = end
        del buffer[:start]
        return frames, ended
