"""Write-flag slots: how a key (object name, attribute) maps to a flag.

A read of key K waits until every write queued before it to K's slot is
applied.  Keys hash to `SLOTS` slots, so two keys may share one: that only
makes a read wait for more writes, never fewer.  Every backend keeps its
pending/applied counters per slot.
"""

from __future__ import annotations

import zlib

SLOTS = 8192
# A write raises at most this many flags (one intent record's worth).
MAX_WRITE_SLOTS = 13

# Attribute names used in keys.  WHOLE is raised by every write to an object;
# UNKNOWN by every write whose attributes are not known.  A read of attribute
# `a` waits on (name, a) and (name, UNKNOWN); a read of the whole object on
# (name, WHOLE).
WHOLE = "*"
UNKNOWN = "?"

# What a read finds where nothing is committed under a name (every backend).
MISSING = object()

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
