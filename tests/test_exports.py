"""The public API is exactly this; changing it is a decision, not an accident."""

import accord


def test_public_names():
    assert sorted(accord.__all__) == [
        "AccordError",
        "CoordinatorLost",
        "Proxy",
        "RemoteTraceback",
        "Share",
        "ShareClosed",
        "ShareLock",
        "UnshareableError",
    ]
    for name in accord.__all__:
        assert getattr(accord, name).__module__.startswith("accord.")


def test_errors_derive_from_accord_error():
    for name in ("CoordinatorLost", "ShareClosed", "UnshareableError"):
        assert issubclass(getattr(accord, name), accord.AccordError)
    assert issubclass(accord.UnshareableError, TypeError)
    assert issubclass(accord.ShareClosed, accord.CoordinatorLost)
