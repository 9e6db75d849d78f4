"""Command rings: one single-producer ring per client, in one shared segment.

A client appends each command to its own ring (`Producer.append`): a copy
and two release stores in C, no system call unless the consumer sleeps.  The
consumer (the coordinator) drains every ring (`Consumer.drain`), applies,
then commits the position it has applied up to (`Consumer.commit`); the ring
reuses only committed space.  So:

- an entry is durable once `append` returns: a producer killed afterwards
  still has it applied, and one killed *during* an append has published the
  whole entry or nothing (the commit marker and head are stored last);
- a consumer that replaces a dead one (`Consumer(..., resume=True)`) starts
  from every ring's committed position: nothing that was appended is lost.
  (Applying an entry twice is the caller's to prevent: it commits only what
  its durable state includes.)
- `collect` closes every ring of a dead consumer (after which an append
  fails with `RingClosed` instead of landing where nobody reads) and returns
  the entries above each ring's committed position.

Payloads larger than half a ring spill to their own segment (created
O_EXCL, mode 0600), referenced from the ring and removed once committed.

Segment layout::

    0      MAGIC, ring count, ring size (u64 each)
    64     doorbell: consumer sleeping (u32), wake sequence (u32)
    72     spinning pays (u64): 1 while the machine has a core to spare
           (the consumer updates it; see `spare_cores`)
    4096   ring 0, ring 1, ...  (`ring_size` bytes each; see _ring.c)
"""

from __future__ import annotations

import os
import pickle
import struct
import time
from collections.abc import Callable, Iterable

from ..._core._atomic import load
from ..._core._errors import AccordError, CoordinatorStalled, ForeignSegment, SegmentCorrupt
from ..._core._segment import Segment, unlink
from ._ring import (
    Sender,
    bell_arm,
    bell_disarm,
    bell_sleep,
    ring_append,
    ring_close,
    ring_commit,
    ring_drain,
    ring_init,
    ring_max_entry,
    ring_send,
    ring_state,
    ring_wait_space,
)

MAGIC = 0x61636F7272696E01  # "acorrin" + format 1
BELL = 64
SPIN_PAYS = 72
# In each ring's header, a word _ring.c leaves alone: the doorbell of a
# consumer that sleeps on that one ring (a client waiting for its replies).
WAKE = 224
FIRST_RING = 4096
# In each ring's header, words _ring.c leaves alone (zeroed when the ring is
# handed out): who writes to it -- a random identity of the producing
# interpreter (several interpreters share a pid) and its pid, written by the
# producer before its first append.  restart() hands a replayed write's
# failure to that interpreter when it connects to the new coordinator.
IDENTITY = 32
OWNER_PID = 40
ROOM_BELL = 192  # in each ring's header: a producer waiting for room (see _ring.c)
RING_SIZE = 1 << 16  # 64 KiB each: pages are only used once written
SPILL = 1  # entry flag: the payload is the name of a spill segment
WAIT_STEP_S = 0.05  # a producer waiting for room checks the consumer this often
# A full ring waits this long at most, for a coordinator that is alive (its
# process is checked every WAIT_STEP_S) but applies nothing: a command that
# never returns.  Long: a slow method with writes queued behind it is normal.
FULL_TIMEOUT_S = 600.0

_HEADER = struct.Struct("<3Q")
dumps = pickle.dumps

# Producer.write: the placeholder pickled where the command's wait goes (an
# 8-byte LONG1 the C call overwrites), and 1/(the fraction of a ring that
# wakes a sleeping consumer).
WAIT_MARK = 0x3FACC0DE5EED0001
RING_CLOSED = -2  # Producer.write: the ring is closed
WAIT_MARK_BYTES = WAIT_MARK.to_bytes(8, "little")
LAZY_DIVISOR = 8
# Inbox.sleep polls this long at most (without the GIL) before it sleeps,
# while the producer is awake: a blocking call's reply from a running
# coordinator takes about 10-30 us; a futex sleep and the wake-up it then
# needs cost about that again on each side (measured: a call's round trip
# 75-83 us without, 28-32 us with, on the 2-core machine).
SPIN_S = 0.00005
# `template`: the placeholder pickled where a Sender puts the value it sends.
VALUE_MARK = 0x3FACC0DE5EED0002
_VALUE_MARK_BYTES = b"\x8a\x08" + VALUE_MARK.to_bytes(8, "little")  # (LONG1, 8 bytes)
# What pickle writes after a command's last value: TUPLE1, MEMOIZE (the
# value's tuple), TUPLE, MEMOIZE (the command), STOP.  Nothing refers back.
_TEMPLATE_SUFFIX = b"\x85\x94t\x94."


