"""Which shared values are handed out as they are, and which by proxy.

Immutable values (numbers, strings, tuples of them, dates, enums, functions
and classes) are returned as they are: nothing a caller does to them can
change the share or the snapshot they came from.  Everything else is
mutable: reading it by attribute or item gives a proxy (so writes through it
reach the coordinator), and results computed from it are private copies.
"""

from __future__ import annotations

import copy
import datetime
import decimal
import enum
import fractions
import pathlib
import types
import uuid

from ._serialize import PLAIN

_VALUE_TYPES = PLAIN | {
    range,
    slice,
    datetime.date,
    datetime.datetime,
    datetime.time,
    datetime.timedelta,
    datetime.timezone,
    decimal.Decimal,
    fractions.Fraction,
    uuid.UUID,
    pathlib.PurePosixPath,
    pathlib.PosixPath,
    types.FunctionType,
    types.BuiltinFunctionType,
    types.ModuleType,
    type,
}


def is_value(value) -> bool:
    """True for an immutable value that can be handed out as it is."""
    kind = type(value)
    if kind in _VALUE_TYPES:
        return True
    if isinstance(value, tuple | frozenset):
        return all(is_value(v) for v in value)
    return isinstance(value, enum.Enum | type)


def private(value):
    """`value` itself if immutable, else a copy the caller may change: a
    shallow one for a list, set or dict of plain values, else a deep one."""
    if is_value(value):
        return value
    kind = type(value)
    if kind is list or kind is set:
        if all(type(v) in PLAIN for v in value):
            return kind(value)
    elif kind is dict and all(type(v) in PLAIN for v in value.values()):
        return dict(value)  # keys are hashable, so plain or immutable anyway
    elif kind in _DICT_VIEWS:
        # keys()/values()/items(): the same view, of a private copy.
        return _DICT_VIEWS[kind](private(dict(value.mapping)))
    try:
        return copy.deepcopy(value)
    except TypeError:
        if hasattr(value, "__next__"):  # an iterator over the snapshot
            return iter(private(list(value)))
        raise


_DICT_VIEWS = {
    type({}.keys()): dict.keys,
    type({}.values()): dict.values,
    type({}.items()): dict.items,
}
