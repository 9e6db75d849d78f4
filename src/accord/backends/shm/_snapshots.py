"""Committed snapshots in shared memory, readable by every process.

Each shared name has a segment holding its latest pickled snapshot behind a
seqlock (version odd while the coordinator writes it).  A segment that must
grow is replaced by a new one (new name) and the old one is unlinked:
readers that still map it keep a consistent, older snapshot until they next
look at the index.

The index, which maps names to segments, is an append-only log of records
in its own segment (found through the index generation in the control
segment): adding or changing a name appends one record and then publishes
the log's new length, so readers read only what was appended since they
last looked, and a record, once published, never changes.  A full log is
compacted into a new generation twice its live size: adding a name costs
O(1) amortised, whatever the number of names.

Neither side keeps a file descriptor per name (see `_segment`), and each
keeps at most MAX_MAPPED segments mapped (least recently used go first;
Linux allows about 65,000 mappings per process): a share may hold hundreds
of thousands of names.

Only the coordinator writes (`SnapshotWriter`); every process reads
(`SnapshotReader`), keeping the object it last unpickled per name and
version, so reading an unchanged object costs two version loads.
"""

from __future__ import annotations

import itertools
import os
import pickle
import struct
import threading
import time
from collections import OrderedDict
from typing import NamedTuple

from ..._core._atomic import load, store
from ..._core._changes import replay
from ..._core._errors import ForeignSegment, SegmentCorrupt, ShareClosed, SnapshotNotSettled
from ..._core._protocol import NO_KIND, Kind, Typed
from ..._core._segment import Segment
from ..._core._segment import unlink as _unlink
from ..._core._slots import MISSING
from . import _control
from ._buffers import BufferReader, BufferWriter, OutOfBand, Stale, materialize

_LENGTH = struct.Struct("<Q")
_STATE = struct.Struct("<4Q")  # length, epoch, used, includes
_LENGTH_AT, _EPOCH, _USED, _INCLUDES = 8, 16, 24, 32  # their offsets
# A snapshot segment: version (odd while the coordinator writes), length of
# the base snapshot, epoch (raised by every full snapshot), bytes of change
# log after the base (see _changes), the writes it includes (below); then
# the base and the log.
#
# "Includes": the count of writes to the name's WHOLE flag slot applied when
# it was committed, written under the same version as the data.  Writes to
# one slot are applied in the order of their tickets (the pending count each
# took, see ShmClient.send), so the snapshot holds exactly the writes to this
# name with a ticket below it: after a crash, restart() replays from the
# rings only the writes above it (ShmCoordinator.replay).  A deleted name
# keeps it in its index record (a tombstone, the count as the type
# generation) for the same use -- across index compactions too, until every
# ring has settled past the delete (SnapshotWriter.forget_deleted): until
# then a write before the delete may still be in a ring, and replaying it
# would bring the name back.
HEADER = 40
LOG_MIN = 1 << 16  # a log may grow to this or the base's size, whichever is larger
MIN_SIZE = 4096
# Segments kept mapped per process (per share); the others are mapped again
# when next used.
MAX_MAPPED = 8192
# A retry loop of a reader that has not settled after this long, with the
# coordinator alive, gives up (a live coordinator finishes a commit or a
# segment swap far sooner; a dead one is noticed within about a second).
SETTLE_S = 30.0
_EAGER_TRIES = 64  # retries before the first liveness check: a commit takes microseconds
_SQUAT_TRIES = 1000  # names taken by someone else that a writer skips before giving up

# An index record: name length, segment name length, type generation,
# flags (1: an immutable value, 2: the name was deleted); then both names.
_RECORD = struct.Struct("<IIQB")
_VALUE = 1
_DELETED = 2
INDEX_END = 8  # offset of the log's published length (records start at HEADER)