def template(op: int, fields: tuple, writes: tuple) -> tuple | None:
    """The `Sender.send` template of the fire-and-forget command
    ``(op, 0, (writes[0], WAIT_MARK), writes, *fields, (value,))`` whatever
    the value: (prefix, suffix, patch_at, writes), or None where its pickle
    does not have the expected shape (the Python path then sends it).

    The prefix is the pickle up to the value, without its FRAME (optional in
    protocol 5, and its length would change with the value); the ticket
    goes at `patch_at`.  See /WIRE.md of the notes, and _ring.c's Sender."""
    data = dumps((op, 0, (writes[0], WAIT_MARK), writes, *fields, (VALUE_MARK,)), 5)
    if data[2:3] == b"\x95":  # FRAME and its 8-byte length
        data = data[:2] + data[11:]
    at = data.find(_VALUE_MARK_BYTES)
    if at < 0 or data[at + len(_VALUE_MARK_BYTES) :] != _TEMPLATE_SUFFIX:
        return None
    prefix = data[:at]
    patch_at = prefix.find(WAIT_MARK_BYTES)
    if patch_at < 0 or prefix.count(WAIT_MARK_BYTES) != 1 or prefix.count(_VALUE_MARK_BYTES):
        return None
    return (prefix, _TEMPLATE_SUFFIX, patch_at, writes)


class RingClosed(Exception):
    """The ring was closed (`collect`): the entry was not appended."""


class RingSegment:
    """The segment holding every client's ring and the consumer's doorbell."""

    __slots__ = ("buf", "count", "ring_size", "segment")

    def __init__(self, segment: Segment) -> None:
        self.segment = segment
        self.buf = segment.buf
        magic, self.count, self.ring_size = _HEADER.unpack_from(self.buf, 0)
        if magic != MAGIC or FIRST_RING + self.count * self.ring_size > len(self.buf):
            raise SegmentCorrupt(f"{segment.name!r} is not an accord ring segment")

    @classmethod
    def create(
        cls, name: str, count: int, ring_size: int = RING_SIZE, init: bool = True
    ) -> RingSegment:
        """Create (O_EXCL, 0600) a segment of `count` rings, empty ones with
        `init`; else each is made when `Consumer.recycle` hands it out (a
        ring's pages are then only touched once a client uses it)."""
        segment = Segment.create(name, FIRST_RING + count * ring_size)
        _HEADER.pack_into(segment.buf, 0, MAGIC, count, ring_size)
        if init:
            for i in range(count):
                ring_init(segment.buf, FIRST_RING + i * ring_size, ring_size)
        return cls(segment)

    @classmethod
    def attach(cls, name: str) -> RingSegment:
        # Checked to be ours and private (0600) before a byte is read:
        # another local user could have created it to feed us entries.
        return cls(Segment.attach(name, min_size=FIRST_RING))

    def base(self, index: int) -> int:
        if not 0 <= index < self.count:
            raise IndexError(f"no ring {index} (the segment has {self.count})")
        return FIRST_RING + index * self.ring_size

    def reset(self, index: int) -> None:
        """Empty ring `index` for a new producer.  Only once its previous
        producer is gone and every entry it published is committed."""
        ring_init(self.buf, self.base(index), self.ring_size)

    def close(self) -> None:
        self.segment.close()


