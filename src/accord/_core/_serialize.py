"""How values cross process boundaries.

Plain values (numbers, strings, bytes, None, and tuples of them) go through
the C pickler as they are; everything else through cloudpickle, so lambdas,
local functions and classes defined in ``__main__`` can be shared.  A value
that cannot be serialized is refused where it is assigned, with the path of
the part that failed.
"""

from __future__ import annotations

import io
import pickle
import sys
from typing import Any

import cloudpickle

from ._errors import UnshareableError

PLAIN = frozenset({int, float, complex, str, bytes, bool, type(None)})


def is_plain(value) -> bool:
    kind = type(value)
    if kind in PLAIN:
        return True
    if kind is tuple or kind is frozenset:
        return all(is_plain(v) for v in value)
    return False


def pack(value, where):
    """`(value,)` for a plain value, else its cloudpickle bytes.

    `where` is a zero-argument callable naming the value for error messages
    (called only on error: formatting it for every write would cost more
    than the write).
    """
    if type(value) in PLAIN or is_plain(value):
        return (value,)
    return dumps_checked(value, where)


def unpack(packed):
    return packed[0] if type(packed) is tuple else pickle.loads(packed)


def pack_call(args: tuple, kwargs: dict, where):
    """Arguments of a call: the args tuple itself when plain, else bytes."""
    if not kwargs and (
        (len(args) == 1 and type(args[0]) in PLAIN) or all(type(a) in PLAIN for a in args)
    ):
        return args
    return dumps_checked((args, kwargs), where)


def unpack_call(packed) -> tuple[tuple, dict]:
    if type(packed) is tuple:
        return packed, {}
    return pickle.loads(packed)


def dumps(value) -> bytes:
    """Serialize a snapshot: the C pickler when it can, else cloudpickle."""
    try:
        return pickle.dumps(value, 5)
    except Exception:
        return cloudpickle_dumps(value)


# Buffers at least this big travel out of band when a backend can keep them
# (pickle protocol 5): smaller ones cost less to copy than to map.
OUT_OF_BAND = 1 << 16


def dumps_out_of_band(value) -> tuple[bytes, list[memoryview]]:
    """Serialize a snapshot, its big contiguous buffers (numpy arrays,
    pandas blocks...) left out: (in-band pickle, [raw buffers])."""
    raws: list[memoryview] = []

    def keep_in_band(buffer: pickle.PickleBuffer) -> bool:
        try:
            raw = buffer.raw()
        except BufferError:  # not contiguous
            return True
        if raw.nbytes < OUT_OF_BAND:
            return True
        raws.append(raw)
        return False

    try:
        return pickle.dumps(value, 5, buffer_callback=keep_in_band), raws
    except Exception:
        raws.clear()
        return cloudpickle_dumps(value, keep_in_band), raws


_by_value: set[str] = set()


_OPEN_FILES = (io.IOBase,)
_IN_MEMORY_FILES = (io.BytesIO, io.StringIO)  # values: they pickle as themselves


class _Pickler(cloudpickle.Pickler):
    """cloudpickle, keeping the ``__slots__`` of classes it ships by value.

    cloudpickle 3 rebuilds such a class without its slots, so its instances
    grow a ``__dict__`` and no longer unpickle where the original class
    lives.  Passing ``__slots__`` to the rebuilt class keeps them (this leans
    on cloudpickle's reducer for dynamic classes, hence the version pin).
    """

    def reducer_override(self, obj):
        if isinstance(obj, _OPEN_FILES) and not isinstance(obj, _IN_MEMORY_FILES):
            # cloudpickle would ship a file opened for reading as a StringIO
            # of its contents: a silent copy, not the file.
            name = getattr(obj, "name", None)
            raise TypeError(
                f"an open file or stream ({type(obj).__name__}"
                f"{f' {name!r}' if name is not None else ''}) cannot be shared"
            )
        if isinstance(obj, type) and "__slots__" in vars(obj):
            from cloudpickle import cloudpickle as internals

            if not internals._should_pickle_by_reference(obj):
                reduced: list[Any] = list(internals._dynamic_class_reduce(obj))
                args = list(reduced[1])
                args[3] = {**args[3], "__slots__": obj.__slots__}
                reduced[1] = tuple(args)
                return tuple(reduced)
        return super().reducer_override(obj)


def cloudpickle_dumps(value, buffer_callback=None) -> bytes:
    """cloudpickle, with the script's own module pickled by value everywhere.

    cloudpickle ships what is defined in ``__main__`` by value, but in a
    worker started by spawn or forkserver the script runs as ``__mp_main__``,
    which cloudpickle would ship by reference — a module the coordinator
    cannot import.
    """
    if "__mp_main__" not in _by_value and "__mp_main__" in sys.modules:
        cloudpickle.register_pickle_by_value(sys.modules["__mp_main__"])
        _by_value.add("__mp_main__")
    with io.BytesIO() as buffer:
        _Pickler(buffer, protocol=5, buffer_callback=buffer_callback).dump(value)
        return buffer.getvalue()


def dumps_checked(value, where) -> bytes:
    try:
        return cloudpickle_dumps(value)
    except Exception as exc:
        path, reason = _find_culprit(value, where(), exc)
        raise UnshareableError(
            f"cannot share {path}: {reason}. Share only values that can be pickled "
            "(no open files, locks, sockets, threads or generators); keep such "
            "resources local to each process."
        ) from exc


def _find_culprit(value, where: str, exc: Exception, depth: int = 0) -> tuple[str, str]:
    """The innermost attribute or item of `value` that does not pickle."""
    if depth < 8:
        for label, part in _parts(value):
            try:
                cloudpickle_dumps(part)
            except Exception as inner:
                return _find_culprit(part, f"{where}{label}", inner, depth + 1)
    return where, f"{type(exc).__name__}: {exc}"


def _parts(value):
    if isinstance(value, dict):
        for k, v in list(value.items())[:1000]:
            yield f"[{k!r}]", v
    elif isinstance(value, list | tuple | set | frozenset):
        for i, v in enumerate(list(value)[:1000]):
            yield f"[{i}]", v
    else:
        state = getattr(value, "__dict__", None)
        if isinstance(state, dict):
            for k, v in state.items():
                yield f".{k}", v
