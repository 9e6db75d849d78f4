"""The public API is exactly this; changing it is a decision, not an accident."""

import accord


def test_public_names():
    assert sorted(accord.__all__) == [
        "AccordError",
        "CommandQuarantined",
        "CoordinatorLost",
        "ForeignSegment",
        "Pool",
        "Proxy",
        "RemoteTraceback",
        "Share",
        "ShareClosed",
        "ShareLock",
        "TaskTimeout",
        "UnshareableError",
        "WorkerLost",
        "WritesLost",
    ]
    for name in accord.__all__:
        assert getattr(accord, name).__module__.startswith("accord.")


def test_spawn_names():
    import accord.spawn

    assert sorted(accord.spawn.__all__) == ["Pool", "TaskFuture"]
    assert accord.spawn.Pool is accord.Pool
    assert set(dir(accord)) >= set(accord.__all__)


def test_errors_derive_from_accord_error():
    assert issubclass(accord.TaskTimeout, TimeoutError)
    for name in (
        "CoordinatorLost",
        "ShareClosed",
        "UnshareableError",
        "WorkerLost",
        "TaskTimeout",
        "ForeignSegment",
        "CommandQuarantined",
    ):
        assert issubclass(getattr(accord, name), accord.AccordError)
    assert issubclass(accord.UnshareableError, TypeError)
    assert issubclass(accord.ShareClosed, accord.CoordinatorLost)
    assert issubclass(accord.WritesLost, accord.CoordinatorLost)
