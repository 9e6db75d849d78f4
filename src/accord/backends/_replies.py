"""Replies to a process's blocking calls, whatever carries them (and a
helper the snapshot caches of the memory and redis clients share).

Every backend's client lets any of its threads wait for the reply to its
own call while one thread at a time receives (a socket, a Redis list, a
queue), sorting what arrives: replies by id, and errors of earlier
fire-and-forget commands (id 0), which the next blocking call raises.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from .._core._protocol import NO_KIND, Reply, Typed, as_reply
from .._core._remote import rebuild_error
from .._core._slots import MISSING


class Replies:
    __slots__ = ("deferred", "pending", "reading", "ready")

    def __init__(self) -> None:
        self.ready = threading.Condition()
        self.reading = False
        self.pending: dict[int, Reply] = {}
        self.deferred: list[Reply] = []

    def wait(self, reply_id: int, receive: Callable[[], Iterable[Sequence[Any]]]) -> Reply:
        """The reply `reply_id`; `receive()` blocks for the next messages
        (it may return none, and raises to give up)."""
        with self.ready:
            while True:
                found = self.pending.pop(reply_id, None)
                if found is not None:
                    return found
                if not self.reading:
                    self.reading = True
                    break
                self.ready.wait()
        try:
            while True:
                messages = receive()
                with self.ready:
                    for message in messages:
                        reply = as_reply(message)
                        if reply.reply_id == 0:
                            self.deferred.append(reply)
                        else:
                            self.pending[reply.reply_id] = reply
                    found = self.pending.pop(reply_id, None)
                    self.ready.notify_all()
                if found is not None:
                    return found
        finally:
            with self.ready:
                self.reading = False
                self.ready.notify_all()

    def collect(self, take: Callable[[], Iterable[Sequence[Any]]]) -> None:
        """Sort the messages `take()` returns without waiting, as `wait`
        does; nothing if a thread is receiving (it sorts what it takes)."""
        with self.ready:
            if self.reading:
                return
            self.reading = True
        messages: Iterable[Sequence[Any]] = ()
        try:
            messages = take()
        finally:
            with self.ready:
                for message in messages:
                    reply = as_reply(message)
                    if reply.reply_id == 0:
                        self.deferred.append(reply)
                    else:
                        self.pending[reply.reply_id] = reply
                self.reading = False
                self.ready.notify_all()

    def take_deferred(self) -> list[BaseException]:
        """The errors of earlier fire-and-forget commands received so far,
        rebuilt (and forgotten here: the caller raises or reports them)."""
        with self.ready:
            messages, self.deferred[:] = list(self.deferred), []
        return [rebuild_error(m.value, m.traceback, deferred=True) for m in messages]

    def raise_deferred(self) -> None:
        """Raise the errors of earlier fire-and-forget commands: the error
        itself if there is one, an ExceptionGroup of them if several."""
        raise_all(self.take_deferred())


def raise_all(errors: list[BaseException]) -> None:
    """Raise nothing, the one error, or a group of them."""
    if len(errors) == 1:
        raise errors[0]
    if errors:
        raise BaseExceptionGroup(
            f"{len(errors)} fire-and-forget commands of this process failed", errors
        )


def kind_of(obj, cached) -> Any:
    """What a client's kind() returns for the object it just read: MISSING,
    or its type and the `Kind` of its cache entry (`Typed`)."""
    if obj is MISSING:
        return MISSING
    return Typed(type(obj), cached.kind if cached is not None else NO_KIND)
