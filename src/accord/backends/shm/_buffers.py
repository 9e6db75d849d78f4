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

- The coordinator's own copy shares the readers' pages.  Once an array
  (or a pandas DataFrame or Series) is committed, the coordinator's object
  is rebuilt over private copy-on-write mappings of the published segments
  (`adopt`): it reads the very pages readers map, and a page it writes
  becomes its own (4 kB per page touched, not the whole buffer).  After
  each commit that mapping moves, at the same addresses, onto the newly
  published segment, which holds exactly its contents (`_atomic`'s
  `rebase`): the pages it had copied go back.  A segment under the
  coordinator's mapping is the published one, never written; when the
  coordinator's buffer stops being that mapping (the object was replaced,
  a block reallocated), the segment is retired, never written again.

Every segment is created O_CREAT|O_EXCL with mode 0600, checked (owner,
mode) when a reader opens it, its descriptor closed once mapped, and
unlinked by the coordinator when its object is deleted or the share closes.
"""

from __future__ import annotations

import _posixshmem
import itertools
import mmap
import os
import pickle
import stat
import sys
import time
import weakref
from collections import deque

from ..._core._atomic import fetch_add, load, store
from ..._core._atomic import map as _map
from ..._core._errors import ForeignSegment
from ..._core._segment import Segment

try:
    from ..._core._atomic import address, map_private
except ImportError:  # an extension built from an older checkout: rebuild it
    address = map_private = None  # (pip install -e .); meanwhile private copies

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
# A buffer not committed for this long lets its spare copies go (the next
# partial write then fills a new one whole, once): an array written once
# costs one copy in shared memory again, not two.
SPARE_IDLE_S = 10.0
_TRIM_EVERY_S = 1.0
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


def _open_own(segname: str, size: int) -> int:
    """A read-only descriptor of one of the coordinator's own segments."""
    fd = _posixshmem.shm_open("/" + segname, os.O_RDONLY | os.O_NOFOLLOW, mode=0o600)
    try:
        st = os.fstat(fd)
        if st.st_uid != os.geteuid() or st.st_mode & 0o077 or st.st_size != size:
            raise ForeignSegment(f"/dev/shm/{segname} is no longer the segment accord made")
    except BaseException:
        os.close(fd)
        raise
    return fd


_PRESENT = 1 << 63  # /proc/self/pagemap: the page is in memory
_SWAPPED = 1 << 62
_FILE = 1 << 61  # a page of the file (or shared): not copied on write
_MAX_RANGES = 4096  # more written runs than this: copy the buffer whole
_pagemap_works: bool | None = None


