"""The redis backend against someone with write access to Redis but without
the share's key (issue 9, points 3 and 4), and against a command that kills
every coordinator (point 7).  The attacker uses redis-py, as anyone could."""

from __future__ import annotations

import os
import signal
import time

import pytest
import redis
from run_names import share_name

from accord import CommandQuarantined, CoordinatorLost, Share
from accord.backends.redis import TamperedPayload

KEY = "a-test-key-of-the-suite-0123456789"


def _prefix(name: str) -> str:
    return f"accord:{{{name}}}:"


def _until(condition, timeout=15.0, what="condition"):
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)  # polling another process's progress


@pytest.fixture
def attacker(redis_server):
    r = redis.Redis.from_url(redis_server.url)
    yield r
    r.close()


def _last_id(r, stream: str) -> bytes:
    return r.xinfo_stream(stream)["last-generated-id"]


def _captured(r, stream: str, after: bytes) -> list[dict]:
    """The stream entries after `after`, as an eavesdropper copies them."""
    return [fields for _id, fields in r.xrange(stream, min=b"(" + after)]


def _kill_coordinator(share) -> None:
    process = share._link.client.owner_process
    os.kill(share.coordinator_pid, signal.SIGKILL)
    process.wait(10)


def _lost(share) -> bool:
    try:
        share.flush()
    except CoordinatorLost:
        return True
    return False


def test_replayed_commands_are_ignored(redis_server, attacker):
    name = share_name("replay")
    stream = _prefix(name) + "cmd"
    # A long commit window: the command stays in the stream to be copied.
    with Share(name=name, backend=redis_server.url, key=KEY, commit_window=60) as share:
        share.balance = 100
        share.flush()
        mark = _last_id(attacker, stream)
        share.balance -= 30
        captured = _captured(attacker, stream, mark)
        assert len(captured) == 1
        for _ in range(3):
            attacker.xadd(stream, captured[0])
        assert share.balance == 70
        # Reads still see this process's own writes (no flag was credited twice).
        for i in range(1, 101):
            share.balance += 1
            assert share.balance == 70 + i
        # After a takeover too: the new coordinator knows what was applied.
        _kill_coordinator(share)
        _until(lambda: _lost(share), what="CoordinatorLost")
        assert share.restart() == []
        attacker.xadd(stream, captured[0])
        share.balance += 0
        assert share.balance == 170


def test_replay_of_a_command_not_yet_committed_across_a_takeover(redis_server, attacker):
    name = share_name("replay-takeover")
    stream = _prefix(name) + "cmd"
    with Share(name=name, backend=redis_server.url, key=KEY, commit_window=60) as share:
        share.balance = 100
        share.flush()
        mark = _last_id(attacker, stream)
        share.balance -= 30  # applied, not committed
        captured = _captured(attacker, stream, mark)
        attacker.xadd(stream, captured[0])
        _until(lambda: attacker.xlen(stream) >= 2, what="the copy in the stream")
        _kill_coordinator(share)
        _until(lambda: _lost(share), what="CoordinatorLost")
        share.restart()  # continues from the committed state, through the stream
        assert share.balance == 70


