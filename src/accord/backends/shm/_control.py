"""The control segment: heartbeat, write flags and the per-client intent table.

Layout (every field a little-endian u64 at an 8-byte aligned offset)::

    0        header: MAGIC, heartbeat (monotonic ns), coordinator pid, closed,
             index generation, slot count, client count
    4096     pending[nslots]   raised by clients *before* they queue a write
    ...      applied[nslots]   raised by the coordinator *after* the commit
    ...      intents[nclients] what a client was sending when it died

A read of key K records ``pending[slot(K)]`` and is served from shared memory
once ``applied[slot(K)]`` reaches it.  Keys hash to slots, so two keys may
share a slot: that only makes a read wait for more writes, never fewer.
"""

from __future__ import annotations

import struct
import zlib

MAGIC = 0x61636F7264000001  # "accord" + format 1

HEARTBEAT = 8
PID = 16
CLOSED = 24
INDEX_GEN = 32
COMMITS = 40  # raised after every commit, before the flags it satisfies
# After the 8-word header: set by restart() in a dead incarnation's segment,
# so that clients stop appending to its command rings and follow the new one.
REPLACED = 64

SLOTS = 8192
CLIENTS = 1024
# An intent: [seq, done-mask, count, slot0 .. slot12]
INTENT_SLOTS = 13
INTENT_SIZE = 8 * (3 + INTENT_SLOTS)

PENDING = 4096
APPLIED = PENDING + 8 * SLOTS
INTENTS = APPLIED + 8 * SLOTS
SIZE = INTENTS + INTENT_SIZE * CLIENTS

_HEADER = struct.Struct("<8Q")

# Attribute names used in keys.  WHOLE is raised by every write to an object;
# UNKNOWN by every write whose attributes are not known.  A read of attribute
# `a` waits on (name, a) and (name, UNKNOWN); a read of the whole object on
# (name, WHOLE).
WHOLE = "*"
UNKNOWN = "?"


def init_header(buf, pid: int) -> None:
    _HEADER.pack_into(buf, 0, MAGIC, 0, pid, 0, 0, 0, SLOTS, CLIENTS)


def check_header(buf) -> None:
    magic, *_ = _HEADER.unpack_from(buf, 0)
    if magic != MAGIC:
        raise RuntimeError("not an accord control segment (or from an incompatible version)")


_slot_cache: dict[tuple[str, str], int] = {}


def slot_of(name: str, attr: str) -> int:
    """The flag slot of key (name, attr); stable across processes."""
    key = (name, attr)
    slot = _slot_cache.get(key)
    if slot is None:
        # zlib.crc32, not hash(): str hashes differ between processes.
        slot = zlib.crc32(f"{name}\0{attr}".encode()) % SLOTS
        if len(_slot_cache) < 100_000:
            _slot_cache[key] = slot
    return slot


def intent_offset(client: int) -> int:
    return INTENTS + INTENT_SIZE * client