class Producer:
    """Appends to one ring.  One thread at a time (callers hold a lock)."""

    __slots__ = (
        "_alive",
        "_base",
        "_bell",
        "_buf",
        "_lazy",
        "_limit",
        "_spills",
        "_stem",
        "_wake",
        "rings",
    )

    def __init__(
        self,
        rings: RingSegment,
        index: int,
        stem: str,
        alive: Callable[[], None],
        own_bell: bool = False,
        wake: Callable[[], None] | None = None,
    ):
        """`stem` names spill segments; `alive()` raises if the consumer is
        gone.  `own_bell`: the consumer sleeps on this ring alone (`Inbox`),
        not on the segment's doorbell.  `wake()` wakes a consumer asleep in
        select() (a full ring waits for it to make room)."""
        self.rings = rings
        self._buf = rings.buf
        self._base = rings.base(index)
        self._bell = self._base + WAKE if own_bell else BELL
        self._limit = ring_max_entry(self._buf, self._base)
        self._stem = stem
        self._alive = alive
        self._wake = wake
        self._spills = 0
        # `write` leaves a sleeping consumer asleep below this many bytes.
        self._lazy = 0 if own_bell else rings.ring_size // LAZY_DIVISOR

    def append(self, payload: bytes, timeout: float = FULL_TIMEOUT_S) -> bool:
        """Append one entry; durable when this returns.  Waits while the
        ring is full (checking the consumer), at most `timeout` seconds.
        True: the consumer sleeps in select() and the caller must wake it
        there (`Consumer.arm`); a consumer sleeping in `Consumer.sleep` is
        woken here."""
        buf = self._buf
        if len(payload) <= self._limit:
            done = ring_append(buf, self._base, payload, 0, buf, self._bell)
            if done > 0:
                return done == 2
            return self._wait(payload, 0, timeout) == 2
        name = self._spill(payload)
        try:
            reference = f"{name}\0{len(payload)}".encode()
            done = ring_append(buf, self._base, reference, SPILL, buf, self._bell)
            if done > 0:
                return done == 2
            return self._wait(reference, SPILL, timeout) == 2
        except BaseException:
            unlink(name)  # never referenced: nobody else would remove it
            raise

    def offer(self, payload: bytes, most: int) -> bool:
        """Append one entry now if the ring then holds at most `most`
        bytes (never waits, never spills); whether it was appended.  A
        consumer sleeping in `Consumer.sleep` or `Inbox.sleep` is woken."""
        buf = self._buf
        if len(payload) > self._limit:
            return False
        head, tail, _capacity = ring_state(buf, self._base)
        if head - tail + len(payload) > most:
            return False
        return ring_append(buf, self._base, payload, 0, buf, self._bell) > 0

    def write(
        self,
        control,
        intent: int,
        pending: int,
        seq: int,
        writes: tuple,
        payload: bytes,
        stop: int = 0,
    ) -> int:
        """A fire-and-forget write, whole, in one C call (`ring_send`):
        record the intent (at `intent` of `control`, with `seq`), raise the
        flags `writes` (counters at `pending` + 8 * slot), append `payload`
        with the count the first flag had put in place of `WAIT_MARK`.
        -1: nothing done (the ring is full, or the payload too big for it):
        take `append`'s path.  RING_CLOSED: the ring is closed (restart()),
        nothing appended.  Else the count * 4, + 2 if the consumer must be
        woken in select(), + 1 if not.

        A sleeping consumer is woken only once the ring holds 1/LAZY_DIVISOR
        of its size: a fire-and-forget write needs nobody now (whoever reads
        what it writes waits for its flag, and that wakes the consumer).
        `stop` (tests): _ring.STOP_AFTER_PAYLOAD or STOP_AFTER_HEADER leave
        the entry unpublished, as a producer killed there would."""
        if len(payload) > self._limit:
            return -1
        at = payload.find(WAIT_MARK_BYTES)
        buf = self._buf
        return ring_send(
            control,
            intent,
            pending,
            seq,
            writes,
            payload,
            at,
            buf,
            self._base,
            buf,
            self._bell,
            self._lazy,
            stop,
        )

    def sender(
        self, control, intent: int, pending: int, closed: int, replaced: int, lock, deferred, wake
    ) -> Sender:
        """A `Sender` of this producer's fire-and-forget writes of one plain
        value (`control`: the intent record at `intent`, flags at `pending`,
        the closed and replaced words; it takes the Python path while `lock`
        is held or `deferred` is not empty).  Close it before the buffers
        are unmapped."""
        return Sender(
            control,
            intent,
            pending,
            closed,
            replaced,
            self._buf,
            self._base,
            self._bell,
            self._lazy,
            lock,
            deferred,
            wake,
        )

    def _wait(self, payload: bytes, flag: int, timeout: float) -> int:
        """Append once there is room; raise RingClosed if the ring is closed."""
        buf = self._buf
        deadline = time.monotonic() + timeout
        while not (done := ring_append(buf, self._base, payload, flag, buf, self._bell)):
            self._alive()
            left = deadline - time.monotonic()
            if left <= 0:
                raise CoordinatorStalled(
                    f"the command ring stayed full for {timeout:.0f} s: the coordinator "
                    "is alive but not applying commands (a command that never returns?)"
                )
            # Says we wait for room, then rings the consumer's doorbell (it
            # may sleep with our entries unread, or uncommitted), then sleeps.
            room = ring_wait_space(
                buf, self._base, len(payload), min(WAIT_STEP_S, left), buf, self._bell
            )
            if room == -1:  # it sleeps in select(): wake it there
                if self._wake is not None:
                    self._wake()
                else:
                    ring_wait_space(buf, self._base, len(payload), min(WAIT_STEP_S, left))
        if done < 0:
            raise RingClosed("the ring was closed: the entry was not appended")
        return done

    def _spill(self, payload: bytes) -> str:
        self._spills += 1
        name = f"{self._stem}~spill.{os.getpid()}.{self._base}.{self._spills}"
        segment = Segment.create(name, max(1, len(payload)))
        try:
            segment.buf[: len(payload)] = payload
        finally:
            segment.close()
        return name

    def state(self) -> tuple[int, int, int]:
        """(head, tail, capacity) of this ring."""
        return ring_state(self._buf, self._base)


