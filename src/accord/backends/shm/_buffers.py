"""Big buffers of snapshots, out of band: arrays at shared-memory speed.

A snapshot pickled with protocol 5 hands its large contiguous buffers
(numpy arrays, pandas blocks, Arrow buffers: anything that gives a
`pickle.PickleBuffer`) to the coordinator instead of copying them into the
pickle.  Each buffer lives in its own segments; the snapshot segment holds
the small in-band pickle and, per buffer, (segment, sequence, size).

Guarantees:

- A reader maps each buffer segment read-only and unpickles over it: an
  array it gets is a read-only view of shared memory, with no copy; readers
  of the same version share the same pages.
- A view never changes while anyone holds it.  A buffer segment carries a
  pin count: a process pins it (one pin per process and version, released
  when the last object that views it is gone) before it uses it, and the
  coordinator writes only into a segment that is neither published nor
  pinned (`_claim`: it marks the segment's sequence odd, then checks the
  pins; a reader raises the pins, then checks the sequence — with
  sequentially consistent atomics one of them sees the other).  So a read
  returns a state that existed, never a torn one.
- A commit writes the changed bytes only: each buffer has a few segments
  (the published one, older ones), and the coordinator brings a free one
  up to date by copying the byte ranges changed since the version it holds
  (known for item writes to an array: `arr[i] = v`, `arr[2:5] = 0`,
  `arr[mask] = -1`); for any other write, the whole buffer.  A segment
  still pinned when a new one is needed is unlinked and forgotten: its
  readers keep their mapping, the memory goes with the last of them.

Every segment is created O_CREAT|O_EXCL with mode 0600, checked (owner,
mode) when a reader opens it, its descriptor closed once mapped, and
unlinked by the coordinator when its object is deleted or the share closes.
"""

from __future__ import annotations

import itertools
import mmap
import os
import pickle
import stat
import weakref
from collections import deque

from ..._errors import ForeignSegment
from ._atomic import fetch_add, load, store
from ._atomic import map as _map
from ._segment import Segment

try:
    # The exporter of reader views: an array over the mapping dies only
    # when every object made over it has (a memoryview would not tell).
    import numpy as _numpy
except ImportError:
    _numpy = None

PAGE = mmap.PAGESIZE  # the header page: the data starts page-aligned after it
SEQ = 0  # even: stable; odd: the coordinator is writing
PINS = 8  # processes holding a view of this segment's current contents
_MINUS_ONE = (1 << 64) - 1
_SEGMENTS = 3  # per buffer before pinned old ones are let go
_HISTORY = 64  # changed ranges remembered per buffer (commits)
_SQUAT_TRIES = 1000


class OutOfBand:
    """What a snapshot segment holds for an object with big buffers."""

    __slots__ = ("buffers", "data")

    def __init__(self, data: bytes, buffers: tuple) -> None:
        self.data = data  # the in-band pickle
        self.buffers = buffers  # ((segment name, sequence, size), ...)

    def __reduce__(self):
        return OutOfBand, (self.data, self.buffers)


class Stale(Exception):
    """A buffer named by a snapshot was replaced while we read it: read again."""


# -- the coordinator's side ---------------------------------------------------------


class _Version:
    """One segment of one buffer, and which commit its contents are."""

    __slots__ = ("commit", "data", "seg")

    def __init__(self, seg: Segment) -> None:
        self.seg = seg
        self.data = memoryview(seg.buf)[PAGE:]
        self.commit = -1  # nothing valid yet

    def claim(self) -> bool:
        """Mark this segment as being written, if no reader pins it."""
        buf = self.seg.buf
        seq = load(buf, SEQ)
        store(buf, SEQ, seq + 1)
        if load(buf, PINS) == 0:
            return True
        store(buf, SEQ, seq)  # untouched: readers that saw it odd read again
        return False

    def release(self) -> int:
        seq = load(self.seg.buf, SEQ) + 1
        store(self.seg.buf, SEQ, seq)
        return seq

    def drop(self) -> None:
        self.data.release()
        self.seg.unlink()
        self.seg.close()


