"""A backend is chosen by URL scheme; today's keyword spellings keep working."""

from __future__ import annotations

import pytest
from run_names import share_name

from accord import Share, ShareNotFound
from accord.backends._registry import SCHEMES, backend, backend_of


def test_schemes_and_keywords_name_their_backend():
    assert backend_of("shm") == ("shm", "")
    assert backend_of("shm://jobs") == ("shm", "jobs")
    assert backend_of("memory") == ("memory", "")
    assert backend_of("memory://") == ("memory", "")
    for url in ("redis://127.0.0.1:6379/0", "rediss://h:1/0", "unix:///tmp/redis.sock"):
        assert backend_of(url) == ("redis", url)  # kept whole for redis-py


@pytest.mark.parametrize("value", ["redis", "postgres://h/db", "SHM", "", None, "mem://"])
def test_anything_else_is_refused_naming_the_choices(value):
    with pytest.raises(ValueError, match="shm://NAME"):
        backend_of(value)


def test_a_share_by_url():
    with Share(backend="memory://") as share:
        share.x = 1
        assert share.x == 1
    with Share(backend=f"shm://{share_name('registry')}") as share:
        share.x = [1]
        assert Share.connect(share_name("registry")).x == [1]
    with pytest.raises(ValueError, match="two names"):
        Share("a", backend="shm://b")


def test_every_backend_is_reached_through_the_registry():
    # Share knows no backend module: each package exports one BACKEND.
    for kind in sorted(set(SCHEMES.values())):
        chosen = backend(kind)
        assert all(callable(getattr(chosen, m)) for m in ("create", "attach", "restart"))


def test_connect_by_url():
    with Share(backend=f"shm://{share_name('registry-url')}") as share:
        share.x = 2
        assert Share.connect(f"shm://{share_name('registry-url')}").x == 2
        with pytest.raises(ValueError, match="two names"):
            Share.connect(f"shm://{share_name('registry-url')}", name="other")
    with pytest.raises(ShareNotFound):
        Share.connect(f"shm://{share_name('registry-url')}")
    with pytest.raises(ValueError, match="which share"):
        Share.connect("shm://")
    with Share(backend="memory") as share, pytest.raises(ValueError, match="cannot be connected"):
        Share.connect("memory://")
