"""Committed snapshots in shared memory, readable by every process.

Each shared name has a segment holding its latest pickled snapshot behind a
seqlock (version odd while the coordinator writes it).  An index segment maps
names to segments; it is itself a seqlocked snapshot, found through the index
generation in the control segment.  A segment that must grow is replaced by
a new one (new name), the index is updated, and the old one is unlinked:
readers that still map it keep a consistent, older snapshot until they next
look at the index.

Only the coordinator writes (`SnapshotWriter`); every process reads
(`SnapshotReader`), keeping the object it last unpickled per name and
version, so reading an unchanged object costs two version loads.
"""

from __future__ import annotations

import itertools
import os
import pickle
import struct
import time

from ..._errors import AccordError, ShareClosed
from . import _control
from ._atomic import load, store
from ._buffers import BufferReader, BufferWriter, OutOfBand, Stale, materialize
from ._changes import replay
from ._segment import Segment

_LENGTH = struct.Struct("<Q")
_STATE = struct.Struct("<3Q")  # length, epoch, used
# version (odd while the coordinator writes), length of the base snapshot,
# epoch (raised by every full snapshot), bytes of change log after the base.
HEADER = 32
LOG_MIN = 1 << 16  # a log may grow to this or the base's size, whichever is larger
MIN_SIZE = 4096
MISSING = object()
# A retry loop of a reader that has not settled after this long, with the
# coordinator alive, gives up (a live coordinator finishes a commit or a
# segment swap far sooner; a dead one is noticed within about a second).
SETTLE_S = 30.0
_EAGER_TRIES = 64  # retries before the first liveness check: a commit takes microseconds


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
            raise AccordError(
                f"{self.what} did not settle within {SETTLE_S:g} s although the coordinator "
                "is alive; it may be overloaded (or this is a bug: please report it)"
            )
        time.sleep(0.0005)  # pacing: the writer needs the CPU more than we do


def index_name(stem: str, generation: int) -> str:
    return f"{stem}~index{generation}"


def _write(seg: Segment, data: bytes) -> None:
    buf = seg.buf
    version = load(buf, 0)
    store(buf, 0, version + 1)  # odd: writing
    buf[HEADER : HEADER + len(data)] = data
    _length, epoch, _used = _STATE.unpack_from(buf, 8)
    _STATE.pack_into(buf, 8, len(data), epoch + 1, 0)
    store(buf, 0, version + 2)


def _append(seg: Segment, entry: bytes) -> bool:
    """Append `entry` to the change log after the base; False if it does
    not fit (then a full snapshot is due)."""
    buf = seg.buf
    length, epoch, used = _STATE.unpack_from(buf, 8)
    end = HEADER + length + used
    if end + len(entry) > seg.size or used + len(entry) > max(LOG_MIN, length):
        return False
    buf[end : end + len(entry)] = entry  # beyond `used`: no reader looks there yet
    version = load(buf, 0)
    store(buf, 0, version + 1)
    _STATE.pack_into(buf, 8, length, epoch, used + len(entry))
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
            length, epoch, used = _STATE.unpack_from(buf, 8)
            if epoch == cached.epoch and used >= cached.used:
                base = None
                log = buf[HEADER + length + cached.used : HEADER + length + used]
            else:
                base = buf[HEADER : HEADER + length]
                log = buf[HEADER + length : HEADER + length + used]
            # Entries are never rewritten within an epoch: appends since we
            # looked leave our copy valid; a full snapshot changes the epoch.
            after = load(buf, 0)
            if after == version or (not after & 1 and _STATE.unpack_from(buf, 8)[1] == epoch):
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
        data = buf[HEADER : HEADER + length]
        if load(buf, 0) == version:
            return version, data