class _Patience:
    """Paces and bounds one retry loop of a reader.

    Every retry after the first few checks that the share is alive
    (`check` raises CoordinatorLost or ShareClosed) and sleeps a little, so
    a reader never spins at full speed on a writer that will not come back
    (a coordinator killed mid-commit leaves a seqlock odd for ever; a closed
    share's segments vanish while a reader looks them up).
    """

    __slots__ = ("check", "deadline", "tries", "what")

    def __init__(self, check, what: str) -> None:
        self.check = check
        self.what = what
        self.tries = 0
        self.deadline = 0.0

    def __call__(self) -> None:
        self.tries += 1
        if self.tries <= _EAGER_TRIES:
            os.sched_yield()
            return
        self.check()
        now = time.monotonic()
        if not self.deadline:
            self.deadline = now + SETTLE_S
        elif now > self.deadline:
            raise SnapshotNotSettled(
                f"{self.what} did not settle within {SETTLE_S:g} s although the coordinator "
                "is alive; it may be overloaded (or this is a bug: please report it)"
            )
        time.sleep(0.0005)  # pacing: the writer needs the CPU more than we do


def index_name(stem: str, generation: int) -> str:
    return f"{stem}~index{generation}"


class _Entry(NamedTuple):
    """What the index holds of one name."""

    segname: str  # its snapshot's segment
    kind: Kind


def _record(name: str, segname: str | None, kind: Kind) -> bytes:
    raw = name.encode("utf-8", "surrogatepass")
    seg = b"" if segname is None else segname.encode()
    flags = (_VALUE if kind.is_value else 0) | (_DELETED if segname is None else 0)
    return _RECORD.pack(len(raw), len(seg), kind.generation, flags) + raw + seg


def _parse(data: bytes, index: dict[str, _Entry], deleted: dict[str, int] | None = None) -> None:
    """Apply the records in `data` to `index` ({name: entry}); `deleted`
    gets {name: includes} of the names whose last record deletes them."""
    pos, end = 0, len(data)
    while pos < end:
        if end - pos < _RECORD.size:
            raise SegmentCorrupt("the share's index is corrupt (a truncated record)")
        nlen, slen, generation, flags = _RECORD.unpack_from(data, pos)
        pos += _RECORD.size
        if end - pos < nlen + slen:
            raise SegmentCorrupt("the share's index is corrupt (a truncated record)")
        name = data[pos : pos + nlen].decode("utf-8", "surrogatepass")
        pos += nlen
        if flags & _DELETED:
            index.pop(name, None)
            if deleted is not None:
                deleted[name] = generation
        else:
            kind = Kind(generation, bool(flags & _VALUE))
            index[name] = _Entry(data[pos : pos + slen].decode(), kind)
            if deleted is not None:
                deleted.pop(name, None)
        pos += slen


def _write(seg: Segment, data: bytes, includes: int = 0) -> None:
    buf = seg.buf
    version = load(buf, 0)
    store(buf, 0, version + 1)  # odd: writing
    buf[HEADER : HEADER + len(data)] = data
    # Each header field is one atomic store: a reader may see some fields
    # new and others old, never one field half written (see _read_log).
    store(buf, _USED, 0)
    store(buf, _LENGTH_AT, len(data))
    store(buf, _EPOCH, load(buf, _EPOCH) + 1)
    store(buf, _INCLUDES, includes)
    store(buf, 0, version + 2)


def _append_log(seg: Segment, entry: bytes, includes: int = 0) -> bool:
    """Append `entry` to the change log after the base; False if it does
    not fit (then a full snapshot is due)."""
    buf = seg.buf
    length, used = load(buf, _LENGTH_AT), load(buf, _USED)
    end = HEADER + length + used
    if end + len(entry) > seg.size or used + len(entry) > max(LOG_MIN, length):
        return False
    buf[end : end + len(entry)] = entry  # beyond `used`: no reader looks there yet
    version = load(buf, 0)
    store(buf, 0, version + 1)
    store(buf, _USED, used + len(entry))
    store(buf, _INCLUDES, includes)
    store(buf, 0, version + 2)
    return True


