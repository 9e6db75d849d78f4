"""Change logs of builtin containers: readers catch up in O(change).

A commit of a list, dict, set or deque whose writes since the last commit
were all simple item or method calls with immutable arguments
(``lst.append(3)``, ``d[k] = v``, ``del d[k]``, ``s.add(x)``...) appends those
operations to the object's snapshot segment instead of pickling every item
again.  A process that holds the previous version replays them on its copy;
one that holds nothing (or an older base) unpickles the base and replays the
log.  The log is bounded (about the size of the base): when it is full, the
next commit writes a full snapshot and starts a new log.

Only operations whose replay gives the same state everywhere are logged:
deterministic methods with immutable (plain) arguments, so no object is
shared between the log and anything else.  Anything else makes the commit
a full one.
"""

from __future__ import annotations

import collections
import io
import pickle

CALL, SET, DEL = 0, 1, 2

# Per type: the methods whose effect is a function of their arguments alone.
# (set.pop and sort are not: an arbitrary element, a key function.)
REPLAYABLE = {
    list: frozenset({"append", "extend", "insert", "pop", "remove", "clear", "reverse"}),
    dict: frozenset({"pop", "popitem", "setdefault", "clear", "__setitem__", "__delitem__"}),
    set: frozenset({"add", "discard", "remove", "clear", "update", "difference_update"}),
    collections.deque: frozenset(
        {"append", "appendleft", "pop", "popleft", "extend", "extendleft", "rotate", "clear"}
    ),
}


def replay(obj, log: bytes) -> None:
    """Apply the logged operations in `log` (concatenated pickles) to `obj`."""
    stream = io.BytesIO(log)
    end = len(log)
    while stream.tell() < end:
        for op in pickle.load(stream):
            if op[0] == CALL:
                getattr(obj, op[1])(*op[2])
            elif op[0] == SET:
                obj[op[1]] = op[2]
            else:
                del obj[op[1]]
