"""POSIX shared-memory segments, private to the user (mode 0600).

Why not `multiprocessing.shared_memory`: before Python 3.13 every process
that *attaches* to a segment registers it with its resource tracker, which
unlinks the segment when that process exits — a worker finishing would
destroy the share under everyone else.  Here only the coordinator creates
and unlinks; everyone else maps.
"""

from __future__ import annotations

import _posixshmem
import contextlib
import mmap
import os

# Every segment name starts with this, so leftovers are easy to find (and tests
# can check that none are left in /dev/shm).
PREFIX = "accord"


class Segment:
    """A mapped shared-memory segment: `buf` is a writable mmap."""

    __slots__ = ("buf", "name", "size")

    def __init__(self, name: str, buf: mmap.mmap) -> None:
        self.name = name
        self.buf = buf
        self.size = len(buf)

    @classmethod
    def create(cls, name: str, size: int) -> Segment:
        fd = _posixshmem.shm_open("/" + name, os.O_CREAT | os.O_EXCL | os.O_RDWR, mode=0o600)
        try:
            os.ftruncate(fd, size)
            return cls(name, mmap.mmap(fd, size))
        except BaseException:
            _posixshmem.shm_unlink("/" + name)
            raise
        finally:
            os.close(fd)

    @classmethod
    def attach(cls, name: str) -> Segment:
        """Map an existing segment; FileNotFoundError if it is gone."""
        fd = _posixshmem.shm_open("/" + name, os.O_RDWR, mode=0o600)
        try:
            return cls(name, mmap.mmap(fd, os.fstat(fd).st_size))
        finally:
            os.close(fd)

    def close(self) -> None:
        # A memoryview on the mapping may still be alive somewhere (BufferError);
        # the mapping then goes when it does.
        with contextlib.suppress(BufferError):
            self.buf.close()

    def unlink(self) -> None:
        unlink(self.name)


def unlink(name: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        _posixshmem.shm_unlink("/" + name)


def leftovers(stem: str) -> list[str]:
    """Names of segments in /dev/shm whose name starts with `stem`."""
    try:
        return sorted(n for n in os.listdir("/dev/shm") if n.startswith(stem))
    except FileNotFoundError:
        return []
