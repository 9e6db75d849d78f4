"""``share.aio``: the share seen from asyncio, every operation awaitable.

One shape for everything that may wait (a read that waits for queued writes,
a method call answered by the coordinator, ``apply``, ``flush``): write the
same expression with ``.aio`` after the share and ``await`` it::

    n = await share.aio.counter                 # as share.get("counter")
    item = await share.aio.jobs.pop()           # as share.jobs.pop()
    await share.aio.cfg["model"].update(lr=0.1)
    await share.aio.apply("stats", reset)
    await share.aio.flush()
    async with share.lock("stock"): ...         # locks take `async with` directly

Building ``share.aio.jobs.pop`` touches nothing; the work runs when it is
awaited, in a worker thread (asyncio's default executor), so the event loop
keeps running however long the share makes it wait.  Awaiting a path gives
a private copy of its value, like `Share.get`; awaiting a call gives what
the call returns.
"""

from __future__ import annotations

from typing import Any

from ._proxy import Proxy

_ATTR, _ITEM = 0, 1


class AsyncView:
    """A path into a share (``share.aio.a.b["k"]``) whose operations are awaited."""

    __slots__ = ("_share", "_steps")

    def __init__(self, share, steps: tuple = ()) -> None:
        object.__setattr__(self, "_share", share)
        object.__setattr__(self, "_steps", steps)

    def __getattr__(self, name: str) -> AsyncView:
        if name.startswith("__"):
            raise AttributeError(name)
        return AsyncView(self._share, (*self._steps, (_ATTR, name)))

    def __getitem__(self, key) -> AsyncView:
        return AsyncView(self._share, (*self._steps, (_ITEM, key)))

    def __setattr__(self, name: str, value) -> None:
        raise AttributeError(
            "assignments do not wait: write `share.x = ...` (no `.aio`), "
            "or `await share.aio.flush()` to wait until they are applied"
        )

    def __call__(self, *args: Any, **kwargs: Any):
        return _in_thread(self._call, args, kwargs)

    def __await__(self):
        return _in_thread(self._read).__await__()

    def __repr__(self) -> str:
        return f"<share.aio path {self._describe()}>"

    def _resolve(self):
        obj = self._share
        for kind, key in self._steps:
            obj = getattr(obj, key) if kind == _ATTR else obj[key]
        return obj

    def _read(self):
        obj = self._resolve()
        return self._share.get(obj) if type(obj) is Proxy else obj

    def _call(self, args, kwargs):
        return self._resolve()(*args, **kwargs)

    def _describe(self) -> str:
        return "share" + "".join(
            f".{key}" if kind == _ATTR else f"[{key!r}]" for kind, key in self._steps
        )


async def _in_thread(fn, *args):
    import asyncio  # here: slow to import, and only asyncio programs need it

    return await asyncio.get_running_loop().run_in_executor(None, fn, *args)
