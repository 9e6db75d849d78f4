"""The writer's C paths (shm): ``share.name op= value`` and ``proxy.method(value)``
sent by `_ring.Sender` without a Python frame.  They must append exactly the
command the Python path appends (same decoded tuple, same intent record and
flags), hand every case they do not cover to the Python path, and keep each
process's and thread's order, counters exact, under every spawn backend."""

from __future__ import annotations

import math
import multiprocessing
import pickle
import struct
import threading

import pytest
from c_write_workers import child_writes, mixed_writer, order
from hypothesis import given, settings
from hypothesis import strategies as st

from accord._core import _protocol as P
from accord.backends.shm import _ring
from accord.backends.shm._rings import WAIT_MARK, template
from accord.share._link import Link
from accord.share._proxy import BoundMethod

RING_AT = 256
RING_SIZE = 1 << 14
BELL = 64
INTENT, PENDING, CLOSED, REPLACED = 0, 1024, 8 * 100, 8 * 101


class _Setup:
    """A control buffer and a ring in plain bytearrays (what the client maps)."""

    def __init__(self) -> None:
        self.control = bytearray(4096)
        self.rings = bytearray(RING_AT + RING_SIZE)
        _ring.ring_init(self.rings, RING_AT, RING_SIZE)
        self.lock = threading.Lock()
        self.deferred: list = []
        self.woken = 0
        self.registry: dict = {1: True}

    def sender(self) -> _ring.Sender:
        sender = _ring.Sender(
            self.control,
            INTENT,
            PENDING,
            CLOSED,
            REPLACED,
            self.rings,
            RING_AT,
            BELL,
            0,
            self.lock,
            self.deferred,
            self._wake,
        )
        sender.registry = (self.registry, 1)
        return sender

    def _wake(self) -> None:
        self.woken += 1

    def python_send(self, seq: int, command: tuple, writes: tuple) -> int:
        """What ShmClient.send's Python path appends for `command`."""
        op, fields = command[0], command[4:]
        payload = pickle.dumps((op, 0, (writes[0], WAIT_MARK), writes, *fields), 5)
        at = payload.find(WAIT_MARK.to_bytes(8, "little"))
        return _ring.ring_send(
            self.control, INTENT, PENDING, seq, writes, payload, at,
            self.rings, RING_AT, self.rings, BELL, 0,
        )  # fmt: skip

    def entries(self) -> list:
        entries, _ = _ring.ring_drain(self.rings, RING_AT, 0, 1 << 20)
        return [pickle.loads(e) for e in entries]


def _same(a, b) -> bool:
    """Equal, with the same types all the way down (True is not 1; NaN is NaN)."""
    if type(a) is not type(b):
        return False
    if type(a) is tuple:
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if type(a) is float and math.isnan(a):
        return math.isnan(b)
    return a == b


PLAIN_VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**63), 2**63 - 1),
    st.sampled_from([0, 255, 256, 65535, 65536, -1, 2**31 - 1, -(2**31), 2**31, -(2**31) - 1]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=300),
    st.binary(max_size=300),
)
COMMANDS = st.sampled_from(
    [
        (P.AUGMENT, (("counter",), "iadd"), (7, 9)),
        (P.AUGMENT, (("x",), "ior"), (3, 4)),
        (P.CALL, (("lst",), "append"), (11, 12)),
        (P.CALL, (("d", P.ITEM, "k", P.ATTR, "items"), "append"), (5, 6, 8)),
    ]
)


@settings(max_examples=300, deadline=None)
@given(
    command=COMMANDS,
    values=st.lists(PLAIN_VALUES, min_size=1, max_size=8),
    before=st.integers(0, 2**61),  # (old * 4 + how fits 64 bits below 2**62)
)
def test_the_c_path_appends_what_the_python_path_appends(command, values, before):
    op, fields, writes = command
    made = template(op, fields, writes)
    assert made is not None
    c, python = _Setup(), _Setup()
    for setup in (c, python):  # the count the first flag had: the command's wait
        struct.pack_into("<Q", setup.control, PENDING + 8 * writes[0], before)
    sender = c.sender()
    for seq, value in enumerate(values, 1):
        sent = sender.send(made, value)
        assert sent is not None and sent >> 2 == before + seq - 1  # the wait: the old count
        expected = python.python_send(seq, (op, 0, None, writes, *fields, (value,)), writes)
        assert sent == expected
        # The same intent record and flags, word for word.
        assert c.control == python.control
    assert sender.seq == len(values)
    got, want = c.entries(), python.entries()
    assert len(got) == len(want) == len(values)
    for a, b in zip(got, want, strict=True):
        assert _same(a, b), (a, b)


NOT_ENCODED = [
    2**63,
    -(2**63) - 1,
    1j,
    [1],
    (1,),
    "\ud800",  # a lone surrogate: pickle escapes it
    b"x" * 5000,  # bigger than an entry the C path builds
    P.Kind if hasattr(P, "Kind") else object(),
]


@pytest.mark.parametrize("value", NOT_ENCODED, ids=repr)
def test_a_value_the_c_path_does_not_encode_is_left_to_the_python_path(value):
    setup = _Setup()
    sender = setup.sender()
    before = (bytes(setup.control), bytes(setup.rings))
    assert sender.send(template(P.CALL, (("lst",), "append"), (1, 2)), value) is None
    assert (bytes(setup.control), bytes(setup.rings)) == before
    assert sender.seq == 0


