"""The coordinator's short path for fire-and-forget writes
(`Coordinator.run_queued`) against its general one (`execute`): the same
commands, received as the writer pickles them, leave the same state."""

from __future__ import annotations

import pickle
from collections import deque

from hypothesis import example, given, settings
from hypothesis import strategies as st

from accord._core import _changes, _coordinator
from accord._core import _protocol as P
from accord._core._coordinator import Coordinator


class _Snapshots:
    def write(self, *args) -> None:
        pass

    def delete(self, name) -> None:
        pass

    def append(self, *args) -> bool:
        return True


class _Server:
    snapshots = _Snapshots()
    peers: dict = {}

    def set_applied(self, slot, value) -> None:
        pass

    def send(self, peer, payload) -> None:
        pass


class _Peer:
    id = 0
    pid = 0

    def alive(self) -> bool:
        return True


_values = st.none() | st.booleans() | st.integers(-5, 5) | st.floats(-2, 2) | st.text(max_size=3)
_names = st.sampled_from(["n", "lst", "d", "missing"])
_commands = st.one_of(
    st.tuples(st.just(P.ASSIGN), _names, _values),
    st.tuples(
        st.just(P.AUGMENT), _names, st.sampled_from(["iadd", "imul", "ior", "nope"]), _values
    ),
    st.tuples(
        st.just(P.CALL), _names, st.sampled_from(["append", "pop", "clear", "nope"]), _values
    ),
)


def _wire(command, pending: dict) -> bytes:
    """`command` as ShmClient.send pickles it (a wait on the WHOLE slot)."""
    op, name, *rest = command
    whole = {"n": 1, "lst": 2, "d": 3, "missing": 4}[name]
    writes = (whole, whole + 10)
    wait = pending.get(whole, 0)
    for s in writes:
        pending[s] = pending.get(s, 0) + 1
    if op == P.ASSIGN:
        fields = ((name,), (rest[0],))
    elif op == P.AUGMENT:
        fields = ((name,), rest[0], (rest[1],))
    else:
        fields = ((name,), rest[0], (rest[1],) if rest[0] == "append" else ())
    return pickle.dumps((op, 0, (whole, wait), writes, *fields), 5)


def _sent(command, pending: dict) -> bytes:
    """`command` exactly as ring_send puts it in a ring: pickled with
    WAIT_MARK where its ticket goes, those 8 bytes then overwritten."""
    from accord.backends.shm._rings import WAIT_MARK, WAIT_MARK_BYTES

    plain = pickle.loads(_wire(command, pending))
    payload = pickle.dumps((*plain[:2], (plain[2][0], WAIT_MARK), *plain[3:]), 5)
    at = payload.find(WAIT_MARK_BYTES)
    return payload[:at] + plain[2][1].to_bytes(8, "little") + payload[at + 8 :]


class _Numbered(_Peer):
    def __init__(self, peer_id: int) -> None:
        self.id = peer_id


def _run(commands: list, short: bool, runs: bool = True, peers: list | None = None) -> tuple:
    """Run `commands` (sent by the peers `peers` names, in that order, each
    peer's in its own queue) on a fresh coordinator; the state it leaves.
    `short`: through run_queued (and, with `runs`, run_augments and
    run_appends), else
    every command through `execute`."""
    coordinator = Coordinator(_Server(), 0, 0.002)
    coordinator.mirror.update(n=0, lst=[], d={})
    peers = peers or [0] * len(commands)
    for peer_id in set(peers):
        coordinator.peers[peer_id] = _Numbered(peer_id)
    errors: list = []
    coordinator.report = lambda peer, error, name=None: errors.append(error[1].splitlines()[-1])
    if not short:  # every command through `execute`, as a Command
        coordinator.run_queued = lambda peer, m: coordinator.execute(peer, P.as_command(m))
    if not short or not runs:
        coordinator.run_augments = lambda run, queue: 0
        coordinator.run_appends = lambda run, queue: 0
    pending: dict = {}
    for peer_id, command in zip(peers, commands, strict=True):
        coordinator.queues.setdefault(peer_id, deque()).append(_sent(command, pending))
    coordinator.process()
    assert not coordinator.queues
    return (
        coordinator.mirror,
        coordinator.received,
        coordinator.dirty_slots,
        coordinator.uncommitted,
        coordinator.touched,
        coordinator.changes,
        errors,
    )


@settings(max_examples=150, deadline=None)
@given(st.lists(_commands, max_size=12))
def test_the_short_path_leaves_what_execute_leaves(commands):
    assert _run(commands, short=True) == _run(commands, short=False)


