"""Sub-interpreters behind one small interface, whatever the Python version.

Python grew sub-interpreters in steps: 3.11 has ``_xxsubinterpreters`` (all
interpreters share one GIL, so they give isolation without parallelism),
3.12 creates them with a GIL of their own, 3.13 renamed the module
``_interpreters`` (``exec`` returns the error instead of raising it), and
3.14 adds the public ``concurrent.interpreters`` on top of it.  The pool
needs three things only — create, run a script, destroy — so this module
offers exactly those and hides the differences.

Only bytes, str, int and None cross into an interpreter (``shared``): the
worker gets its task stream as a file descriptor and everything else as
pickled bytes, so no object is ever shared between two interpreters.

This module must not import anything that cannot be imported in a
sub-interpreter: it is imported by the main interpreter only.
"""

from __future__ import annotations

import sys

try:  # 3.13 and later
    import _interpreters as _impl  # pyright: ignore[reportMissingImports]

    _RETURNS_ERROR = True
except ImportError:  # 3.11, 3.12
    try:
        import _xxsubinterpreters as _impl
    except ImportError:  # not CPython, or built without them
        _impl = None
    _RETURNS_ERROR = False

#: Whether each interpreter has its own GIL (true parallelism), 3.12 and later.
OWN_GIL = sys.version_info >= (3, 12)


# CPython gh-119213, fixed in 3.12.4: the first call with keyword arguments
# of a function of an extension module (pickle.dumps(buffer_callback=...),
# shm_open(mode=...)) allocates its parser's keyword tuple in the calling
# interpreter; if that is a sub-interpreter, the tuple dangles once it is
# destroyed and the process aborts as it exits ("free(): invalid pointer").
# Making those first calls here, in the main interpreter, avoids it for the
# functions the workers call.
_KWTUPLE_BUG = (3, 12) <= sys.version_info[:3] < (3, 12, 4)
_warmed = False


def _warm_keyword_parsers() -> None:
    global _warmed
    import _posixshmem
    import contextlib
    import io
    import os
    import pickle

    pickle.loads(pickle.dumps(None, 5, buffer_callback=None), buffers=())
    pickle.Pickler(io.BytesIO(), protocol=5, buffer_callback=None)
    pickle.Unpickler(io.BytesIO(b""), buffers=())
    with contextlib.suppress(OSError):  # parsed before it fails: enough
        _posixshmem.shm_open("/", os.O_RDONLY, mode=0o600)
    _warmed = True


class InterpreterFailed(RuntimeError):
    """A script run in a sub-interpreter ended with an uncaught exception."""


def available() -> bool:
    """Whether this Python can create sub-interpreters."""
    return _impl is not None


def create() -> int:
    """A new, isolated interpreter (its own modules; its own GIL on 3.12+)."""
    if _impl is None:
        raise RuntimeError(
            "this Python has no sub-interpreters (CPython 3.11 or later is needed); "
            "use backend='forkserver', 'spawn' or 'fork'"
        )
    if _KWTUPLE_BUG and not _warmed:
        _warm_keyword_parsers()
    if not OWN_GIL:
        # 3.11's "isolated" interpreters refuse threads, which the worker's
        # watchdog needs; with one GIL for all, isolation=False costs nothing
        # else (modules stay per interpreter either way).
        return _impl.create(isolated=False)
    return _impl.create()


def run(interp: int, script: str, shared: dict[str, bytes | str | int | None]) -> None:
    """Run `script` in `interp`'s ``__main__`` with `shared` bound as globals.

    Blocks the calling thread until the script ends; raises `InterpreterFailed`
    with the sub-interpreter's error when it ends with an uncaught exception.
    """
    assert _impl is not None  # create() succeeded
    if _RETURNS_ERROR:
        error = _impl.exec(interp, script, shared)
        if error is not None:
            raise InterpreterFailed(getattr(error, "formatted", None) or str(error))
        return
    try:
        _impl.run_string(interp, script, shared)
    except _impl.RunFailedError as exc:
        raise InterpreterFailed(str(exc)) from None


def destroy(interp: int) -> None:
    assert _impl is not None  # create() succeeded
    _impl.destroy(interp)
