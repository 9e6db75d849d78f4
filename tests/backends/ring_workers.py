"""Worker functions of test_rings, in a module that imports nothing heavy:
sub-interpreter workers import it (a test module importing hypothesis cannot
be imported there)."""

from __future__ import annotations

import itertools
import os
import signal
import struct
import zlib

from accord.backends.shm import _ring
from accord.backends.shm._rings import BELL, Producer, RingSegment


def nothing(*_):
    return None


def entry(producer: int, seq: int, size: int) -> bytes:
    """A self-checking entry: who, which, a body, and a checksum of all."""
    body = bytes((seq + i) % 251 for i in range(size))
    head = struct.pack("<II", producer, seq) + body
    return head + struct.pack("<I", zlib.crc32(head))


def check(data: bytes) -> tuple[int, int]:
    head, (crc,) = data[:-4], struct.unpack("<I", data[-4:])
    assert zlib.crc32(head) == crc, "a torn or corrupt entry was drained"
    return struct.unpack_from("<II", head)


def append_then_die(name, count, stop):
    segment = RingSegment.attach(name)
    producer = Producer(segment, 0, name, nothing)
    for i in range(count):
        producer.append(entry(0, i, 40))
    # The next append stops at `stop` and the process dies right there: as a
    # SIGKILL arriving between two of its stores would leave it.
    _ring.ring_append(segment.buf, segment.base(0), entry(0, count, 40), 0, segment.buf, BELL, stop)
    os.kill(os.getpid(), signal.SIGKILL)


def append_forever(name):
    segment = RingSegment.attach(name)
    producer = Producer(segment, 0, name, nothing)
    for i in itertools.count():
        producer.append(entry(0, i, i % 300))


def produce(name, index, count):
    segment = RingSegment.attach(name)
    producer = Producer(segment, index, name, nothing)
    for i in range(count):
        producer.append(entry(index, i, (i * 7 + index) % 200))
    segment.close()
