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

from ..._core._slots import MAX_WRITE_SLOTS, SLOTS

MAGIC = 0x61636F7264000001  # "accord" + format 1

HEARTBEAT = 8
PID = 16
CLOSED = 24
INDEX_GEN = 32
COMMITS = 40  # raised after every commit, before the flags it satisfies
# After the 8-word header: set by restart() in a dead incarnation's segment,
# so that clients stop appending to its command rings and follow the new one.
REPLACED = 64

CLIENTS = 1024
# An intent: [seq, done-mask, count, slot0 .. slot12]
INTENT_SLOTS = MAX_WRITE_SLOTS
INTENT_SIZE = 8 * (3 + INTENT_SLOTS)

PENDING = 4096
APPLIED = PENDING + 8 * SLOTS
INTENTS = APPLIED + 8 * SLOTS
SIZE = INTENTS + INTENT_SIZE * CLIENTS

_HEADER = struct.Struct("<8Q")


def init_header(buf, pid: int) -> None:
    _HEADER.pack_into(buf, 0, MAGIC, 0, pid, 0, 0, 0, SLOTS, CLIENTS)


def check_header(buf) -> None:
    magic, *_ = _HEADER.unpack_from(buf, 0)
    if magic != MAGIC:
        raise RuntimeError("not an accord control segment (or from an incompatible version)")


def intent_offset(client: int) -> int:
    return INTENTS + INTENT_SIZE * client
