"""One client per share per process: the registry every backend keeps.

A client holds a connection, a reply list and locks, shared by every
handle, proxy and thread of its share in the process.  After ``fork()`` the
child must not share them with its parent: each registered client's
``_after_fork()`` runs in the child, which then gets connections of its own.

A coordinator process sets `Clients.coordinating` to the share it serves:
code running on the coordinator (a shared object's method, an ``apply()``
function) that reached back into that share would wait for itself for
ever, so it is refused (`UsedFromOwnCoordinator`).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Hashable, Iterator
from typing import Generic, Protocol, TypeVar

from .._core._errors import UsedFromOwnCoordinator


class _Client(Protocol):
    def _after_fork(self) -> None: ...


C = TypeVar("C", bound=_Client)


def own_coordinator(where: str) -> UsedFromOwnCoordinator:
    """The error for `where` ("share 'x'") used from its own coordinator."""
    return UsedFromOwnCoordinator(
        f"{where} cannot be used by code running on its own coordinator "
        "(a shared object's method or an apply() function): it would wait for itself"
    )


class Clients(Generic[C]):
    """This process's clients of one backend, by share (a hashable key)."""

    def __init__(self) -> None:
        self._clients: dict[Hashable, C] = {}
        self._lock = threading.Lock()
        self.coordinating: Hashable | None = None  # set in a coordinator process
        os.register_at_fork(after_in_child=self._after_fork)

    def get(
        self,
        key: Hashable,
        where: str,
        make: Callable[[], C],
        stale: Callable[[C], bool] | None = None,
    ) -> C:
        """The client of share `key`; one made by `make()` (under the
        registry's lock) if there is none yet or ``stale(client)``."""
        if key == self.coordinating:
            raise own_coordinator(where)
        client = self._clients.get(key)
        if client is None or (stale is not None and stale(client)):
            with self._lock:
                client = self._clients.get(key)
                if client is None or (stale is not None and stale(client)):
                    client = self._clients[key] = make()
        return client

    def pop(self, key: Hashable) -> C | None:
        return self._clients.pop(key, None)

    def items(self) -> list[tuple[Hashable, C]]:
        return list(self._clients.items())

    def __iter__(self) -> Iterator[Hashable]:
        return iter(list(self._clients))

    def _after_fork(self) -> None:
        self._lock = threading.Lock()  # perhaps held by a thread the child lacks
        for client in self._clients.values():
            client._after_fork()
