"""Recognising ``share.x += y`` so that it becomes one atomic command.

Python runs ``share.x += 1`` as a read (``share.x``), an in-place operation
on the value read, and a write back — three steps another process can
interleave with, losing updates.  The attribute (or item) read that starts an
augmented assignment compiles to a recognisable instruction sequence::

    COPY 1; LOAD_ATTR x; <operand>; BINARY_OP +=; SWAP 2; STORE_ATTR x
    COPY 2; COPY 2; BINARY_SUBSCR; <operand>; BINARY_OP +=; SWAP 3; SWAP 2; STORE_SUBSCR

When the read is such a step, the share returns an `Augmenting` marker
instead of the value: its in-place operator sends ``AUGMENT`` (applied on
the coordinator as one command) and the following store is a no-op.  The
verdict is cached per (code object, instruction offset), so the check costs
a dictionary lookup.
"""

from __future__ import annotations

import bisect
import dis
import sys

from ._protocol import INPLACE_OPERATORS

_verdicts: dict[tuple, bool] = {}


def is_augmented(depth: int = 2) -> bool:
    """Is the attribute/item read running in the caller's caller the first
    step of an augmented assignment?"""
    frame = sys._getframe(depth)
    key = (frame.f_code, frame.f_lasti)
    verdict = _verdicts.get(key)
    if verdict is None:
        if len(_verdicts) >= 100_000:
            _verdicts.clear()  # code compiled at run time would grow it for ever
        verdict = _verdicts[key] = _analyse(frame.f_code, frame.f_lasti)
    return verdict


def _analyse(code, lasti: int) -> bool:
    instructions = list(dis.get_instructions(code))
    # A specialised instruction that calls Python code inline (3.11's
    # BINARY_SUBSCR_GETITEM) leaves f_lasti on its last inline cache entry:
    # the instruction is the last one starting at or before f_lasti.
    at = bisect.bisect_right([ins.offset for ins in instructions], lasti) - 1
    if at < 1:
        return False
    current = instructions[at]
    if current.opname == "LOAD_ATTR":
        before = instructions[at - 1]
        if before.opname != "COPY" or before.arg != 1:
            return False
        store, swaps = ("STORE_ATTR", current.argval), [2]
    elif current.opname in ("BINARY_SUBSCR", "BINARY_OP"):
        if current.opname == "BINARY_OP" and current.argrepr != "[]":
            return False
        if at < 2 or any(
            instructions[at - k].opname != "COPY" or instructions[at - k].arg != 2 for k in (1, 2)
        ):
            return False
        store, swaps = ("STORE_SUBSCR", None), [3, 2]
    else:
        return False
    # The first in-place operator after the read belongs to this statement:
    # augmented assignments are statements and cannot nest inside the operand.
    for i in range(at + 1, len(instructions)):
        ins = instructions[i]
        if ins.opname == "BINARY_OP" and ins.argrepr in INPLACE_OPERATORS:
            tail = instructions[i + 1 : i + 2 + len(swaps)]
            if [t.opname for t in tail[:-1]] != ["SWAP"] * len(swaps):
                return False
            if [t.arg for t in tail[:-1]] != swaps or not tail:
                return False
            last = tail[-1]
            return last.opname == store[0] and (store[1] is None or last.argval == store[1])
        if ins.opname.startswith(("RETURN", "STORE_")):
            # A statement ended first: this was no augmented read.  (Jumps may
            # appear inside the operand, `a if c else b`, so they do not stop us.)
            return False
    return False


class Augmenting:
    """What an augmented read returns: its in-place operators send AUGMENT.

    ``send(op_name, operand)`` queues the atomic command; the marker it
    returns tells the following store to do nothing.
    """

    __slots__ = ("_send",)

    def __init__(self, send) -> None:
        self._send = send

    def _apply(self, op: str, operand):
        self._send(op, operand)
        return DONE


def _sender(name: str):
    def method(self, other):
        return self._apply(name, other)

    method.__name__ = method.__qualname__ = f"__{name}__"
    return method


for _name in INPLACE_OPERATORS.values():
    setattr(Augmenting, f"__{_name}__", _sender(_name))


class _Done:
    """Stored by the second half of an augmented assignment: nothing to do."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "<accord: augmented assignment already applied>"


DONE = _Done()
