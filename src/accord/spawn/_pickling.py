"""Pickling what the pool sends: functions by value keep their file name.

cloudpickle ships functions of the script (and lambdas, local functions)
by value, and names every code object it ships ``<dynamic-code>``, so a
traceback from a worker read ``File "<dynamic-code>", line 7`` -- no file,
no source line.  Here the code keeps its real ``co_filename``: the worker's
traceback names the file and line, and shows the source line when the file
is readable there (it is on this machine; a script read from standard
input shows ``<stdin>`` and its line number).
"""

from __future__ import annotations

import io
import linecache
import os
import types

from cloudpickle import cloudpickle as _internals

from .._core import _serialize
from . import _worker

_DYNAMIC = "<dynamic-code>"


class _Pickler(_serialize._Pickler):
    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.filenames: set[str] = set()

    def reducer_override(self, obj):
        if type(obj) is types.CodeType:
            rebuild, args = _internals._code_reduce(obj)
            self.filenames.add(obj.co_filename)
            return rebuild, tuple(obj.co_filename if arg == _DYNAMIC else arg for arg in args)
        return super().reducer_override(obj)


def dumps(value, buffer_callback=None, with_source: bool = False) -> bytes:
    """cloudpickle (protocol 5) as `_serialize.cloudpickle_dumps`, keeping file names.

    `with_source`: code whose source is in this process's `linecache` but
    in no file (a notebook cell, code given to ``exec`` and registered)
    takes that source along, for the worker's tracebacks.
    """
    _serialize.cloudpickle_dumps(None)  # registers the script's module by value once
    with io.BytesIO() as buffer:
        pickler = _Pickler(buffer, protocol=5, buffer_callback=buffer_callback)
        pickler.dump(value)
        sources = {}
        if with_source:
            for name in pickler.filenames:
                entry = linecache.cache.get(name)
                if entry is not None and not os.path.isfile(name):
                    sources[name] = entry[2]  # pyright: ignore[reportGeneralTypeIssues]  (a 4-tuple)
        if not sources:
            return buffer.getvalue()
    return dumps(_WithSource(sources, value), buffer_callback)


class _WithSource:
    """Unpickles as `value`, once `sources` are in the worker's `linecache`."""

    def __init__(self, sources: dict[str, list[str]], value) -> None:
        self.sources = sources
        self.value = value

    def __reduce__(self):
        return _worker.with_source, (self.sources, self.value)