class Consumer:
    """Drains every ring of a segment; commits what it has applied."""

    def __init__(
        self, rings: RingSegment, resume: bool = False, indexes: Iterable[int] | None = None
    ) -> None:
        """Watches every initialised ring (or those of `indexes`).  `resume`:
        start from each ring's committed position (a consumer replacing a
        dead one); else the rings must be empty."""
        self.rings = rings
        self.buf = rings.buf
        # Producers name spills after the share's stem, which names the rings.
        self._spill_prefix = rings.segment.name.rsplit("~", 1)[0] + "~spill."
        # base -> position drained to, for every ring in use: what
        # bell_sleep and bell_arm check for input.
        self.positions: dict[int, int] = {}
        self._spilled: dict[int, list[tuple[int, str]]] = {}
        for i in range(rings.count) if indexes is None else indexes:
            base = rings.base(i)
            try:
                head, tail, _ = ring_state(self.buf, base)
            except ValueError:  # never handed out
                continue
            if not resume and head != tail:
                raise SegmentCorrupt("a new consumer found entries in a ring: resume=True?")
            self.positions[base] = tail

    def drain(self, index: int, max_bytes: int = 1 << 20) -> tuple[list[bytes], int]:
        """(payloads published in ring `index` beyond what was drained,
        the position after them); pass that position to `commit` once they
        are applied."""
        base = self.rings.base(index)
        entries, position = ring_drain(self.buf, base, self.positions[base], max_bytes)
        if entries:
            self.positions[base] = position
            for i, entry in enumerate(entries):
                if type(entry) is tuple:
                    entries[i] = self._unspill(base, entry, position)
        return entries, position

    def _unspill(self, base: int, entry: tuple[int, bytes], position: int) -> bytes:
        flag, data = entry
        if flag != SPILL:
            raise SegmentCorrupt(f"unknown ring entry flag {flag}")
        name, size = data.decode().split("\0")
        if not name.startswith(self._spill_prefix):
            raise ForeignSegment(f"a ring entry names a foreign segment {name!r}")
        segment = Segment.attach(name)  # checked ours and 0600, as above
        try:
            payload = bytes(segment.buf[: int(size)])
        finally:
            segment.close()
        self._spilled.setdefault(base, []).append((position, name))
        return payload

    def commit(self, index: int, position: int) -> None:
        """Entries of ring `index` before `position` are applied: their
        space may be reused, their spill segments go."""
        base = self.rings.base(index)
        ring_commit(self.buf, base, position)
        spilled = self._spilled.get(base)
        if spilled:
            keep = []
            for end, name in spilled:
                if end <= position:
                    unlink(name)
                else:
                    keep.append((end, name))
            self._spilled[base] = keep

    def producer_waits(self, index: int) -> bool:
        """Is the producer of ring `index` waiting for room?"""
        # The room bell's first word (see _ring.c), the low half of a u64.
        return load(self.buf, self.rings.base(index) + ROOM_BELL) & 0xFFFFFFFF != 0

    def committed(self, index: int) -> int:
        return ring_state(self.buf, self.rings.base(index))[1]

    def reset(self, index: int) -> None:
        """Recycle ring `index` for a new producer (its old one is gone and
        all its entries are committed)."""
        base = self.rings.base(index)
        head, tail, _ = ring_state(self.buf, base)
        if head != tail:
            raise SegmentCorrupt(f"ring {index} still holds uncommitted entries")
        self.recycle(index)

    def recycle(self, index: int) -> None:
        """Make ring `index` empty for a new producer and watch it, whatever
        it held (a producer cut off for sending garbage)."""
        base = self.rings.base(index)
        for _end, name in self._spilled.pop(base, ()):
            unlink(name)
        self.rings.reset(index)
        self.positions[base] = 0

    def release(self, index: int) -> None:
        """Stop watching ring `index` (its producer is gone, its entries
        applied)."""
        self.positions.pop(self.rings.base(index), None)

    def arm(self) -> bool:
        """For a consumer about to sleep in select(): False when every ring
        is drained, and producers now wake it through its sockets (see
        `Producer.append`); True when there is input (not armed).  Call
        `disarm` once awake."""
        return bell_arm(self.buf, BELL, self.buf, self.positions)

    def disarm(self) -> None:
        bell_disarm(self.buf, BELL)

    def sleep(self, timeout: float) -> bool:
        """Sleep until a producer appends (or `timeout`); only if every ring
        is drained.  True if there may be input."""
        return bell_sleep(self.buf, BELL, self.buf, self.positions, timeout)


