"""The public API is exactly this; changing it is a decision, not an accident."""

import pickle

import pytest

import accord

ERRORS = [
    "AccordError",
    "AugmentedAssignmentUnsupported",
    "AuthenticationError",
    "BackendRefused",
    "BackendUnavailable",
    "CommandQuarantined",
    "CoordinatorLost",
    "CoordinatorStalled",
    "CoordinatorStartFailed",
    "ErrorsDropped",
    "ForeignSegment",
    "KeyRequired",
    "RemoteError",
    "RestartRefused",
    "SegmentCorrupt",
    "ShareClosed",
    "ShareExists",
    "ShareNotFound",
    "ShareNotPortable",
    "SnapshotNotSettled",
    "TamperedPayload",
    "TaskTimeout",
    "TemporaryTarget",
    "Unconfirmed",
    "UnsafeRuntimeDir",
    "UnshareableError",
    "UsedFromOwnCoordinator",
    "WorkerLost",
    "WritesLost",
]


def test_public_names():
    assert sorted(accord.__all__) == sorted(
        [*ERRORS, "RemoteTraceback"]
        + [
            "Pool",
            "Proxy",
            "Share",
            "ShareLock",
        ]
    )
    for name in accord.__all__:
        assert getattr(accord, name).__module__ == "accord", name


def test_spawn_names():
    import accord.spawn

    assert sorted(accord.spawn.__all__) == ["Pool", "TaskFuture"]
    assert accord.spawn.Pool is accord.Pool
    assert accord.spawn.TaskFuture.__module__ == "accord.spawn"
    assert set(dir(accord)) >= set(accord.__all__)


def test_errors_derive_from_accord_error():
    for name in ERRORS:
        assert issubclass(getattr(accord, name), accord.AccordError), name
    assert issubclass(accord.TaskTimeout, TimeoutError)
    assert issubclass(accord.UnshareableError, TypeError)
    assert issubclass(accord.BackendUnavailable, ConnectionError)
    assert issubclass(accord.ShareNotFound, LookupError)
    assert issubclass(accord.WritesLost, accord.CoordinatorLost)


def test_a_closed_share_is_not_a_lost_coordinator():
    # `except CoordinatorLost: share.restart()` must not catch a deliberate close.
    assert not issubclass(accord.ShareClosed, accord.CoordinatorLost)
    assert not issubclass(accord.CoordinatorLost, accord.ShareClosed)


@pytest.mark.parametrize("name", ERRORS)
def test_errors_pickle_by_their_public_path(name):
    cls = getattr(accord, name)
    error = cls("what happened")
    data = pickle.dumps(error)
    assert b"accord._" not in data  # by reference to accord.<Name>, no private module
    again = pickle.loads(data)
    assert type(again) is cls and str(again) == "what happened"


def test_public_classes_pickle_by_their_public_path():
    data = pickle.dumps([accord.Share, accord.Proxy, accord.Pool])
    assert b"accord._" not in data and b"accord.share" not in data
    assert pickle.loads(data) == [accord.Share, accord.Proxy, accord.Pool]


def test_backend_modules_reexport_the_public_errors():
    # Code written against the earlier homes of these errors keeps working.
    from accord._core._remote import RemoteError
    from accord.backends.redis import BackendUnavailable, TamperedPayload
    from accord.backends.shm._transport import AuthenticationError

    assert RemoteError is accord.RemoteError
    assert BackendUnavailable is accord.BackendUnavailable
    assert TamperedPayload is accord.TamperedPayload
    assert AuthenticationError is accord.AuthenticationError


def test_accord_ships_its_annotations():
    from pathlib import Path

    assert (Path(accord.__file__).parent / "py.typed").is_file()
