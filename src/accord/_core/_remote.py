"""Carrying exceptions from the coordinator back to a caller (every layer uses it)."""

from __future__ import annotations

import pickle
import traceback

import cloudpickle

from ._errors import RemoteError, RemoteTraceback

__all__ = ["RemoteError", "Unreadable", "pack_error", "rebuild_error"]


class Unreadable:
    """Committed in place of a snapshot that could not be serialized."""

    def __init__(self, message: str) -> None:
        self.message = message


def pack_error(exc: BaseException) -> tuple[bytes, str]:
    """(pickled exception, formatted traceback) of an exception raised here."""
    tb = "".join(traceback.format_exception(exc))
    try:
        data = cloudpickle.dumps(exc)
        pickle.loads(data)  # an exception whose __init__ takes other args fails here
    except Exception:
        data = cloudpickle.dumps(RemoteError(f"{type(exc).__qualname__}: {_str(exc)}"))
    return data, tb


def _str(exc: BaseException) -> str:
    # A broken __str__ must not turn one failed call into a dead worker or
    # coordinator: the error being reported is raised from here otherwise.
    try:
        return str(exc)
    except Exception:
        return "<str() failed>"


def rebuild_error(data: bytes, tb: str, deferred: bool = False) -> BaseException:
    exc = pickle.loads(data)
    exc.__cause__ = RemoteTraceback(f'\n"""\n{tb}"""')
    if deferred:
        exc.add_note(
            "(raised on the coordinator by an earlier fire-and-forget call of this process)"
        )
    return exc
