"""Commands and replies travel as plain tuples and are read by name."""

from __future__ import annotations

import pickle
import pickletools

import pytest

from accord import Share
from accord._core import _protocol as P
from accord.backends.memory._memory import MemoryServer


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


def test_a_reply_is_read_by_name():
    ok = P.as_reply(pickle.loads(pickle.dumps((7, P.OK, [1, 2]))))
    assert (ok.reply_id, ok.status, ok.value) == (7, P.OK, [1, 2])
    error = P.as_reply((8, P.ERROR, b"exception", "Traceback ..."))
    assert (error.value, error.traceback, error.sequence) == (b"exception", "Traceback ...", None)
    deferred = P.as_reply([0, P.ERROR, b"exception", "Traceback ...", 12])  # redis: a sequence
    assert deferred.reply_id == 0 and deferred.sequence == 12
    assert P.as_reply(ok) is ok


def test_a_kind_compares_as_the_plain_tuple_it_was():
    kind = P.Kind(3, True)
    assert kind == (3, True) and (kind.generation, kind.is_value) == (3, True)
    typed = P.Typed(list, P.NO_KIND)
    assert typed.cls is list and not typed.kind.is_value


def _classes_named(payload: bytes) -> set[str]:
    names: set[str] = set()
    strings: list[str] = []
    for opcode, arg, _pos in pickletools.genops(payload):
        if isinstance(arg, str):
            strings.append(arg)
        if opcode.name == "STACK_GLOBAL":
            names.add(".".join(strings[-2:]))
        elif opcode.name in ("GLOBAL", "INST"):
            names.add(str(arg).replace(" ", "."))
    return names


def test_replies_cross_as_plain_tuples_that_name_no_class_of_ours(monkeypatch):
    # What the coordinator sends is unpickled by the client: it must not
    # make it import our record classes (nor be one of them).
    sent: list[bytes] = []
    original = MemoryServer.send

    def send(self, peer, payload):
        sent.append(payload)
        original(self, peer, payload)

    monkeypatch.setattr(MemoryServer, "send", send)
    with Share(backend="memory") as share:
        share.lst = [1, 2]
        assert share.lst.pop() == 2  # a reply with a value
        with pytest.raises(IndexError):
            share.lst.pop(5)  # a reply with an error
        share.d = {}
        share.d.update(5)  # fire-and-forget: its error comes later
        with pytest.raises(TypeError):
            share.flush()
    assert len(sent) >= 3
    for payload in sent:
        assert type(pickle.loads(payload)) is tuple
        assert not {n for n in _classes_named(payload) if n.startswith("accord._core._protocol")}
