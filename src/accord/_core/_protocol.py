"""The commands a client sends to the coordinator, its replies, and the
kind of a committed object.

Records cross processes as plain tuples (the cheapest to pickle, and no
class of ours is named in the bytes: unpickling them imports nothing) and
are read by name on arrival: a command ``(op, reply_id, waits, writes,
*fields)`` as a `Command` (`as_command`), a reply ``(reply_id, status,
value[, traceback[, sequence]])`` as a `Reply` (`as_reply`).  A `Kind`
never crosses processes pickled: the backends store it as numbers.

In a command, `waits` flattens (slot, target) pairs that must be reached
before it runs, `writes` lists the flag slots it raised.  Paths address an
object inside the share: ``(name, kind, key, kind, key, ...)`` with kind
ATTR or ITEM.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple


class Command(NamedTuple):
    """One command, its parts named (see `as_command`)."""

    op: int  # ASSIGN, DELETE, ...
    reply_id: int  # 0: fire-and-forget, no reply
    waits: Sequence[int]  # slot, target, slot, target, ...
    writes: Sequence[int]  # flag slots raised; the first is its object's WHOLE
    fields: tuple[Any, ...]  # the op's own, as listed below

    @property
    def name(self) -> str:
        """The shared name a write addresses (the first step of its place)."""
        return self.fields[0][0]


def as_command(message: Sequence[Any]) -> Command:
    """A command received as ``(op, reply_id, waits, writes, *fields)``."""
    if type(message) is Command:
        return message
    op, reply_id, waits, writes, *fields = message
    return Command(op, reply_id, waits, writes, tuple(fields))


class Reply(NamedTuple):
    """A reply to a blocking call, or the error of a fire-and-forget one.

    Sent as ``(reply_id, OK, value)`` or ``(reply_id, ERROR, pickled
    exception, traceback)``; the redis backend adds the failed command's
    `sequence` to the error of a fire-and-forget command."""

    reply_id: int  # the call's; 0: an earlier fire-and-forget command failed
    status: int  # OK or ERROR
    value: Any  # OK: the result; ERROR: the pickled exception (`rebuild_error`)
    traceback: str = ""  # ERROR: formatted where it was raised
    sequence: int | None = None  # redis: the failed command's (replays are dropped)


def as_reply(message: Sequence[Any]) -> Reply:
    """A reply received as a plain tuple (see `Reply`)."""
    if type(message) is Reply:
        return message
    return Reply(*message)


class Kind(NamedTuple):
    """What the share's index tells of a name without unpickling it."""

    generation: int  # of its type: changes whenever the name's type does
    is_value: bool  # an immutable value (read as a copy), not a container (a proxy)


class Typed(NamedTuple):
    """What a client's ``kind(name)`` returns: the committed object's type
    and its `Kind`."""

    cls: type
    kind: Kind


NO_KIND = Kind(0, False)  # where no kind is known


ASSIGN = 1  # (place, value): set the last step of `place`
DELETE = 2  # (place,)
AUGMENT = 3  # (place, operator name, operand): place = place <op>= operand
CALL = 4  # (path, method, packed args)
APPLY = 5  # (path, packed (fn, args, kwargs), replace): fn(obj) [obj = result]
BARRIER = 6  # (): reply once the waits are applied and committed
FLUSH = 7  # (): reply once everything before it is committed
ACQUIRE = 8  # (lock name, owner token, timeout or None)
RELEASE = 9  # (lock name, owner token)
NAMES = 11  # (): reply with the sorted names in the share

ATTR = 0
ITEM = 1

# Reply statuses
OK = 0
ERROR = 1

# The in-place operators, by the symbol of `x op= y`: the one table the
# proxies, the augmented-assignment detector (`_augmented`) and the
# coordinator use.  The name is the `operator` module's function (``iadd``)
# and, in dunders, the method (``__iadd__``); the binary operator is the name
# without its leading "i" (``add``).  tests/share/test_augmented.py checks it
# against the operators of the running Python.
INPLACE_OPERATORS = {
    "+=": "iadd",
    "-=": "isub",
    "*=": "imul",
    "@=": "imatmul",
    "/=": "itruediv",
    "//=": "ifloordiv",
    "%=": "imod",
    "**=": "ipow",
    "<<=": "ilshift",
    ">>=": "irshift",
    "&=": "iand",
    "^=": "ixor",
    "|=": "ior",
}
INPLACE = frozenset(INPLACE_OPERATORS.values())


def describe(path: tuple) -> str:
    """``share.obj.items[3]`` for the path (obj, ATTR, items, ITEM, 3)."""
    text = f"share.{path[0]}"
    for i in range(1, len(path), 2):
        text += f".{path[i + 1]}" if path[i] == ATTR else f"[{path[i + 1]!r}]"
    return text
