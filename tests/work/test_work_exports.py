"""accord.work's public API is exactly this."""

import accord
import accord.work


def test_public_names():
    assert sorted(accord.work.__all__) == [
        "DatabaseUnavailable",
        "HistoryEntry",
        "InvalidWork",
        "Task",
        "TaskGraph",
        "WorkError",
        "WorkFailed",
        "WorkLock",
        "WorkQueue",
    ]
    for name in accord.work.__all__:
        assert getattr(accord.work, name).__module__ == "accord.work", name


def test_errors_derive_from_accord_error():
    for name in ("DatabaseUnavailable", "InvalidWork", "WorkFailed"):
        assert issubclass(getattr(accord.work, name), accord.work.WorkError)
    assert issubclass(accord.work.WorkError, accord.AccordError)
    assert issubclass(accord.work.InvalidWork, ValueError)
