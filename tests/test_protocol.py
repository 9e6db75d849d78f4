"""Commands travel as plain tuples; the coordinator reads them by name."""

from __future__ import annotations

import pickle

import pytest

from accord._core import _protocol as P


def test_a_command_is_read_by_name():
    wire = (P.AUGMENT, 7, [3, 1], (3, 9), ("counter",), "iadd", b"operand")
    command = P.as_command(pickle.loads(pickle.dumps(wire)))
    assert command.op == P.AUGMENT and command.reply_id == 7
    assert command.waits == [3, 1] and command.writes == (3, 9)
    assert command.fields == (("counter",), "iadd", b"operand")
    assert command.name == "counter"
    assert P.as_command(command) is command
    assert P.as_command([P.FLUSH, 0, [], ()]).fields == ()  # redis hands a list


def test_a_message_too_short_to_be_a_command_is_refused():
    # The coordinator cuts off a client that sends one (a broken client).
    with pytest.raises(ValueError):
        P.as_command((P.FLUSH, 0))