_numbers = (
    st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False)
    | st.complex_numbers(allow_nan=False, max_magnitude=1e10)
)
_augments = st.tuples(
    st.just(P.AUGMENT),
    st.sampled_from(["n", "n", "n", "lst"]),
    st.sampled_from(["iadd", "isub", "imul", "itruediv", "ifloordiv", "ipow", "ior"]),
    _numbers | _values,
)


_appends = st.tuples(
    st.just(P.CALL), st.sampled_from(["lst", "lst", "n"]), st.just("append"), _values
)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(0, 2), st.integers(1, 6), _augments | _appends | _commands),
        max_size=10,
    )
)
@example(  # a run must wait for the other process's write between its commands
    [
        (0, 2, (P.AUGMENT, "n", "iadd", 1)),
        (1, 1, (P.AUGMENT, "n", "imul", 3)),
        (0, 2, (P.AUGMENT, "n", "iadd", 1)),
    ]
)
@example(  # the same for appends
    [
        (0, 2, (P.CALL, "lst", "append", 1)),
        (1, 1, (P.CALL, "lst", "append", 2)),
        (0, 2, (P.CALL, "lst", "append", 3)),
    ]
)
def test_runs_of_augments_leave_what_each_command_alone_leaves(bursts):
    """`share.n op= k` and `share.lst.append(x)` repeated by several
    processes, interleaved in bursts (as processes are scheduled), other
    writes and errors among them: the state after `run_augments` and
    `run_appends` take whole runs at once is the state after run_queued or
    execute takes each command alone."""
    commands, peers = [], []
    for peer_id, repeat, command in bursts:
        commands += [command] * repeat
        peers += [peer_id] * repeat
    folded = _run(commands, short=True, peers=peers)
    for other in (
        _run(commands, short=True, runs=False, peers=peers),
        _run(commands, short=False, peers=peers),
    ):
        assert folded == other or repr(folded) == repr(other)  # (nan != nan)


def test_a_run_of_augments_is_applied_without_decoding_each_command():
    """The bytes of a `share.n += 1` but for the ticket: applied from the
    run's first command (a broken run_augments fails here: every command
    would be unpickled)."""
    coordinator = Coordinator(_Server(), 0, 0.002)
    coordinator.mirror["n"] = 0
    coordinator.peers[0] = _Numbered(0)
    pending: dict = {}
    coordinator.queues[0] = deque(_sent((P.AUGMENT, "n", "iadd", 2), pending) for _ in range(50))
    loads = []
    real = pickle.loads
    _coordinator.pickle.loads = lambda data: loads.append(data) or real(data)
    try:
        coordinator.process()
    finally:
        _coordinator.pickle.loads = real
    assert coordinator.mirror["n"] == 100
    assert len(loads) == 2  # the first, which starts the run (and its probe)
    assert coordinator.received[1] == 50 and coordinator.received[11] == 50
    assert coordinator.uncommitted == {1: {"n"}, 11: {"n"}}


def test_a_run_of_appends_is_applied_as_one():
    """Appends to one list: only the first goes through run_queued; the
    others are applied as one run, logged for readers each."""
    coordinator = Coordinator(_Server(), 0, 0.002)
    coordinator.mirror["lst"] = []
    coordinator.peers[0] = _Numbered(0)
    pending: dict = {}
    coordinator.queues[0] = deque(_sent((P.CALL, "lst", "append", i), pending) for i in range(50))
    alone = []
    short = coordinator.run_queued
    coordinator.run_queued = lambda peer, message: alone.append(message) or short(peer, message)
    coordinator.process()
    assert coordinator.mirror["lst"] == list(range(50))
    assert len(alone) == 1
    assert coordinator.changes["lst"] == [(_changes.CALL, "append", (i,)) for i in range(50)]
    assert coordinator.received[2] == 50 and coordinator.uncommitted == {2: {"lst"}, 12: {"lst"}}


def test_the_short_path_is_taken_for_fire_and_forget_writes_only():
    pending: dict = {}
    write = pickle.loads(_wire((P.AUGMENT, "n", "iadd", 1), pending))
    assert type(_coordinator._decoded(pickle.dumps(write, 5))) is tuple
    for other in (
        (write[0], 7, *write[2:]),  # waits for a reply
        (write[0], 0, write[2], (), *write[4:]),  # raises no flag
        (P.DELETE, 0, write[2], write[3], ("n",)),  # another command
        (*write, "extra"),  # not its shape
    ):
        assert type(_coordinator._decoded(pickle.dumps(other, 5))) is P.Command
