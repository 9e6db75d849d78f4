"""Augmented assignments on a share are recognised, and nothing else is."""

from __future__ import annotations

import pytest

from accord import AugmentedAssignmentUnsupported, Share
from accord.share import _augmented
from accord.share._augmented import DONE, is_augmented


class Probe:
    """Records, for each attribute or item read, whether it starts `x op= y`."""

    def __init__(self):
        self.seen = []

    def __getattr__(self, name):
        self.seen.append((name, is_augmented()))
        return _Marker() if self.seen[-1][1] else 1

    def __getitem__(self, key):
        self.seen.append((key, is_augmented()))
        return _Marker() if self.seen[-1][1] else 1

    def __setattr__(self, name, value):
        if name == "seen":
            object.__setattr__(self, name, value)

    def __setitem__(self, key, value):
        pass


class _Marker:
    def __iadd__(self, other):
        return DONE

    __ior__ = __isub__ = __imul__ = __iadd__


def f(x):
    return x


def test_recognised_forms():
    p = Probe()
    p.a += 1
    p.b |= {2}
    p.c -= f(3) * 2 if p.flag else 0
    p["k"] += 1
    p[1:3] += 1  # BINARY_SLICE / STORE_SLICE on 3.12+
    p.d[1] if False else None
    assert ("a", True) in p.seen
    assert ("b", True) in p.seen
    assert ("c", True) in p.seen
    assert ("flag", False) in p.seen
    assert ("k", True) in p.seen
    assert (slice(1, 3), True) in p.seen


def test_recognised_past_the_256th_name_of_a_function():
    # Its LOAD_ATTR and STORE_ATTR then take an EXTENDED_ARG prefix.
    source = "def many(p):\n"
    source += "".join(f"    p.a{i} = 1\n" for i in range(300))
    source += "    p.last += 1\n    x = p.plain\n"
    namespace: dict = {}
    exec(source, namespace)
    p = Probe()
    namespace["many"](p)
    assert ("last", True) in p.seen
    assert ("plain", False) in p.seen


def test_plain_reads_are_not_augmented():
    p = Probe()
    x = p.a
    y = p["k"] + 1
    p.b = p.c + 1
    z = getattr(p, "d")  # noqa: B009
    assert all(not augmented for _, augmented in p.seen), p.seen
    assert (x, y, z) == (1, 2, 1)


def test_verdict_survives_specialisation():
    # The adaptive interpreter rewrites hot instructions; the verdict must not change.
    p = Probe()
    for _ in range(100):
        p["k"] += 1
        p.a += 1
    assert all(augmented for _, augmented in p.seen)


def test_the_running_python_passes_the_import_self_check():
    assert _augmented.RECOGNISED
    assert _augmented.self_check()


def test_the_self_check_fails_when_the_detector_does_not_recognise_the_bytecode(monkeypatch):
    monkeypatch.setattr(_augmented, "_verdicts", {})
    monkeypatch.setattr(_augmented, "_analyser", lambda code, lasti: False)
    assert not _augmented.self_check()
    monkeypatch.setattr(_augmented, "_verdicts", {})
    monkeypatch.setattr(_augmented, "_analyser", lambda code, lasti: True)
    assert not _augmented.self_check()  # plain reads taken for augmented ones


def test_unrecognised_bytecode_refuses_augmented_assignment_instead_of_losing_updates(
    monkeypatch,
):
    # What a Python whose bytecode the self-check rejected does.
    monkeypatch.setattr(_augmented, "_verdicts", {})
    monkeypatch.setattr(_augmented, "_analyser", _augmented._refuse)
    with Share(backend="memory") as share:
        share.x = 1
        share.d = {"k": 1}
        with pytest.raises(AugmentedAssignmentUnsupported):
            share.x += 1
        with pytest.raises(AugmentedAssignmentUnsupported):
            share.d["k"] += 1
        y = share.x + 1  # plain reads and writes still work
        share.x = y
        assert share.x == 2 and share.d == {"k": 1}