@pytest.mark.parametrize(
    "gate", ["unregistered", "not armed", "deferred", "locked", "closed", "replaced", "shut"]
)
def test_every_gate_leaves_the_write_to_the_python_path(gate):
    setup = _Setup()
    sender = setup.sender()
    made = template(P.AUGMENT, (("c",), "iadd"), (1, 2))
    assert sender.send(made, 1) is not None  # open: sent
    if gate == "unregistered":
        setup.registry.clear()  # settled (flush): the Python path registers it again
    elif gate == "not armed":
        sender.registry = None
    elif gate == "deferred":
        setup.deferred.append("an error to raise first")
    elif gate == "locked":
        setup.lock.acquire()  # another thread in the client's Python send
    elif gate == "closed":
        setup.control[CLOSED] = 1
    elif gate == "replaced":
        setup.control[REPLACED] = 1  # restart(): the Python path follows it
    else:
        sender.close()
    before = (bytes(setup.control), bytes(setup.rings))
    assert sender.send(made, 1) is None
    assert (bytes(setup.control), bytes(setup.rings)) == before
    assert sender.seq == 1


def test_a_full_ring_leaves_the_write_to_the_python_path_which_waits():
    setup = _Setup()
    sender = setup.sender()
    made = template(P.CALL, (("lst",), "append"), (1, 2))
    sent = 0
    while sender.send(made, b"x" * 200) is not None:
        sent += 1
    assert 0 < sent < RING_SIZE // 200
    flags = bytes(setup.control[PENDING : PENDING + 24])
    assert sender.send(made, 1) is None  # nothing raised, nothing appended
    assert bytes(setup.control[PENDING : PENDING + 24]) == flags
    assert len(setup.entries()) == sent


def test_a_sleeping_consumer_is_woken_through_the_callback():
    setup = _Setup()
    sender = setup.sender()
    setup.rings[BELL : BELL + 4] = (2).to_bytes(4, "little")  # asleep in select()
    assert sender.send(template(P.AUGMENT, (("c",), "iadd"), (1, 2)), 1) & 3 == 2
    assert setup.woken == 1


# -- through a share -------------------------------------------------------------


def _count_python_paths(monkeypatch) -> dict:
    calls = {"augment": 0, "call": 0}
    augment, call = Link.augment, BoundMethod._accord_call

    def counting_augment(self, *args):
        calls["augment"] += 1
        return augment(self, *args)

    def counting_call(self, *args):
        calls["call"] += 1
        return call(self, *args)

    monkeypatch.setattr(Link, "augment", counting_augment)
    monkeypatch.setattr(BoundMethod, "_accord_call", counting_call)
    return calls


def test_after_the_first_the_common_writes_take_the_c_path(share, monkeypatch):
    share.counter = 0
    share.lst = []
    share.flush()
    calls = _count_python_paths(monkeypatch)
    lst = share.lst
    for i in range(200):
        share.counter += 1
        lst.append(i)
    # The first of each went through Python (and armed the C path), the
    # rest did not -- but for a ring found full or a coordinator heartbeat
    # found stale on a loaded machine (the Python path waits or checks).
    assert calls["augment"] >= 1 and calls["call"] >= 1
    assert calls["augment"] + calls["call"] <= 40
    assert share.counter == 200
    assert share.lst == list(range(200))
    # A settled client (flush) is registered again by one Python write; a
    # line's first `+=` is the Python detector's to recognise.
    share.flush()
    before = calls["augment"]
    for _ in range(3):
        share.counter += 1.5
        share.counter -= 0.5
    assert 2 <= calls["augment"] - before <= 5  # 2: the rest in C
    assert share.counter == 203.0
    # What the C path does not encode goes through Python, in order.
    share.counter = 0
    share.counter += 2**80
    share.counter += 1
    lst.append((1, 2))
    lst.append("three")
    assert share.counter == 2**80 + 1
    assert share.lst[-2:] == [(1, 2), "three"]


@pytest.mark.timeout(300)
def test_c_and_python_writes_keep_each_process_in_order_and_exact(share, ctx):
    share.counter = 0
    share.lst = []
    workers, n = 4, 300
    procs = [ctx.Process(target=mixed_writer, args=(share, w, n)) for w in range(workers)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(240)
    assert [p.exitcode for p in procs] == [0] * workers
    assert share.counter == workers * n
    items = share.lst
    assert len(items) == workers * n
    for w in range(workers):
        assert order(items, w) == list(range(n))


@pytest.mark.timeout(120)
def test_threads_of_one_process_keep_their_order_and_stay_exact(share):
    share.counter = 0
    share.lst = []
    n = 400
    threads = [threading.Thread(target=mixed_writer, args=(share, w, n)) for w in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(100)
    assert share.counter == 4 * n
    items = share.lst
    for w in range(4):
        assert order(items, w) == list(range(n))


@pytest.mark.timeout(120)
def test_a_forked_child_writes_through_its_own_ring_not_its_parents(share):
    share.counter = 0
    share.lst = []
    # Armed in the parent: its Sender is in the Control and the bound method.
    child_writes(share, 50)
    fork = multiprocessing.get_context("fork")
    child = fork.Process(target=child_writes, args=(share, 500))
    child.start()
    child_writes(share, 500)  # the parent writes on meanwhile
    child.join(100)
    assert child.exitcode == 0
    assert share.counter == 1050
    items = share.lst
    assert len(items) == 1050
    assert sorted(items) == sorted(list(range(50)) + list(range(500)) * 2)


def test_the_shares_own_names_are_never_augmented_in_c(share):
    share["flush"] = 0
    share["flush"] += 1  # the Python path: arms `flush` in C
    share["flush"] += 1
    with pytest.raises(TypeError):
        share.flush += 1  # the Share's method, as without the C path
    assert share["flush"] == 2