class SnapshotWriter:
    """The coordinator's side: write, replace and delete snapshots.

    Every change raises the control segment's commit counter, which lets a
    reader that saw no change skip the index and the segment entirely.
    """

    def __init__(self, control: Segment, stem: str) -> None:
        self._control = control
        self._stem = stem
        self._ids = itertools.count()
        self._segments: dict[str, Segment] = {}
        self._kinds: dict[str, tuple] = {}
        self._index_gen = 0
        self._index = Segment.create(index_name(stem, 0), MIN_SIZE)
        self._write_index()
        self.buffers = BufferWriter(stem)

    def _new_segment(self, size: int) -> Segment:
        return Segment.create(f"{self._stem}~o{next(self._ids)}", size)

    zero_copy = True  # takes big buffers out of band (see _buffers)

    def write(
        self, name: str, data: bytes, kind: tuple = (0, False), raws=None, touched=None
    ) -> None:
        """Commit `data` as the snapshot of `name`.

        `kind` is a small tuple describing the object (its type generation
        and whether it is an immutable value); it is kept in the index, so
        readers learn what an object is without unpickling it.  `raws`: the
        out-of-band buffers of `data` (pickle protocol 5), each kept in its
        own segments; `touched`: the byte ranges of a single buffer changed
        since the last commit, None if not known.
        """
        if raws:
            data = self.buffers.publish(name, data, raws, touched)
        else:
            self.buffers.drop(name)
        seg = self._segments.get(name)
        if seg is None or HEADER + len(data) > seg.size:
            new = self._new_segment(max(MIN_SIZE, 2 * (HEADER + len(data))))
            _write(new, data)
            self._segments[name] = new
            self._kinds[name] = kind
            self._write_index()  # before the old one goes, so readers find the new
            if seg is not None:
                seg.unlink()
                seg.close()
        else:
            _write(seg, data)
            if self._kinds.get(name) != kind:
                self._kinds[name] = kind
                self._write_index()
        self._committed()

    def append(self, name: str, entry: bytes, kind: tuple) -> bool:
        """Commit `entry` (logged operations, see _changes) as the change of
        `name` since its last commit; False when a full snapshot is due."""
        seg = self._segments.get(name)
        if seg is None or self._kinds.get(name) != kind or not _append(seg, entry):
            return False
        self._committed()
        return True

    def _committed(self) -> None:
        buf = self._control.buf
        store(buf, _control.COMMITS, load(buf, _control.COMMITS) + 1)

    def delete(self, name: str) -> None:
        self.buffers.drop(name)
        seg = self._segments.pop(name, None)
        self._kinds.pop(name, None)
        if seg is not None:
            self._write_index()
            seg.unlink()
            seg.close()
        self._committed()

    def _write_index(self) -> None:
        data = pickle.dumps({n: (s.name, *self._kinds[n]) for n, s in self._segments.items()})
        if HEADER + len(data) > self._index.size:
            old = self._index
            self._index_gen += 1
            self._index = Segment.create(
                index_name(self._stem, self._index_gen), 2 * (HEADER + len(data))
            )
            _write(self._index, data)
            # The generation names the index segment: readers re-resolve it.
            store(self._control.buf, _control.INDEX_GEN, self._index_gen)
            old.unlink()
            old.close()
        else:
            _write(self._index, data)

    def close(self) -> None:
        self.buffers.close()
        for seg in [*self._segments.values(), self._index]:
            seg.unlink()
            seg.close()
        self._segments.clear()


class _Cached:
    __slots__ = ("commits", "epoch", "kind", "obj", "segment", "used", "version")

    def __init__(self, segment: Segment) -> None:
        self.segment = segment
        self.version = -1
        self.epoch = -1  # of the base obj was read from
        self.used = 0  # bytes of that base's change log applied to obj
        self.commits = -1
        self.kind: tuple | None = None  # the index's kind when obj was read
        self.obj = None


