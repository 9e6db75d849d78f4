"""The coordinator's short path for fire-and-forget writes
(`Coordinator.run_queued`) against its general one (`execute`): the same
commands, received as the writer pickles them, leave the same state."""

from __future__ import annotations

import pickle
from collections import deque

from hypothesis import given, settings
from hypothesis import strategies as st

from accord._core import _coordinator
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


def _run(commands: list, short: bool) -> tuple:
    coordinator = Coordinator(_Server(), 0, 0.002)
    coordinator.mirror.update(n=0, lst=[], d={})
    peer = _Peer()
    coordinator.peers[0] = peer
    errors: list = []
    coordinator.report = lambda peer, error: errors.append(error[1].splitlines()[-1])
    if not short:  # every command through `execute`, as a Command
        coordinator.run_queued = lambda peer, m: coordinator.execute(peer, P.as_command(m))
    pending: dict = {}
    coordinator.queues[0] = deque(_wire(c, pending) for c in commands)
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