def test_an_old_snapshot_is_never_served_as_a_newer_one(redis_server, attacker):
    name = share_name("rollback")
    state, snap = _prefix(name) + "state", _prefix(name) + "snap"
    with Share(name=name, backend=redis_server.url, key=KEY) as share:
        share.owner = "alice"
        share.flush()
        old_snapshot, old_entry = attacker.hget(snap, "owner"), attacker.hget(state, "v:owner")
        share.owner = "bob"
        share.flush()
        assert share.owner == "bob"
        newest = int(attacker.hget(state, "c"))
        _version, *rest = old_entry.split()
        # The old snapshot put back under a raised version number.
        attacker.hset(snap, "owner", old_snapshot)
        attacker.hset(state, "v:owner", b" ".join([b"%d" % (newest + 5), *rest]))
        with pytest.raises(TamperedPayload, match="signature check failed"):
            share.owner  # noqa: B018
        # Under its own, older version: refused by a reader that read newer.
        attacker.hset(state, "v:owner", old_entry)
        with pytest.raises(TamperedPayload, match="older than version"):
            share.owner  # noqa: B018
        # A new coordinator refuses the raised one too: "owner" is lost, not 'alice'.
        attacker.hset(state, "v:owner", b" ".join([b"%d" % (newest + 5), *rest]))
        _kill_coordinator(share)
        _until(lambda: _lost(share), what="CoordinatorLost")
        assert share.restart() == ["owner"]
        with pytest.raises(TamperedPayload):
            share.owner  # noqa: B018
        share.owner = "carol"  # the owner of the key repairs it
        assert share.owner == "carol"


def _exit_process(value):
    os._exit(7)


def test_a_command_that_kills_every_coordinator_is_quarantined(redis_server, capfd):
    with Share(name=share_name("poison"), backend=redis_server.url, key=KEY) as share:
        share.x = 1
        share.flush()
        with pytest.raises(CoordinatorLost):
            share.apply("x", _exit_process)
        restarts = 0
        while _until(lambda: _lost(share) or "alive", what="a verdict") is True:
            restarts += 1
            assert restarts <= 4, "the command keeps killing coordinators"
            share._link.client.owner_process.wait(10)
            share.restart()
        assert restarts == 3  # three coordinators died applying it; the fourth skipped it
        assert share.x == 1
        share.x += 1
        assert share.x == 2
    assert "skipped" in capfd.readouterr().err


class Exits:
    def __init__(self) -> None:
        self.calls = 0

    def quit(self) -> None:
        self.calls += 1  # a write: it runs on the coordinator
        os._exit(7)


def test_the_sender_of_a_quarantined_command_gets_the_error(redis_server):
    with Share(name=share_name("poison-queued"), backend=redis_server.url, key=KEY) as share:
        share.obj = Exits()
        share.n = 0
        share.flush()
        with pytest.raises(CoordinatorLost):
            share.obj.quit()
            share.flush()
        for _ in range(3):
            _until(lambda: _lost(share), what="CoordinatorLost")
            share._link.client.owner_process.wait(10)
            share.restart()
        with pytest.raises(CommandQuarantined):
            # A blocking call that was cut off gets its error; a queued one
            # gets it with the next blocking call.
            share.n += 1
            share.flush()
            share._link.client.replies.raise_deferred()
            raise AssertionError("no error arrived") from None


class Adder:
    def __init__(self) -> None:
        self.n = 0

    def add(self, numbers) -> None:
        self.n = self.n + numbers["x"]  # a KeyError on the coordinator


def test_replayed_replies_and_errors_are_dropped(redis_server, attacker):
    name = share_name("replay-reply")
    with Share(name=name, backend=redis_server.url, key=KEY) as share:
        share.adder = Adder()
        share.lst = [1]
        share.flush()
        client = share._link.client
        replies = _prefix(name) + f"r:{client._id}"
        seen = []  # what MONITOR would show an attacker of this process's replies
        blpop = client.r.blpop

        def eavesdrop(*args, **kwargs):
            popped = blpop(*args, **kwargs)
            if popped is not None:
                seen.append(popped[1])
            return popped

        client.r.blpop = eavesdrop
        share.adder.add({})  # queued: its error comes with the next reply
        with pytest.raises(KeyError):
            share.flush()
        assert len(seen) >= 2  # the error, then the flush's own reply
        attacker.rpush(replies, *seen, *seen)  # all of it again, twice
        share.flush()  # no old error is raised again
        assert share.lst.pop() == 1  # and no old reply answers a new call
        share.lst.append(2)
        attacker.rpush(replies, *seen)
        assert share.lst.pop() == 2
        assert share.adder.n == 0