class _Buffer:
    """The segments of one buffer of one object."""

    __slots__ = ("history", "nbytes", "published", "unknown_since", "versions")

    def __init__(self, nbytes: int) -> None:
        self.nbytes = nbytes
        self.versions: list[_Version] = []
        self.published: _Version | None = None
        self.history: deque[tuple[int, list]] = deque()  # (commit, [(lo, hi)])
        self.unknown_since = 0  # the last commit whose changes are not known

    def publish(self, commit: int, raw: memoryview, ranges, new_segment) -> tuple[tuple, int]:
        if ranges is None:
            self.history.clear()
            self.unknown_since = commit
        else:
            self.history.append((commit, ranges))
            if len(self.history) > _HISTORY:
                self.unknown_since = self.history.popleft()[0]
        target = None
        for version in list(self.versions):
            if version is self.published:
                continue
            if version.claim():
                target = version
                break
            if len(self.versions) >= _SEGMENTS:
                # Pinned by a reader (perhaps one that died): never written
                # again; its readers keep their mapping.
                self.versions.remove(version)
                version.drop()
        if target is None:
            target = _Version(new_segment(PAGE + self.nbytes))
            target.claim()
            self.versions.append(target)
        copied = 0
        if target.commit < self.unknown_since:
            target.data[: self.nbytes] = raw
            copied = self.nbytes
        else:
            for done, changed in self.history:
                if done > target.commit:
                    for lo, hi in changed:
                        target.data[lo:hi] = raw[lo:hi]
                        copied += hi - lo
        target.commit = commit
        seq = target.release()
        self.published = target
        return (target.seg.name, seq, self.nbytes), copied

    def drop(self) -> None:
        for version in self.versions:
            version.drop()
        self.versions.clear()


class BufferWriter:
    """The coordinator's buffer segments, per shared name."""

    def __init__(self, stem: str) -> None:
        self._stem = stem
        self._ids = itertools.count()
        self._buffers: dict[str, list[_Buffer]] = {}
        self._commits: dict[str, int] = {}
        self.copied = 0  # bytes copied into buffer segments, in all

    def _new_segment(self, size: int) -> Segment:
        # A name another local user took first is skipped, never used.
        for _ in range(_SQUAT_TRIES - 1):
            try:
                return Segment.create(f"{self._stem}~b{next(self._ids)}", size)
            except ForeignSegment:
                continue
        return Segment.create(f"{self._stem}~b{next(self._ids)}", size)

    def publish(self, name: str, data: bytes, raws: list, touched) -> bytes:
        """The snapshot bytes for `data` (an in-band pickle) whose big
        buffers are `raws`; `touched`: the byte ranges of the first buffer
        changed since the last commit, or None (unknown: all of them)."""
        commit = self._commits[name] = self._commits.get(name, 0) + 1
        buffers = self._buffers.get(name)
        if buffers is None or [b.nbytes for b in buffers] != [r.nbytes for r in raws]:
            self.drop(name)
            buffers = self._buffers[name] = [_Buffer(r.nbytes) for r in raws]
            touched = None
        refs = []
        for i, (buffer, raw) in enumerate(zip(buffers, raws, strict=True)):
            ranges = touched if i == 0 and len(raws) == 1 else None
            ref, copied = buffer.publish(commit, raw.cast("B"), ranges, self._new_segment)
            refs.append(ref)
            self.copied += copied
        return pickle.dumps(OutOfBand(data, tuple(refs)), 5)

    def drop(self, name: str) -> None:
        for buffer in self._buffers.pop(name, ()):
            buffer.drop()

    def close(self) -> None:
        for name in list(self._buffers):
            self.drop(name)


# -- the readers' side --------------------------------------------------------------