def _read_log(seg: Segment, cached, check, what: str):
    """(version, epoch, used, base or None, log): what changed since
    `cached` read the segment.  The base is None when `cached` holds this
    epoch's base: then `log` is only the entries it has not applied."""
    buf = seg.buf
    patience = None
    while True:
        version = load(buf, 0)
        if not version & 1:
            # One atomic load per field: each is whole, but together they may
            # mix two commits; the check below throws such a mix away.
            length, epoch, used = load(buf, _LENGTH_AT), load(buf, _EPOCH), load(buf, _USED)
            if length + used > seg.size - HEADER:  # torn: the version moves on, or corrupt
                if load(buf, 0) == version:
                    raise SegmentCorrupt(f"{what} is corrupt (length {length} > its segment)")
                continue
            if epoch == cached.epoch and used >= cached.used:
                base = None
                log = buf[HEADER + length + cached.used : HEADER + length + used]
            else:
                base = buf[HEADER : HEADER + length]
                log = buf[HEADER + length : HEADER + length + used]
            # Entries are never rewritten within an epoch: appends since we
            # looked leave our copy valid (accepting them keeps a reader of a
            # big base from starving while the coordinator keeps appending).
            # A full snapshot changes the epoch; the fields read above may
            # straddle it (an old length with the new epoch): all three must
            # still hold.
            after = load(buf, 0)
            if after == version or (
                not after & 1
                and load(buf, _EPOCH) == epoch
                and load(buf, _LENGTH_AT) == length
                and load(buf, _USED) >= used
            ):
                return version, epoch, used, base, log
        if patience is None:
            patience = _Patience(check, what)
        patience()


def _read(seg: Segment, known_version: int, check, what: str) -> tuple[int, bytes | None]:
    """(version, data); data is None when the version is `known_version`."""
    buf = seg.buf
    patience = None
    while True:
        version = load(buf, 0)
        if version == known_version:
            return version, None
        if version & 1:
            if patience is None:
                patience = _Patience(check, what)
            patience()
            continue
        (length,) = _LENGTH.unpack_from(buf, 8)
        if length > seg.size - HEADER:  # torn: the version moves on, or corrupt
            if load(buf, 0) == version:
                raise SegmentCorrupt(f"{what} is corrupt (length {length} > its segment)")
            continue
        data = buf[HEADER : HEADER + length]
        if load(buf, 0) == version:
            return version, data


class _Slot:
    """The writer's record of one name's segment."""

    __slots__ = ("kind", "name", "seg", "size")

    def __init__(self, seg: Segment, kind: Kind) -> None:
        self.name = seg.name
        self.size = seg.size
        self.seg: Segment | None = seg  # None while not mapped
        self.kind = kind


