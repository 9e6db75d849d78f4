"""BaseExceptions raised by user code on the coordinator are that command's
error, never the coordinator's death (issue 9, point 7)."""

from __future__ import annotations

import sys

import pytest

from accord import RemoteTraceback


def _exit(value):
    sys.exit(3)


def _interrupt(value):
    raise KeyboardInterrupt("from a function on the coordinator")


def _generator_exit(value):
    raise GeneratorExit


class Explodes:
    """A shared object whose methods raise BaseExceptions."""

    def __init__(self) -> None:
        self.n = 0

    def quit(self) -> None:
        self.n += 1
        raise SystemExit("method quit")

    def quit_with_result(self) -> int:
        raise SystemExit(5)


class ExitsOnPickle:
    def __reduce__(self):
        raise SystemExit("cannot pickle me")


@pytest.mark.parametrize(
    ("fn", "error"),
    [(_exit, SystemExit), (_interrupt, KeyboardInterrupt), (_generator_exit, GeneratorExit)],
)
def test_base_exception_in_apply_is_raised_in_the_caller(any_share, fn, error):
    any_share.data = {"a": 1}
    any_share.flush()
    with pytest.raises(error) as info:
        any_share.apply("data", fn)
    assert isinstance(info.value.__cause__, RemoteTraceback)
    if error is SystemExit:
        assert info.value.code == 3
    # The coordinator lives on with every object.
    assert any_share.data == {"a": 1}
    any_share.data["b"] = 2
    assert any_share.data == {"a": 1, "b": 2}


def test_base_exception_in_methods_and_queued_calls(any_share):
    any_share.obj = Explodes()
    with pytest.raises(SystemExit) as info:
        any_share.obj.quit_with_result()
    assert info.value.code == 5
    # Whether the call waits or is queued, its error reaches the caller.
    with pytest.raises(SystemExit, match="method quit"):
        any_share.obj.quit()
        any_share.flush()
    assert any_share.obj.n == 1


def test_unpicklable_result_raising_system_exit_is_an_error(any_share):
    any_share.x = 1
    with pytest.raises(SystemExit, match="cannot pickle me"):
        any_share.apply("x", lambda v: ExitsOnPickle())
    assert any_share.x == 1
    # Committing an object whose pickling exits keeps the coordinator too.
    any_share.box = []
    any_share.apply("box", lambda box: box.append(ExitsOnPickle()))
    any_share.x += 1
    assert any_share.x == 2