class _Mapping:
    """A buffer segment mapped by a reader: its header writable (the pins),
    its data read-only."""

    __slots__ = ("data", "header", "pins")

    def __init__(self, name: str) -> None:
        try:
            fd = os.open(f"/dev/shm/{name}", os.O_RDWR | os.O_NOFOLLOW)
        except PermissionError:
            raise ForeignSegment(f"/dev/shm/{name} cannot be opened (another user's)") from None
        try:
            st = os.fstat(fd)
            if (
                st.st_uid != os.geteuid()
                or st.st_mode & 0o077
                or not stat.S_ISREG(st.st_mode)
                or st.st_size <= PAGE
            ):
                raise ForeignSegment(
                    f"/dev/shm/{name} is not private to this user (owner {st.st_uid}, mode "
                    f"{stat.S_IMODE(st.st_mode):o}): it was not read. Another local user may "
                    "have created it after the share's own one went: the share is closed or "
                    "its coordinator died"
                )
            # Mappings that keep no descriptor (see _atomic.map).
            self.header = _map(fd, PAGE)
            self.data = _map(fd, st.st_size, True)
        finally:
            os.close(fd)
        self.pins: dict[int, weakref.ref] = {}  # sequence -> the pinned view


def _unpin(header, pid: int) -> None:
    # A forked child inherits views whose pins its parent holds: not its own.
    if os.getpid() == pid:
        fetch_add(header, PINS, _MINUS_ONE)


class BufferReader:
    """A process's mappings of buffer segments (used by SnapshotReader)."""

    def __init__(self) -> None:
        self._maps: dict[str, _Mapping] = {}
        self._names: dict[str, tuple[str, ...]] = {}  # shared name -> its segments

    def load(self, name: str, oob: OutOfBand):
        """The object, unpickled over pinned read-only views; Stale if a
        buffer changed since the snapshot was committed (read it again)."""
        views = [self._pinned(*ref) for ref in oob.buffers]
        segnames = tuple(ref[0] for ref in oob.buffers)
        old = self._names.get(name)
        if old != segnames:
            self._names[name] = segnames
            if old:
                live = {s for names in self._names.values() for s in names}
                for segname in old:
                    if segname not in live:
                        # Views still held keep the mapping alive.
                        self._maps.pop(segname, None)
        return pickle.loads(oob.data, buffers=views)

    def _pinned(self, segname: str, seq: int, nbytes: int):
        mapping = self._maps.get(segname)
        if mapping is None:
            try:
                mapping = self._maps[segname] = _Mapping(segname)
            except FileNotFoundError:
                raise Stale from None
        ref = mapping.pins.get(seq)
        view = ref() if ref is not None else None
        if view is not None:
            return view  # this process already pins this version
        header = mapping.header
        fetch_add(header, PINS, 1)
        if load(header, SEQ) != seq:
            fetch_add(header, PINS, _MINUS_ONE)
            raise Stale
        if _numpy is None:  # numpy-less buffers (rare): a private copy
            try:
                return mapping.data[PAGE : PAGE + nbytes]
            finally:
                fetch_add(header, PINS, _MINUS_ONE)
        view = _numpy.frombuffer(mapping.data, _numpy.uint8, nbytes, PAGE)
        weakref.finalize(view, _unpin, header, os.getpid())
        mapping.pins = {s: r for s, r in mapping.pins.items() if r() is not None}
        mapping.pins[seq] = weakref.ref(view)
        return view

    def after_fork(self) -> None:
        # The parent's pins are the parent's: read and pin afresh.
        for mapping in self._maps.values():
            mapping.pins.clear()

    def close(self) -> None:
        self._maps.clear()
        self._names.clear()


def materialize(data: bytes) -> bytes:
    """A self-contained pickle of a committed snapshot (for salvage after a
    coordinator died): buffers copied in band."""
    obj = pickle.loads(data)
    if type(obj) is not OutOfBand:
        return data
    views = []
    for segname, _seq, nbytes in obj.buffers:
        views.append(bytes(_Mapping(segname).data[PAGE : PAGE + nbytes]))
    return pickle.dumps(pickle.loads(obj.data, buffers=views), 5)