class SnapshotWriter:
    """The coordinator's side: write, replace and delete snapshots.

    Every change raises the control segment's commit counter, which lets a
    reader that saw no change skip the index and the segment entirely.
    """

    def __init__(self, control: Segment, stem: str) -> None:
        self._control = control
        self._stem = stem
        self._ids = itertools.count()
        self._slots: dict[str, _Slot] = {}
        self._mapped: OrderedDict[str, None] = OrderedDict()
        self._index_gen = 0
        self._index = Segment.create(index_name(stem, 0), MIN_SIZE)
        self._index_end = HEADER
        store(self._index.buf, INDEX_END, HEADER)
        self._live = 0  # bytes of the records a compaction keeps
        # name -> (includes, when committed) of each deleted name whose
        # tombstone a restart may still need (see HEADER): kept by compactions.
        self.deleted: dict[str, tuple[int, float]] = {}
        self.buffers = BufferWriter(stem)
        # What the next write, append or delete records as the writes it
        # includes (see HEADER): set by the coordinator before each commit.
        self.includes = 0

    def _new_segment(self, size: int) -> Segment:
        # Another local user who lists /dev/shm may create the next names
        # first: skip them (never use them), rather than fail the commit.
        for _ in range(_SQUAT_TRIES - 1):
            try:
                return Segment.create(f"{self._stem}~o{next(self._ids)}", size)
            except ForeignSegment:
                continue
        return Segment.create(f"{self._stem}~o{next(self._ids)}", size)

    def _segment(self, name: str, slot: _Slot) -> Segment:
        seg = slot.seg
        if seg is None:
            seg = slot.seg = Segment.attach(slot.name, slot.size)
        self._mapped[name] = None
        self._mapped.move_to_end(name)
        while len(self._mapped) > MAX_MAPPED:
            old, _ = self._mapped.popitem(last=False)
            evicted = self._slots[old]
            evicted.seg.close()  # pyright: ignore[reportOptionalMemberAccess]  (mapped)
            evicted.seg = None
        return seg

    zero_copy = True  # takes big buffers out of band (see _buffers)

    def write(self, name: str, data: bytes, kind: Kind = NO_KIND, raws=None, touched=None) -> None:
        """Commit `data` as the snapshot of `name`.

        `kind` describes the object (its type generation and whether it is
        an immutable value); it is kept in the index, so readers learn what
        an object is without unpickling it.  `raws`: the out-of-band
        buffers of `data` (pickle protocol 5), each kept in its own
        segments; `touched`: the byte ranges of a single buffer changed
        since the last commit, None if not known.
        """
        if raws:
            data = self.buffers.publish(name, data, raws, touched)
        else:
            self.buffers.drop(name)
        slot = self._slots.get(name)
        if slot is None and name in self.deleted:
            self._forget_tombstone(name)  # the live record below supersedes it
        if slot is None or HEADER + len(data) > slot.size:
            new = self._new_segment(max(MIN_SIZE, 2 * (HEADER + len(data))))
            _write(new, data, self.includes)
            if slot is not None:
                self._drop(name, slot)
            self._slots[name] = _Slot(new, kind)
            self._segment(name, self._slots[name])
            self._append(name, new.name, kind)  # before the old one goes
            if slot is not None:
                _unlink(slot.name)
        else:
            _write(self._segment(name, slot), data, self.includes)
            if slot.kind != kind:
                slot.kind = kind
                self._append(name, slot.name, kind)
        self._committed()

    def trim(self, now: float) -> None:
        """Let go of spare buffer copies nobody used for a while (BufferWriter.trim)."""
        self.buffers.trim(now)

    def adopt(self, name: str, value, data: bytes):
        """What the coordinator should keep for `value`, just written with
        big buffers (`data`: its in-band pickle): see BufferWriter.adopt."""
        return self.buffers.adopt(name, value, data)

    def _drop(self, name: str, slot: _Slot) -> None:
        if slot.seg is not None:
            slot.seg.close()
            slot.seg = None
        self._mapped.pop(name, None)
        self._live -= len(_record(name, slot.name, slot.kind))

    def append(self, name: str, entry: bytes, kind: Kind) -> bool:
        """Commit `entry` (logged operations, see _changes) as the change of
        `name` since its last commit; False when a full snapshot is due."""
        slot = self._slots.get(name)
        if slot is None or slot.kind != kind:
            return False
        if not _append_log(self._segment(name, slot), entry, self.includes):
            return False
        self._committed()
        return True

    def _committed(self) -> None:
        buf = self._control.buf
        store(buf, _control.COMMITS, load(buf, _control.COMMITS) + 1)

    def delete(self, name: str) -> None:
        self.buffers.drop(name)
        slot = self._slots.pop(name, None)
        if slot is not None:
            self._drop(name, slot)
        # A tombstone (see HEADER), even for a name never committed: a write
        # that created it may still be in a ring, the delete no longer.
        if slot is not None or (self.includes and self.deleted.get(name, (0,))[0] != self.includes):
            if name in self.deleted:
                self._forget_tombstone(name)
            self.deleted[name] = (self.includes, time.monotonic())
            self._append(name, None, Kind(self.includes, False))
        if slot is not None:
            _unlink(slot.name)
        self._committed()

    def forget_deleted(self, settled: float) -> None:
        """Drop (from the next compaction on) the tombstones of deletes
        committed before `settled`: every ring has committed everything
        that was applied before then, so no write before those deletes is
        left to replay."""
        for name, (_includes, when) in list(self.deleted.items()):
            if when < settled:
                self._forget_tombstone(name)

    def _forget_tombstone(self, name: str) -> None:
        includes, _when = self.deleted.pop(name)
        self._live -= len(_record(name, None, Kind(includes, False)))

    def _append(self, name: str, segname: str | None, kind: Kind) -> None:
        record = _record(name, segname, kind)
        self._live += len(record)  # live: a segment's, or a tombstone in `deleted`
        end = self._index_end
        if end + len(record) > self._index.size:
            self._compact(2 * (HEADER + self._live) + len(record))
            return  # the new generation holds every live name, this one included
        self._index.buf[end : end + len(record)] = record
        self._index_end = end + len(record)
        store(self._index.buf, INDEX_END, self._index_end)  # publish

    def _compact(self, size: int) -> None:
        old = self._index
        for attempt in range(_SQUAT_TRIES):
            self._index_gen += 1
            try:
                self._index = Segment.create(
                    index_name(self._stem, self._index_gen), max(MIN_SIZE, size)
                )
                break
            except ForeignSegment:  # taken by someone else: readers follow INDEX_GEN
                if attempt == _SQUAT_TRIES - 1:
                    raise
        data = b"".join(_record(n, s.name, s.kind) for n, s in self._slots.items())
        data += b"".join(_record(n, None, Kind(i, False)) for n, (i, _) in self.deleted.items())
        self._index.buf[HEADER : HEADER + len(data)] = data
        self._index_end = HEADER + len(data)
        self._live = len(data)
        store(self._index.buf, INDEX_END, self._index_end)
        # The generation names the index segment: readers re-resolve it.
        store(self._control.buf, _control.INDEX_GEN, self._index_gen)
        old.unlink()
        old.close()

    def close(self) -> None:
        self.buffers.close()
        for slot in self._slots.values():
            _unlink(slot.name)
            if slot.seg is not None:
                slot.seg.close()
        self._slots.clear()
        self._mapped.clear()
        self._index.unlink()
        self._index.close()


