"""POSIX shared-memory segments, private to the user (mode 0600).

Why not `multiprocessing.shared_memory`: before Python 3.13 every process
that *attaches* to a segment registers it with its resource tracker, which
unlinks the segment when that process exits — a worker finishing would
destroy the share under everyone else.  Here only the coordinator creates
and unlinks; everyone else maps.

Trust: names in /dev/shm can be listed, and anyone may create a file there.
So a segment is only ever created new (O_CREAT|O_EXCL, 0600: a name someone
else took first is an error, never reused), and one is attached only after
`fstat` shows it is a regular file owned by this user, with no group or
other permission bits and a plausible size — before a byte of it is read.
A mapping holds no file descriptor (`_atomic.map`): a process may map
thousands of segments under a small descriptor limit.
"""

from __future__ import annotations

import _posixshmem
import contextlib
import os
import stat

from ._atomic import map as _map
from ._errors import ForeignSegment

# Every segment name starts with this, so leftovers are easy to find (and tests
# can check that none are left in /dev/shm).
PREFIX = "accord"


class Segment:
    """A mapped shared-memory segment: `buf` is a writable mmap."""

    __slots__ = ("buf", "last_end", "name", "size")

    def __init__(self, name: str, buf) -> None:
        self.name = name
        self.buf = buf  # an _atomic.Mapping: buffer protocol, slices copy
        self.size = len(buf)
        self.last_end = 0  # an index segment's: its published length, last read

    @classmethod
    def create(cls, name: str, size: int) -> Segment:
        """A new segment, private to this user; ForeignSegment if the name exists."""
        try:
            fd = _posixshmem.shm_open("/" + name, os.O_CREAT | os.O_EXCL | os.O_RDWR, mode=0o600)
        except FileExistsError:
            raise ForeignSegment(
                f"/dev/shm/{name} already exists, made by another process (perhaps another "
                "user's): accord only uses segments it creates. Remove it, or use another "
                "share name"
            ) from None
        try:
            os.ftruncate(fd, size)
            return cls(name, _map(fd, size))
        except BaseException:
            _posixshmem.shm_unlink("/" + name)
            raise
        finally:
            os.close(fd)

    @classmethod
    def attach(cls, name: str, size: int | None = None, min_size: int = 1) -> Segment:
        """Map an existing segment of this user; FileNotFoundError if it is
        gone, ForeignSegment if it is not this user's private segment or
        its size is not `size` (or under `min_size`)."""
        try:
            fd = _posixshmem.shm_open("/" + name, os.O_RDWR | os.O_NOFOLLOW, mode=0o600)
        except PermissionError:
            raise _foreign(name, "it cannot be opened (another user's)") from None
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                raise _foreign(name, "it is not a regular file")
            if info.st_uid != os.geteuid():
                raise _foreign(name, f"it belongs to uid {info.st_uid}, not {os.geteuid()}")
            if info.st_mode & 0o077:
                raise _foreign(name, f"its mode is {stat.S_IMODE(info.st_mode):o}, not 600")
            if info.st_size < min_size or (size is not None and info.st_size != size):
                raise _foreign(name, f"its size ({info.st_size} bytes) is not what accord made")
            return cls(name, _map(fd, info.st_size))
        finally:
            os.close(fd)

    def close(self) -> None:
        # A memoryview on the mapping may still be alive somewhere (BufferError);
        # the mapping then goes when it does.
        with contextlib.suppress(BufferError):
            self.buf.close()

    def unlink(self) -> None:
        unlink(self.name)


def _foreign(name: str, why: str) -> ForeignSegment:
    return ForeignSegment(
        f"/dev/shm/{name} is not a segment this user's accord made ({why}); it was not "
        "read. Another local user may have created it after the share's own one went: "
        "the share is closed or its coordinator died"
    )


def unlink(name: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        _posixshmem.shm_unlink("/" + name)


def leftovers(stem: str) -> list[str]:
    """Names of this user's segments in /dev/shm whose name starts with `stem`
    (another user's files are not ours to remove, nor could we)."""
    me = os.geteuid()
    found = []
    try:
        names = os.listdir("/dev/shm")
    except FileNotFoundError:
        return []
    for name in names:
        if name.startswith(stem):
            with contextlib.suppress(OSError):
                if os.lstat(f"/dev/shm/{name}").st_uid == me:
                    found.append(name)
    return sorted(found)
