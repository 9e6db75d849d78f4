"""The per-process client registry every backend uses (backends/_clients.py)."""

from __future__ import annotations

import os

import pytest

from accord import UsedFromOwnCoordinator
from accord.backends._clients import Clients


class _Client:
    def __init__(self) -> None:
        self.forks = 0
        self.stale = False

    def _after_fork(self) -> None:
        self.forks += 1


def test_one_client_per_share_until_it_is_stale():
    clients: Clients[_Client] = Clients()
    first = clients.get("a", "share 'a'", _Client, lambda c: c.stale)
    assert clients.get("a", "share 'a'", _Client, lambda c: c.stale) is first
    assert clients.get("b", "share 'b'", _Client) is not first
    first.stale = True
    second = clients.get("a", "share 'a'", _Client, lambda c: c.stale)
    assert second is not first
    assert sorted(clients) == ["a", "b"]
    assert clients.pop("a") is second and clients.pop("a") is None


def test_a_share_is_refused_on_its_own_coordinator():
    clients: Clients[_Client] = Clients()
    clients.coordinating = "a"
    with pytest.raises(UsedFromOwnCoordinator, match="share 'a' cannot be used"):
        clients.get("a", "share 'a'", _Client)
    assert clients.get("b", "share 'b'", _Client) is not None


def test_a_forked_child_resets_every_client():
    clients: Clients[_Client] = Clients()
    client = clients.get("a", "share 'a'", _Client)
    with clients._lock:  # held by the parent as it forks: the child must not inherit it
        pid = os.fork()
        if pid == 0:
            os._exit(0 if client.forks == 1 and not clients._lock.locked() else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert client.forks == 0  # the parent's stay as they were