def _own_pages(address: int, pages: int):
    """For each page from `address`: whether it is this process's own
    (copied on write, or swapped out) -- from /proc/self/pagemap."""
    fd = os.open("/proc/self/pagemap", os.O_RDONLY)
    try:
        raw = os.pread(fd, pages * 8, address // PAGE * 8)
    finally:
        os.close(fd)
    if len(raw) != pages * 8:
        raise OSError("short read of /proc/self/pagemap")
    np = _numpy
    assert np is not None  # (callers check)
    entries = np.frombuffer(raw, np.uint64)
    present = (entries & np.uint64(_PRESENT)) != 0
    file = (entries & np.uint64(_FILE)) != 0
    return (present & ~file) | ((entries & np.uint64(_SWAPPED)) != 0)


def _pagemap_usable() -> bool:
    """Whether this kernel tells written pages of a private mapping apart
    (checked once, on a probe: read one page, write another).  Where it
    does not, every commit of an unknown change copies the whole buffer."""
    global _pagemap_works
    if _pagemap_works is None:
        _pagemap_works = False
        if _numpy is not None and map_private is not None:
            try:
                fd = os.memfd_create("accord-pagemap-probe")
                try:
                    os.ftruncate(fd, 2 * PAGE)
                    probe = map_private(fd, 2 * PAGE, 0)
                finally:
                    os.close(fd)
                view = memoryview(probe)
                _ = view[0]  # read: the file's page
                view[PAGE] = 1  # written: our own copy
                own = _own_pages(probe.address, 2)
                view.release()
                probe.close()
                _pagemap_works = not own[0] and bool(own[1])
            except (OSError, AttributeError):
                pass
    return _pagemap_works


def _written(mirror, nbytes: int) -> list | None:
    """The byte ranges of the coordinator's private mapping `mirror`
    written since it was last mapped or rebased (its own pages), or None
    when that cannot be told (then the whole buffer counts as changed)."""
    if not _pagemap_usable():
        return None
    try:
        own = _own_pages(mirror.address, (nbytes + PAGE - 1) // PAGE)
    except OSError:
        return None
    np = _numpy
    assert np is not None  # (checked by _pagemap_usable)
    pages = np.flatnonzero(own)
    if pages.size == 0:
        return []
    breaks = np.flatnonzero(np.diff(pages) != 1)
    if breaks.size >= _MAX_RANGES:
        return None
    starts = pages[np.r_[0, breaks + 1]]
    ends = pages[np.r_[breaks, pages.size - 1]] + 1
    return [
        (int(lo) * PAGE, min(int(hi) * PAGE, nbytes)) for lo, hi in zip(starts, ends, strict=True)
    ]


def adoptable(value) -> bool:
    """Whether the coordinator may hold `value` as its own pickle, unpickled
    over mappings of the published buffers (its readers' form): an exact
    numpy array, pandas DataFrame or Series.  Other objects may hold views
    of one another's memory, which a round trip through pickle would part."""
    if map_private is None:
        return False
    kind = type(value)
    numpy = sys.modules.get("numpy")
    if numpy is not None and kind is numpy.ndarray:
        return True
    pandas = sys.modules.get("pandas")
    return pandas is not None and kind in (pandas.DataFrame, pandas.Series)


class _Buffer:
    """The segments of one buffer of one object."""

    __slots__ = (
        "base",
        "history",
        "last_publish",
        "mirror",
        "nbytes",
        "published",
        "unknown_since",
        "versions",
    )

    def __init__(self, nbytes: int) -> None:
        self.nbytes = nbytes
        self.versions: list[_Version] = []
        self.published: _Version | None = None
        self.history: deque[tuple[int, list]] = deque()  # (commit, [(lo, hi)])
        self.unknown_since = 0  # the last commit whose changes are not known
        # The coordinator's copy of this buffer, when it is a private mapping
        # of a published segment (`base`, never written while it is).
        self.mirror = None
        self.base: _Version | None = None
        self.last_publish = 0.0  # time.monotonic() of the last commit

    def _follows(self, raw: memoryview) -> bool:
        mirror = self.mirror
        return (
            mirror is not None
            and address is not None
            and raw.nbytes == self.nbytes
            and address(raw) == mirror.address
        )

    def _let_go(self) -> _Version | None:
        # The coordinator's buffer is no longer (only) our mapping: whatever
        # still views the mapping must keep seeing its segment, so that
        # segment is retired: never written again, unlinked once the new
        # version is published.
        base, self.mirror, self.base = self.base, None, None
        if base is not None and base in self.versions:
            self.versions.remove(base)
            return base
        return None

    def _rebase(self, target: _Version) -> _Version | None:
        """Move the coordinator's mapping onto `target`; if that segment
        cannot be opened, let the mapping go (returns the segment to retire)."""
        mirror = self.mirror
        assert mirror is not None  # (it follows)
        try:
            fd = _open_own(target.seg.name, PAGE + self.nbytes)
        except (OSError, ForeignSegment):
            return self._let_go()  # our copy stays on its old, retired segment
        try:
            mirror.rebase(fd, PAGE)
        finally:
            os.close(fd)
        self.base = target
        return None

    def map_mirror(self):
        """A private copy-on-write mapping of the published segment, to
        unpickle the coordinator's copy over."""
        published = self.published
        assert published is not None and map_private is not None  # (adoptable)
        fd = _open_own(published.seg.name, PAGE + self.nbytes)
        try:
            self.mirror = map_private(fd, self.nbytes, PAGE)
        finally:
            os.close(fd)
        self.base = published
        return self.mirror

    def publish(self, commit: int, raw: memoryview, ranges, new_segment) -> tuple[tuple, int]:
        follows = self._follows(raw)
        retired = None
        if self.mirror is not None and not follows:
            retired = self._let_go()
        if ranges is None and follows:
            # What changed is unknown (a DataFrame write, a method): the
            # pages the coordinator wrote since the last commit are its own.
            ranges = _written(self.mirror, self.nbytes)
        if ranges is None:
            self.history.clear()
            self.unknown_since = commit
        else:
            self.history.append((commit, ranges))
            if len(self.history) > _HISTORY:
                self.unknown_since = self.history.popleft()[0]
        target = None
        for version in list(self.versions):
            if version is self.published or version is self.base:
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
        self.last_publish = time.monotonic()
        if follows:  # the coordinator's pages: back to the readers' ones
            retired = self._rebase(target)
        if retired is not None:
            retired.drop()
        return (target.seg.name, seq, self.nbytes), copied

    def let_spares_go(self) -> None:
        """Unlink every copy but the published one (and the coordinator's
        base, which is the published one): readers that pin one keep it."""
        for version in list(self.versions):
            if version is not self.published and version is not self.base:
                self.versions.remove(version)
                version.drop()

    def drop(self) -> None:
        # (A mapping of ours that the coordinator's object still uses keeps
        # its memory until that object goes; its segment is unlinked here.)
        self.mirror = self.base = None
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
        self._trimmed = 0.0

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

    def adopt(self, name: str, value, data: bytes):
        """What the coordinator should hold for `value`, just published as
        `data` (its in-band pickle): `value` itself, or — the first time an
        adoptable object is committed, or after one of its buffers was
        reallocated — `data` unpickled over private mappings of the
        published segments, so that it holds no copy of its own."""
        buffers = self._buffers.get(name)
        if not buffers or all(b.mirror is not None for b in buffers) or not adoptable(value):
            return value
        fresh = [b for b in buffers if b.mirror is None]
        try:
            # Buffers that still follow keep their mapping (the old object
            # goes: nothing else on the coordinator refers to it).
            return pickle.loads(data, buffers=[b.mirror or b.map_mirror() for b in buffers])
        except Exception:  # keep the object as it is; never fail a commit for this
            for b in fresh:
                b.mirror = b.base = None
            return value

    def trim(self, now: float) -> None:
        """Let the spare copies of buffers idle for SPARE_IDLE_S go (called
        from the coordinator's loop; looks about once a second)."""
        if now - self._trimmed < _TRIM_EVERY_S:
            return
        self._trimmed = now
        for buffers in self._buffers.values():
            for buffer in buffers:
                if len(buffer.versions) > 1 and now - buffer.last_publish >= SPARE_IDLE_S:
                    buffer.let_spares_go()

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
