"""Every in-place operator is one atomic command, from one table
(`accord._core._protocol.INPLACE_OPERATORS`) that the proxies, the
augmented-assignment detector and the coordinator share."""

from __future__ import annotations

import dis
import operator

import pytest

from accord import Share
from accord._core import _protocol as P
from accord.share._augmented import Augmenting
from accord.share._proxy import Proxy

BACKENDS = ("shm", "redis")  # for the tests that start processes
PROCESSES = 3
ROUNDS = 15
SYMBOLS = list(P.INPLACE_OPERATORS)


class InPlaceOnly:
    """Defines the 13 in-place operators and no binary one: each records
    itself, so the log shows every operation once and in which order."""

    def __init__(self):
        self.log = []


def _recorder(symbol):
    def method(self, other):
        self.log.append((symbol, other))
        return self

    return method


for _symbol, _name in P.INPLACE_OPERATORS.items():
    setattr(InPlaceOnly, f"__{_name}__", _recorder(_symbol))


def _apply(target_holder, attr, symbol, operand):
    """`target_holder.attr <symbol> operand`, written out as source (exec:
    the detector must see the real statement)."""
    scope = {"h": target_holder, "v": operand}
    exec(f"h.{attr} {symbol} v", scope)


def test_the_table_is_the_running_pythons_operators():
    # Every in-place operator this Python's compiler knows is in the table
    # (a new one in a later Python fails here), under the name of its
    # function in the operator module ...
    compiled = {symbol for _, symbol in dis._nb_ops if symbol.endswith("=")}
    assert compiled == set(P.INPLACE_OPERATORS)
    assert all(callable(getattr(operator, name)) for name in P.INPLACE)
    # ... and the compiler names each symbol as the table does.
    for symbol in SYMBOLS:
        code = compile(f"x.a {symbol} 1", "<test>", "exec")
        ops = [i.argrepr for i in dis.get_instructions(code) if i.opname == "BINARY_OP"]
        assert ops == [symbol]


@pytest.mark.parametrize("symbol", SYMBOLS)
def test_proxy_and_marker_define_every_operator(symbol):
    name = P.INPLACE_OPERATORS[symbol]
    assert f"__{name}__" in vars(Proxy)
    assert f"__{name}__" in vars(Augmenting)


@pytest.mark.parametrize("symbol", SYMBOLS)
def test_a_class_with_only_the_inplace_operator(any_share, symbol):
    any_share.obj = InPlaceOnly()
    any_share.flush()  # committed: `any_share.obj` is now read as a proxy
    _apply(any_share, "obj", symbol, 2)
    any_share.holder = {"inner": InPlaceOnly()}
    exec(f"share.holder['inner'] {symbol} 3", {"share": any_share})
    assert any_share.obj.log == [(symbol, 2)]
    assert any_share.holder["inner"].log == [(symbol, 3)]


def _every_operator(share, worker):
    for i in range(ROUNDS):
        for symbol in SYMBOLS:
            _apply(share, "obj", symbol, (worker, i))
            exec(f"share.box.inner {symbol} v", {"share": share, "v": (worker, i)})


class Box:
    def __init__(self):
        self.inner = InPlaceOnly()


def test_every_operator_from_three_processes(share_for_processes, ctx):
    share = share_for_processes
    share.obj = InPlaceOnly()
    share.box = Box()
    share.flush()
    procs = [ctx.Process(target=_every_operator, args=(share, w)) for w in range(PROCESSES)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    for log in (share.obj.log, share.box.inner.log):
        assert len(log) == PROCESSES * ROUNDS * len(SYMBOLS)  # each applied once
        for w in range(PROCESSES):
            mine = [(symbol, arg) for symbol, arg in log if arg[0] == w]
            expected = [(s, (w, i)) for i in range(ROUNDS) for s in SYMBOLS]
            assert mine == expected  # in the order the process issued them


@pytest.fixture
def share_for_processes(backend):
    with Share(backend=backend) as s:
        yield s


def test_numbers_with_every_operator(any_share):
    any_share.n = 1000
    local = 1000
    for symbol, operand in [
        ("+=", 7),
        ("-=", 3),
        ("*=", 5),
        ("//=", 3),
        ("%=", 997),
        ("**=", 2),
        ("<<=", 3),
        (">>=", 1),
        ("&=", 0xFFF),
        ("^=", 0x55),
        ("|=", 0x100),
        ("/=", 4),
    ]:
        _apply(any_share, "n", symbol, operand)
        scope = {"x": local}
        exec(f"x {symbol} {operand}", scope)
        local = scope["x"]
        assert any_share.n == local, symbol
