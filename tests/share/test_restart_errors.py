"""A fire-and-forget write that restart() replays and that fails is reported
to the process that wrote it, as the dead coordinator would have: at its
next sync point (flush, a blocking call, the barrier at the end of a Pool
task or at exit); logged by the new coordinator if that process is gone."""

from __future__ import annotations

import time

import pytest

from accord import CoordinatorLost, Share
from accord.share._link import settle_all

REPLAYED = "restart: a replayed fire-and-forget command of process"


def _fail_then_sync(share, sync, failed, go, outcome):
    share.d.update(5)  # fire-and-forget: fails on the coordinator, which dies then
    failed.set()
    if not go.wait(120):
        outcome.put(("no go", ""))
        return
    try:
        if sync == "flush":
            share.flush()  # on the new coordinator (this process follows the restart)
        else:  # what the end of an accord.Pool task and interpreter exit do
            settle_all()
    except TypeError as exc:
        outcome.put(("TypeError", "".join(getattr(exc, "__notes__", ()))))
    except BaseException as exc:
        outcome.put((type(exc).__name__, str(exc)))
    else:
        outcome.put(("nothing raised", ""))


def _dead_share(monkeypatch):
    # 2 set-up commands (an assignment and a flush), then the writer's one:
    # the coordinator exits as soon as it has applied it, before a commit.
    monkeypatch.setenv("ACCORD_TEST_EXIT_AFTER_APPLIED", "3")
    share = Share(commit_window=60.0)
    monkeypatch.delenv("ACCORD_TEST_EXIT_AFTER_APPLIED")
    share.d = {}
    share.flush()
    return share


def _restart(share):
    assert share._link.client.owner_process.wait(120) == 70
    with pytest.raises(CoordinatorLost):
        share.flush()
    assert share.restart() == []


@pytest.mark.timeout(180)
@pytest.mark.parametrize("sync", ["flush", "settle"])
def test_a_replayed_write_that_fails_is_raised_in_its_process_at_its_next_sync_point(
    ctx, monkeypatch, capfd, sync
):
    share = _dead_share(monkeypatch)
    try:
        failed, go, outcome = ctx.Event(), ctx.Event(), ctx.Queue()
        process = ctx.Process(target=_fail_then_sync, args=(share, sync, failed, go, outcome))
        process.start()
        assert failed.wait(120)
        _restart(share)
        go.set()
        kind, notes = outcome.get(timeout=120)
        process.join(60)
        assert process.exitcode == 0
        assert kind == "TypeError", notes
        assert "fire-and-forget" in notes
        share.flush()  # the owner wrote nothing that failed: nothing for it
        assert share.d == {}
    finally:
        share.close()
    assert REPLAYED not in capfd.readouterr().err  # told, so not logged


def _fail_then_leave(share, dead):
    share.d.update(5)
    dead.wait(120)  # (a process that left first would have its error logged at once)


@pytest.mark.timeout(180)
def test_a_replayed_write_that_fails_is_logged_when_its_process_is_gone(ctx, monkeypatch, capfd):
    share = _dead_share(monkeypatch)
    try:
        dead = ctx.Event()
        process = ctx.Process(target=_fail_then_leave, args=(share, dead))
        process.start()
        assert share._link.client.owner_process.wait(120) == 70
        dead.set()
        process.join(120)
        assert process.exitcode == 0
        _restart(share)
        share.flush()  # not the owner's error: not raised here
    finally:
        share.close()
    # Logged at once (a process that exited), or at the latest when the
    # share closes (a sub-interpreter, whose process lives on).
    err = ""
    deadline = time.monotonic() + 30
    while REPLAYED not in err and time.monotonic() < deadline:
        err += capfd.readouterr().err
        time.sleep(0.05)
    assert REPLAYED in err
    assert "TypeError" in err


def _settled_dead_share(monkeypatch):
    # 2 set-up commands, then the writer's one: the coordinator exits once
    # it is applied, committed and its ring's tail has passed it, so that
    # restart() replays nothing -- only the dead coordinator knew the error.
    monkeypatch.setenv("ACCORD_TEST_EXIT_AFTER_APPLIED", "3:settled")
    share = Share()
    monkeypatch.delenv("ACCORD_TEST_EXIT_AFTER_APPLIED")
    share.d = {}
    share.flush()
    return share


@pytest.mark.timeout(180)
@pytest.mark.parametrize("sync", ["flush", "settle"])
def test_a_committed_write_that_failed_is_raised_after_restart_at_its_next_sync_point(
    ctx, monkeypatch, capfd, sync
):
    share = _settled_dead_share(monkeypatch)
    try:
        failed, go, outcome = ctx.Event(), ctx.Event(), ctx.Queue()
        process = ctx.Process(target=_fail_then_sync, args=(share, sync, failed, go, outcome))
        process.start()
        assert failed.wait(120)
        _restart(share)
        go.set()
        kind, notes = outcome.get(timeout=120)
        process.join(60)
        assert process.exitcode == 0
        assert kind == "TypeError", notes
        assert "fire-and-forget" in notes
        share.flush()  # the owner wrote nothing that failed: nothing for it
        assert share.d == {}
    finally:
        share.close()
    err = capfd.readouterr().err
    assert "replayed" not in err  # committed before the death: not replayed
    assert "never read the error" not in err  # raised, so not logged


@pytest.mark.timeout(180)
def test_the_owners_committed_write_that_failed_is_raised_after_restart(monkeypatch, capfd):
    share = _settled_dead_share(monkeypatch)
    try:
        share.d.update(5)  # the owner's own: fails, is committed, then the coordinator dies
        assert share._link.client.owner_process.wait(120) == 70
        assert share.restart() == []  # without noticing the death first
        with pytest.raises(TypeError) as info:
            share.flush()
        assert "fire-and-forget" in "".join(info.value.__notes__)
        share.flush()  # raised once
        assert share.d == {}
    finally:
        share.close()
    assert "replayed" not in capfd.readouterr().err
