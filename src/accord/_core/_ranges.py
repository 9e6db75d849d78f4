"""Which bytes of an array an item write changes (for commits that copy only those).

The coordinator asks before it applies ``arr[key] = value`` to a shared numpy
array; the answer bounds what the write can change in the array's buffer:
``(lo, hi)`` byte offsets, ``()`` for nothing, None when it cannot tell
cheaply (then the whole buffer counts as changed: slower, never wrong).
"""

from __future__ import annotations

import sys

_BASIC = int | slice | type(Ellipsis) | type(None)


def changed_bytes(parent, key):
    numpy = sys.modules.get("numpy")
    if numpy is None or type(parent) is not numpy.ndarray:
        return None
    flags = parent.flags
    if not (flags.c_contiguous or flags.f_contiguous):
        return None
    try:
        parts = key if type(key) is tuple else (key,)
        if all(isinstance(p, _BASIC | numpy.integer) for p in parts):
            if not any(p is Ellipsis for p in parts):
                parts = (*parts, Ellipsis)  # a 0-d view even for a single element
            return _bounds(numpy, parent, parent[parts])
        if (
            type(key) is numpy.ndarray
            and getattr(key, "dtype", None) == numpy.bool_
            and getattr(key, "shape", None) == parent.shape
        ):
            if not flags.c_contiguous:
                return None
            found = numpy.flatnonzero(key)
        elif type(key) in (numpy.ndarray, list) and parent.ndim == 1:
            found = numpy.asarray(key)
            if found.ndim != 1 or found.dtype.kind not in "iu":
                return None
            found = numpy.where(found < 0, found + parent.shape[0], found)
        else:
            return None
    except Exception:  # the write will likely raise too; if not, copy it all
        return None
    if found.size == 0:
        return ()
    size = parent.itemsize
    return (int(found.min()) * size, (int(found.max()) + 1) * size)


def _bounds(numpy, parent, view):
    if type(view) is not numpy.ndarray or view.size == 0:
        return () if type(view) is numpy.ndarray else None
    start = view.__array_interface__["data"][0] - parent.__array_interface__["data"][0]
    lo = hi = start
    for n, stride in zip(view.shape, view.strides, strict=True):
        if stride < 0:
            lo += (n - 1) * stride
        else:
            hi += (n - 1) * stride
    return (lo, hi + view.itemsize)
