"""Recognising ``share.x += y`` so that it becomes one atomic command.

Python runs ``share.x += 1`` as a read (``share.x``), an in-place operation
on the value read, and a write back — three steps another process can
interleave with, losing updates.  The attribute (or item) read that starts an
augmented assignment compiles to a recognisable instruction sequence::

    COPY 1; LOAD_ATTR x; <operand>; BINARY_OP +=; SWAP 2; STORE_ATTR x
    COPY 2; COPY 2; BINARY_SUBSCR; <operand>; BINARY_OP +=; SWAP 3; SWAP 2; STORE_SUBSCR
    COPY 3 (x3); BINARY_SLICE; <operand>; BINARY_OP +=; SWAP 4; SWAP 3; SWAP 2; STORE_SLICE

When the read is such a step, the share returns an `Augmenting` marker
instead of the value: its in-place operator sends ``AUGMENT`` (applied on
the coordinator as one command) and the following store is a no-op.  The
verdict is cached per (code object, instruction offset), so the check costs
a dictionary lookup.

These sequences are CPython's, and change between versions.  At import,
`self_check` runs ``o.a += 1``, ``d[k] += 1`` and plain reads (``x = o.a;
x += 1`` among them) through the detector; if the running Python's bytecode
is not recognised, `is_augmented` falls back to refusing: a read on a line
that holds an augmented assignment raises `AugmentedAssignmentUnsupported`
instead of silently becoming a read and then a write (losing updates).
"""

from __future__ import annotations

import bisect
import dis
import opcode
import sys

from .._core import _fastread
from .._core._errors import AugmentedAssignmentUnsupported
from .._core._protocol import INPLACE_OPERATORS

_verdicts: dict[tuple, bool] = {}


def is_augmented(depth: int = 2) -> bool:
    """Is the attribute/item read running in the caller's caller the first
    step of an augmented assignment?

    Raises `AugmentedAssignmentUnsupported` where the running Python's
    bytecode is not recognised (see `self_check`) and the read is on a line
    holding an augmented assignment."""
    frame = sys._getframe(depth)
    key = (frame.f_code, frame.f_lasti)
    verdict = _verdicts.get(key)
    if verdict is None:
        if len(_verdicts) >= 100_000:
            _verdicts.clear()  # code compiled at run time would grow it for ever
        verdict = _verdicts[key] = _analyser(frame.f_code, frame.f_lasti)
    return verdict


def _analyse(code, lasti: int) -> bool:
    # EXTENDED_ARG is a prefix of the next instruction's argument (an
    # attribute name past the 256th of a function): not an instruction here.
    instructions = [i for i in dis.get_instructions(code) if i.opname != "EXTENDED_ARG"]
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
    elif current.opname == "BINARY_SLICE":  # 3.12+: `x[a:b] op= y`
        if at < 3 or any(
            instructions[at - k].opname != "COPY" or instructions[at - k].arg != 3
            for k in (1, 2, 3)
        ):
            return False
        store, swaps = ("STORE_SLICE", None), [4, 3, 2]
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


def _refuse(code, lasti: int) -> bool:
    """The detector of a Python whose bytecode `_analyse` does not know:
    a plain read (False), unless its line holds an augmented assignment."""
    instructions = list(dis.get_instructions(code))
    at = bisect.bisect_right([ins.offset for ins in instructions], lasti) - 1
    positions = instructions[at].positions if at >= 0 else None
    line = positions.lineno if positions is not None else None
    for ins in instructions:
        if (
            ins.positions is not None
            and ins.positions.lineno == line
            and (ins.argrepr in INPLACE_OPERATORS or ins.opname.startswith("INPLACE_"))
        ):
            version = ".".join(map(str, sys.version_info[:3]))
            raise AugmentedAssignmentUnsupported(
                f"an augmented assignment (line {line} of {code.co_filename}) on a share cannot "
                f"be made atomic on Python {version}: accord does not recognise this "
                "interpreter's bytecode for it (tested on CPython 3.11-3.13). Write "
                "share.apply(name, fn) or hold share.lock(name) around a read and a write"
            )
    return False


class _Probe:
    """Records, for each attribute or item read, the detector's verdict."""

    _verdicts: list[bool]

    def __init__(self, verdicts: list[bool]) -> None:
        object.__setattr__(self, "_verdicts", verdicts)

    def __getattr__(self, name) -> _Inplace:
        self._verdicts.append(is_augmented())
        return _Inplace()

    def __getitem__(self, key) -> _Inplace:
        self._verdicts.append(is_augmented())
        return _Inplace()

    def __setattr__(self, name, value) -> None:
        pass

    def __setitem__(self, key, value) -> None:
        pass


class _Inplace:
    def __iadd__(self, other):
        return self

    __add__ = __iadd__


def _augmented_attribute(o) -> None:
    o.a += 1


def _augmented_item(d) -> None:
    d["k"] += 1


def _augmented_slice(d) -> None:
    d[1:3] += 1


def _plain_reads(o) -> None:
    x = o.a
    x += 1  # on a local name: the read above is a plain one
    o.b = o.c + 1
    y = o["k"] + 1  # noqa: F841


def self_check() -> bool:
    """Does the detector recognise this Python's ``o.a += 1`` and ``d[k] +=
    1``, and nothing in plain reads?  Each form runs repeatedly, so that the
    adaptive interpreter's specialised instructions are checked too."""
    verdicts: list[bool] = []
    probe = _Probe(verdicts)
    for _ in range(20):
        del verdicts[:]
        _augmented_attribute(probe)
        _augmented_item(probe)
        _augmented_slice(probe)
        if verdicts != [True, True, True]:
            return False
        del verdicts[:]
        _plain_reads(probe)
        if verdicts != [False, False, False]:
            return False
    return True


class Augmenting:
    """What an augmented read returns: its in-place operators send AUGMENT.

    ``link.augment(place, op_name, operand)`` queues the atomic command; the
    marker it returns tells the following store to do nothing.
    """

    __slots__ = ("_link", "_place")

    def __init__(self, link, place: tuple) -> None:
        self._link = link
        self._place = place


def _sender(name: str):
    def method(self, other):
        self._link.augment(self._place, name, other)
        return DONE

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

_analyser = _analyse
RECOGNISED = self_check()
if not RECOGNISED:
    _verdicts.clear()
    _analyser = _refuse
# The fast read path (C) serves `share.x` only at a LOAD_ATTR not preceded by
# COPY or EXTENDED_ARG, which `_analyse` never takes for an augmented read;
# its `share.x op= y` path only where `_verdicts` holds True for the read
# (this module's verdict, cached), returning its own marker that sends the
# same command, then DONE.  Unrecognised bytecode: everything comes here.
if RECOGNISED:
    _fastread.configure(
        opcode.opmap["LOAD_ATTR"],
        opcode.opmap["COPY"],
        opcode.opmap["EXTENDED_ARG"],
        _verdicts,
        DONE,
    )
    # Reads of proxy items (`share.d[k]`): at a BINARY_SUBSCR not preceded by
    # COPY, which `_analyse` never takes for the read that starts `d[k] += x`.
    _fastread.configure_items(opcode.opmap["BINARY_SUBSCR"])