class SnapshotReader:
    """A process's view of the committed snapshots (safe to use from threads).

    `read(name)` returns the committed object (shared with later reads of
    the same version: callers must not mutate it) or MISSING.  It never
    waits for ever: `check()` (raising CoordinatorLost or ShareClosed) is
    called while a retry loop waits for the coordinator.
    """

    def __init__(self, control: Segment, stem: str, check=None) -> None:
        self._control = control.buf
        self._check = self._closed if check is None else check
        self._stem = stem
        self._index_gen = -1
        self._index_seg: Segment | None = None
        self._index_version = -1
        self._index: dict[str, tuple] = {}
        self._cache: dict[str, _Cached] = {}
        self._buffers = BufferReader()

    def _closed(self) -> None:
        if load(self._control, _control.CLOSED):
            raise ShareClosed(f"share {self._stem!r} is closed")

    def _refresh_index(self) -> dict[str, tuple]:
        gen = load(self._control, _control.INDEX_GEN)
        patience = None
        while gen != self._index_gen:
            try:
                seg = Segment.attach(index_name(self._stem, gen))
            except FileNotFoundError:  # replaced while we looked, or closed
                if patience is None:
                    patience = _Patience(self._check, "the share's index")
                patience()
                gen = load(self._control, _control.INDEX_GEN)
                continue
            # The old mapping is not closed here: another thread may be
            # reading it.  It is unmapped when the last reference goes.
            self._index_seg, self._index_gen, self._index_version = seg, gen, -1
        version, data = _read(self._index_seg, self._index_version, self._check, "the index")
        if data is not None:
            self._index = pickle.loads(data)
            self._index_version = version
        return self._index

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
                return MISSING
            segname = entry[0]
            cached = self._cache.get(name)
            if cached is None or cached.segment.name != segname:
                try:
                    cached = _Cached(Segment.attach(segname))
                except FileNotFoundError:  # replaced while we looked, or closed
                    if patience is None:
                        patience = _Patience(self._check, f"the snapshot of {name!r}")
                    patience()
                    continue  # read the index again
                self._cache[name] = cached  # (the old mapping goes with its last user)
            if load(cached.segment.buf, 0) != cached.version:
                version, epoch, used, base, log = _read_log(
                    cached.segment, cached, self._check, f"the snapshot of {name!r}"
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
            cached.kind = entry[1:]
            return cached.obj

    def _load(self, name: str, data: bytes):
        obj = pickle.loads(data)
        if type(obj) is OutOfBand:
            obj = self._buffers.load(name, obj)
        return obj

    def unchanged(self, name: str) -> _Cached | None:
        """What was last read for `name` (.obj, .kind) if nothing was
        committed since — so it is the latest commit — else None.  One load."""
        cached = self._cache.get(name)
        if cached is not None and cached.commits == load(self._control, _control.COMMITS):
            return cached
        return None

    def still_current(self, cached: _Cached) -> bool:
        """Has nothing been committed since `cached` was read?  One load."""
        return cached.commits == load(self._control, _control.COMMITS)

    def kind(self, name: str):
        """(type of the committed object, its kind tuple), or MISSING — from
        the index and the object last read, without unpickling when the
        object's type has not changed since."""
        cached = self._cache.get(name)
        if cached is not None and cached.commits == load(self._control, _control.COMMITS):
            return type(cached.obj), cached.kind  # nothing committed since we looked
        entry = self._refresh_index().get(name)
        if entry is None:
            return MISSING
        cached = self._cache.get(name)
        if cached is None or cached.kind != entry[1:]:
            obj = self.read(name)
            if obj is MISSING:
                return MISSING
            return type(obj), entry[1:]
        return type(cached.obj), entry[1:]

    def salvage(self, tries: int = 10_000) -> tuple[dict[str, bytes], list[str]]:
        """Every committed snapshot as bytes, for a restart after the
        coordinator died: ({name: data}, [names lost mid-commit])."""
        found: dict[str, bytes] = {}
        lost: list[str] = []
        index = self._settled(
            Segment.attach(index_name(self._stem, load(self._control, _control.INDEX_GEN))), tries
        )
        for name, (segname, *_kind) in (pickle.loads(index) if index else {}).items():
            try:
                data = self._settled(Segment.attach(segname), tries)
            except FileNotFoundError:
                data = None
            if data is not None:
                try:
                    data = materialize(data)
                except (OSError, pickle.UnpicklingError):
                    data = None
            if data is None:
                lost.append(name)
            else:
                found[name] = data
        return found, lost

    @staticmethod
    def _settled(seg: Segment, tries: int) -> bytes | None:
        # A writer that died mid-commit leaves the version odd for ever.
        for _ in range(tries):
            version = load(seg.buf, 0)
            if version & 1:
                continue
            length, _epoch, used = _STATE.unpack_from(seg.buf, 8)
            data = seg.buf[HEADER : HEADER + length]
            log = seg.buf[HEADER + length : HEADER + length + used]
            if load(seg.buf, 0) == version:
                if log:  # the base and its change log, as one snapshot
                    obj = pickle.loads(data)
                    replay(obj, log)
                    data = pickle.dumps(obj, 5)
                return data
        return None

    def after_fork(self) -> None:
        """In a forked child: drop what the parent read (its views are
        pinned by the parent), so that reads here pin their own."""
        self._cache.clear()
        self._buffers.after_fork()

    def close(self) -> None:
        for cached in self._cache.values():
            cached.segment.close()
        self._cache.clear()
        self._buffers.close()
        if self._index_seg is not None:
            self._index_seg.close()
            self._index_seg = None