class Inbox:
    """One ring that one process reads and sleeps on alone: a client's
    replies (the coordinator appends with `Producer(..., own_bell=True)`)."""

    __slots__ = ("_base", "_buf", "_consumer", "_index", "_producer_bell")

    def __init__(self, rings: RingSegment, index: int, producer: RingSegment | None = None) -> None:
        """`producer`: the segment whose doorbell says whether the producer
        of this ring is awake (the coordinator's command rings): `sleep`
        then first polls while it is (see SPIN_S)."""
        self._consumer = Consumer(rings, resume=True, indexes=(index,))
        self._index = index
        self._base = rings.base(index)
        self._buf = rings.buf
        self._producer_bell = None if producer is None else producer.buf

    def take(self) -> list[bytes]:
        """The entries published since the last take (their space freed,
        their spill segments removed)."""
        entries, position = self._consumer.drain(self._index)
        if entries:
            self._consumer.commit(self._index, position)
        return entries

    def sleep(self, timeout: float) -> bool:
        """Sleep until the producer appends, at most `timeout` s; only if
        nothing is waiting.  False on timeout.  While the producer is awake
        (it is running the call whose reply we wait for, most likely) and
        the machine has a core to spare (SPIN_PAYS), poll SPIN_S first: the
        reply usually comes sooner than a futex sleep and wake-up would
        take.  (On a machine with more runnable processes than cores,
        polling only delays whoever would run instead: sleep at once.)"""
        buf = self._buf
        positions = self._consumer.positions
        other = self._producer_bell
        if other is None or not load(other, SPIN_PAYS):
            return bell_sleep(buf, self._base + WAKE, buf, positions, timeout)
        return bell_sleep(buf, self._base + WAKE, buf, positions, timeout, SPIN_S, other, BELL)


def spare_cores(loadavg: str, cores: int) -> bool:
    """From the text of /proc/loadavg: are fewer processes runnable right
    now than `cores` + 1 (the caller, running, is one of them)?  Polling
    for a reply or a command pays only then."""
    try:
        running = int(loadavg.split()[3].split("/")[0])
    except (IndexError, ValueError):
        return True  # not Linux's format: poll, as before this was measured
    return running <= cores


def spinning_pays() -> bool:
    """`spare_cores` for this machine now (cores this process may use)."""
    try:
        with open("/proc/loadavg") as f:
            text = f.read()
    except OSError:
        return True
    return spare_cores(text, len(os.sched_getaffinity(0)))


def owners(rings: RingSegment, indexes: Iterable[int]) -> dict[int, tuple[int, int]]:
    """{ring index: (identity, pid)} of the producers of rings `indexes`
    (see IDENTITY; (0, 0) if one never said)."""
    buf = rings.buf
    return {
        i: (load(buf, rings.base(i) + IDENTITY), load(buf, rings.base(i) + OWNER_PID))
        for i in indexes
    }


def collect(rings: RingSegment) -> dict[int, list[bytes]]:
    """For a restart after the consumer died: close every ring (an append
    from now on raises RingClosed), then {ring index: the payloads above its
    committed position, in order} -- spilled ones read back.  Entries the
    dead consumer had applied but not committed are among them: telling
    them apart is the caller's (see the coordinator's `replay`)."""
    closed = []
    for i in range(rings.count):
        base = rings.base(i)
        try:
            ring_close(rings.buf, base)
        except ValueError:  # never handed out
            continue
        closed.append(i)
    consumer = Consumer(rings, resume=True, indexes=closed)
    found: dict[int, list[bytes]] = {}
    for i in closed:
        entries: list[bytes] = []
        while True:
            try:
                more, _position = consumer.drain(i)
            except (AccordError, RuntimeError, ValueError, OSError):
                break  # written by something other than its producer: what came before
            if not more:
                break
            entries += more
        if entries:
            found[i] = entries
    return found