class _Cached:
    __slots__ = (
        "commits",
        "epoch",
        "kind",
        "kind_commits",
        "obj",
        "segment",
        "segname",
        "typed",
        "used",
        "version",
    )

    def __init__(self, segment: Segment) -> None:
        self.segment: Segment | None = segment  # None while not mapped
        self.segname = segment.name
        self.version = -1
        self.epoch = -1  # of the base obj was read from
        self.used = 0  # bytes of that base's change log applied to obj
        self.commits = -1
        # The commit count at which `kind` was last found current (obj's
        # type then still is the committed object's, obj itself maybe not).
        self.kind_commits = -1
        self.kind: Kind | None = None  # the index's when obj was read
        self.obj = None
        self.typed: Typed | None = None  # kind() of obj and kind, made once


def _typed(cached: _Cached, kind: Kind) -> Typed:
    # Made once per object and kind: a proxy's method call asks for it each time.
    typed = cached.typed
    if typed is None or typed.kind is not kind or typed.cls is not type(cached.obj):
        typed = cached.typed = Typed(type(cached.obj), kind)
    return typed


class SnapshotReader:
    """A process's view of the committed snapshots (safe to use from threads).

    `read(name)` returns the committed object (shared with later reads of
    the same version: callers must not mutate it) or MISSING.  It never
    waits for ever: `check()` (raising CoordinatorLost or ShareClosed) is
    called while a retry loop waits for the coordinator.
    """

    def __init__(self, control: Segment, stem: str, check=None) -> None:
        self._control = control.buf
        self._stem = stem
        self._check = self._closed if check is None else check
        self._index_gen = -1
        self._index_seg: Segment | None = None
        self._index_pos = HEADER
        self._index: dict[str, _Entry] = {}
        self._index_lock = threading.Lock()
        self._cache: dict[str, _Cached] = {}
        self._mapped: OrderedDict[str, None] = OrderedDict()
        self._buffers = BufferReader()

    def after_fork(self) -> None:
        """In a forked child: drop what the parent read (its views are
        pinned by the parent), so that reads here pin their own."""
        self._index_lock = threading.Lock()
        self._cache.clear()
        self._mapped.clear()
        self._buffers.after_fork()

    def _closed(self) -> None:
        if load(self._control, _control.CLOSED):
            raise ShareClosed(f"share {self._stem!r} is closed")

    def _refresh_index(self) -> dict[str, _Entry]:
        gen = load(self._control, _control.INDEX_GEN)
        seg = self._index_seg  # None only before the first refresh (gen -1)
        if gen == self._index_gen and load(seg.buf, INDEX_END) == self._index_pos:  # pyright: ignore[reportOptionalMemberAccess]
            return self._index  # nothing appended since we looked
        with self._index_lock:  # one thread applies what was appended
            return self._refresh_locked(load(self._control, _control.INDEX_GEN))

    def _refresh_locked(self, gen: int) -> dict[str, _Entry]:
        patience = None
        while gen != self._index_gen:
            try:
                seg = Segment.attach(index_name(self._stem, gen), min_size=MIN_SIZE)
            except (FileNotFoundError, ForeignSegment) as exc:  # replaced, or closed
                if isinstance(exc, ForeignSegment):
                    self._check()  # a closed or dead share: that error instead
                    if load(self._control, _control.INDEX_GEN) == gen:
                        raise  # another user's file under the current index's name
                if patience is None:
                    patience = _Patience(self._check, "the share's index")
                patience()
                gen = load(self._control, _control.INDEX_GEN)
                continue
            # The old mapping is not closed here: another thread may be
            # reading it.  It is unmapped when the last reference goes.
            index: dict[str, _Entry] = {}
            _parse(self._published(seg, HEADER), index)
            # The generation last: a thread that sees it sees the rest.
            self._index_seg, self._index, self._index_pos = seg, index, seg.last_end
            self._index_gen = gen
            return index
        seg = self._index_seg
        assert seg is not None  # mapped by the loop above on the first refresh
        data = self._published(seg, self._index_pos)
        _parse(data, self._index)  # other threads' lookups see whole records
        self._index_pos = seg.last_end
        return self._index

    @staticmethod
    def _published(seg: Segment, pos: int) -> bytes:
        """The records appended to index `seg` from `pos` on (the end read
        is left in seg.last_end)."""
        end = load(seg.buf, INDEX_END)
        if not HEADER <= pos <= end <= seg.size:
            raise SegmentCorrupt("the share's index is corrupt (its length)")
        seg.last_end = end
        return seg.buf[pos:end]

    def _mapped_segment(self, name: str, cached: _Cached) -> Segment:
        seg = cached.segment
        if seg is None:
            seg = cached.segment = Segment.attach(cached.segname, min_size=HEADER)
        mapped = self._mapped
        mapped[name] = None
        mapped.move_to_end(name)
        while len(mapped) > MAX_MAPPED:
            old, _ = mapped.popitem(last=False)
            evicted = self._cache.get(old)
            if evicted is not None:
                # Not closed: another thread may be reading it; it is
                # unmapped when the last reference goes.
                evicted.segment = None
        return seg

    def read(self, name: str):
        commits = load(self._control, _control.COMMITS)
        cached = self._cache.get(name)
        if cached is not None and cached.commits == commits:
            return cached.obj  # nothing was committed since we last looked
        patience = None
        while True:
            entry = self._refresh_index().get(name)
            if entry is None:
                self._cache.pop(name, None)
                self._mapped.pop(name, None)
                return MISSING
            segname = entry.segname
            cached = self._cache.get(name)
            try:
                if cached is None or cached.segname != segname:
                    cached = _Cached(Segment.attach(segname, min_size=HEADER))
                    self._cache[name] = cached  # (the old mapping goes with its last user)
                seg = self._mapped_segment(name, cached)
            except (FileNotFoundError, ForeignSegment) as exc:  # replaced, or closed
                if isinstance(exc, ForeignSegment):
                    # Someone re-created the name after the coordinator
                    # removed it: a closed or dead share, or an index we
                    # have not read yet.  Never read it.
                    self._check()
                    if self._refresh_index().get(name) == entry:
                        raise
                if patience is None:
                    patience = _Patience(self._check, f"the snapshot of {name!r}")
                patience()
                continue  # read the index again
            if load(seg.buf, 0) != cached.version:
                version, epoch, used, base, log = _read_log(
                    seg, cached, self._check, f"the snapshot of {name!r}"
                )
                try:
                    obj = cached.obj if base is None else self._load(name, base)
                    if log:
                        replay(obj, log)
                except Stale:  # committed again since: read that
                    if patience is None:
                        patience = _Patience(self._check, f"the buffers of {name!r}")
                    patience()
                    continue
                except Exception:
                    if base is None:  # (cannot happen) start again from the base
                        cached.epoch = -1
                        continue
                    raise
                cached.obj = obj
                cached.version, cached.epoch, cached.used = version, epoch, used
            cached.commits = commits
            cached.kind = entry.kind
            return cached.obj

    def _load(self, name: str, data: bytes):
        obj = pickle.loads(data)
        if type(obj) is OutOfBand:
            obj = self._buffers.load(name, obj)
        return obj

    def cached(self, name: str) -> _Cached | None:
        """What was last read for `name` (.obj, .commits, .kind), current or not."""
        return self._cache.get(name)

    def unchanged(self, name: str) -> _Cached | None:
        """What was last read for `name` (.obj, .kind) if nothing was
        committed since — so it is the latest commit — else None.  One load."""
        cached = self._cache.get(name)
        if cached is not None and cached.commits == load(self._control, _control.COMMITS):
            return cached
        return None

    def kind(self, name: str):
        """The type of the committed object and its `Kind` (`Typed`), or
        MISSING — from the index and the object last read, without
        unpickling when the object's type has not changed since."""
        cached = self._cache.get(name)
        commits = load(self._control, _control.COMMITS)
        if (
            cached is not None
            and cached.kind is not None
            and (cached.commits == commits or cached.kind_commits == commits)
        ):
            return _typed(cached, cached.kind)  # nothing committed since we looked
        entry = self._refresh_index().get(name)
        if entry is None:
            return MISSING
        cached = self._cache.get(name)
        if cached is not None and cached.kind is not None and cached.kind == entry.kind:
            # (The count was loaded before the index: at worst this marks a
            # newer kind current at an older count, which is still true.)
            cached.kind_commits = commits
            return _typed(cached, cached.kind)
        obj = self.read(name)  # its type changed since we last read it
        if obj is MISSING:
            return MISSING
        return Typed(type(obj), entry.kind)

    def salvage(self, tries: int = 10_000) -> tuple[dict[str, bytes], list[str], dict[str, int]]:
        """Every committed snapshot as bytes, for a restart after the
        coordinator died: ({name: data}, [names lost mid-commit], {name: the
        writes its last commit includes}, deleted names included: see HEADER)."""
        found: dict[str, bytes] = {}
        lost: list[str] = []
        gen = load(self._control, _control.INDEX_GEN)
        index: dict[str, _Entry] = {}
        includes: dict[str, int] = {}
        _parse(
            self._published(Segment.attach(index_name(self._stem, gen)), HEADER), index, includes
        )
        for name, (segname, _kind) in index.items():
            try:
                settled = self._settled(Segment.attach(segname, min_size=HEADER), tries)
            except FileNotFoundError:
                settled = None
            data = None
            if settled is not None:
                data, includes[name] = settled
            if data is not None:
                try:
                    data = materialize(data)
                except (OSError, pickle.UnpicklingError):
                    data = None
            if data is None:
                lost.append(name)
            else:
                found[name] = data
        return found, lost, includes

    @staticmethod
    def _settled(seg: Segment, tries: int) -> tuple[bytes, int] | None:
        # A writer that died mid-commit leaves the version odd for ever.
        for _ in range(tries):
            version = load(seg.buf, 0)
            if version & 1:
                continue
            length, _epoch, used, includes = _STATE.unpack_from(seg.buf, 8)
            if length + used > seg.size - HEADER:
                continue
            data = seg.buf[HEADER : HEADER + length]
            log = seg.buf[HEADER + length : HEADER + length + used]
            if load(seg.buf, 0) == version:
                if log:  # the base and its change log, as one snapshot
                    obj = pickle.loads(data)
                    replay(obj, log)
                    data = pickle.dumps(obj, 5)
                return data, includes
        return None

    def close(self) -> None:
        for cached in self._cache.values():
            if cached.segment is not None:
                cached.segment.close()
        self._cache.clear()
        self._mapped.clear()
        self._buffers.close()
        if self._index_seg is not None:
            self._index_seg.close()
            self._index_seg = None
