"""Nothing hangs, nothing is corrupted, nothing is left behind."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import textwrap
import threading
import time

import pytest
from run_names import share_name

from accord import (
    AuthenticationError,
    CoordinatorLost,
    RestartRefused,
    Share,
    ShareClosed,
    UnshareableError,
)
from accord._core._atomic import load
from accord._core._coordinator import STUCK_S
from accord._core._segment import leftovers
from accord.backends.shm import _control, _ring
from accord.backends.shm._client import STALE_NS, _pid_alive
from accord.backends.shm._transport import connect, runtime_dir


def _wait_until(condition, timeout=15.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.01)  # polling our own condition, not synchronising with a process
    return False


def _stem(share):
    return share._link.info.stem


def _kill_coordinator(share):
    os.kill(share.coordinator_pid, signal.SIGKILL)
    share._link.client.owner_process.wait(10)


def test_close_removes_every_resource():
    share = Share(name=share_name("close"))
    share.blob = list(range(1000))
    share.flush()
    stem = _stem(share)
    pid = share.coordinator_pid
    assert leftovers(stem + "~")
    share.close()
    assert leftovers(stem + "~") == []
    assert not (runtime_dir() / f"{share_name('close')}.sock").exists()
    assert not (runtime_dir() / f"{share_name('close')}.key").exists()
    assert _wait_until(lambda: not _pid_alive(pid, None))
    with pytest.raises(ShareClosed):
        share.blob  # noqa: B018
    share.close()  # idempotent


def test_killed_coordinator_raises_within_seconds_for_every_operation():
    share = Share()
    share.x = 1
    share.lst = []
    share.flush()
    _kill_coordinator(share)
    started = time.monotonic()

    def read_fails():
        try:
            share.x  # noqa: B018  (an unchanged read: noticed by the stale heartbeat)
        except CoordinatorLost:
            return True
        return False

    assert _wait_until(read_fails, timeout=5)
    assert time.monotonic() - started < 2.5
    with pytest.raises(CoordinatorLost):
        share.lst.append(1)
    with pytest.raises(CoordinatorLost):
        share.lst.pop()
    with pytest.raises(CoordinatorLost):
        share.flush()
    stem = _stem(share)
    share.close()  # the owner removes what the dead coordinator left
    assert leftovers(stem + "~") == []


def test_pending_call_fails_when_the_coordinator_dies(share):
    share.x = 0
    errors = []

    def slow_call():
        try:
            share.apply("x", lambda v: time.sleep(30))
        except CoordinatorLost as exc:
            errors.append(exc)

    thread = threading.Thread(target=slow_call)
    thread.start()
    assert _wait_until(lambda: share._link.client._next_reply >= 1)  # the call is under way
    started = time.monotonic()
    _kill_coordinator(share)
    thread.join(10)
    assert not thread.is_alive()
    assert len(errors) == 1
    assert time.monotonic() - started < 3


def _append_forever(share, started):
    started.set()
    i = 0
    while True:
        share.n += 1
        share.lst.append(i)
        i += 1


def test_worker_killed_mid_write_corrupts_nothing(share, ctx, separate_processes):
    share.n = 0
    share.lst = []
    started = ctx.Event()
    p = ctx.Process(target=_append_forever, args=(share, started))
    p.start()
    assert started.wait(60)
    assert _wait_until(lambda: len(share.lst) > 200)
    os.kill(p.pid, signal.SIGKILL)
    p.join(10)
    # Every write the worker queued is applied; none is half-applied; and
    # reads do not wait for writes it never sent.
    n = share.n
    assert len(share.lst) in (n, n + 1, n - 1)
    assert share.lst == list(range(len(share.lst)))
    share.lst.append("after")
    assert share.lst[-1] == "after"


def _die_between_flag_and_send(share):
    # The worst moment to die: flags raised, command not in the ring.
    client = share._link.client
    client.send(0, (), ())  # connect
    client._producer = _DiesOnAppend(client._producer)
    share.lst.append("never sent")


class _DiesOnAppend:
    def __init__(self, producer):
        self.producer = producer

    def append(self, payload):
        os._exit(0)  # the socket closes with the process

    def write(self, *args):
        # A fire-and-forget write (intent, flags and append in one C call):
        # intent and flags written, the entry not published -- then death.
        self.producer.write(*args, stop=_ring.STOP_AFTER_PAYLOAD)
        os._exit(0)


def test_flags_of_a_write_never_sent_are_credited(share, ctx, separate_processes):
    share.lst = []
    p = ctx.Process(target=_die_between_flag_and_send, args=(share,))
    p.start()
    p.join(30)
    assert p.exitcode == 0
    started = time.monotonic()
    assert share.lst == []  # would wait if the raised flag were not credited
    # ... and faster than the coordinator's safety net for stuck flags would.
    assert time.monotonic() - started < STUCK_S * 0.75


def test_lock_of_a_killed_holder_is_released(share, ctx, separate_processes):
    ready = ctx.Event()
    p = ctx.Process(target=_hold_lock_forever, args=(share, ready))
    p.start()
    assert ready.wait(60)
    assert share.lock("res").acquire(timeout=0.1) is False
    os.kill(p.pid, signal.SIGKILL)
    p.join(10)
    lock = share.lock("res")
    assert lock.acquire(timeout=10)
    lock.release()


def _hold_lock_forever(share, ready):
    share.lock("res").acquire()
    ready.set()
    threading.Event().wait()


def _run(code: str, *args: str, timeout: float = 60) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code), *args],
        stdout=subprocess.PIPE,
        text=True,
    )


def test_owner_killed_with_sigkill_leaves_nothing():
    owner = _run(
        """
        import sys, threading
        from accord import Share
        share = Share(name=sys.argv[1])
        share.data = list(range(100))
        share.flush()
        print(share.coordinator_pid, flush=True)
        threading.Event().wait()
        """,
        share_name("owner-killed"),
    )
    pid = int(owner.stdout.readline())
    stem = f"accord.{os.getuid()}.{share_name('owner-killed')}"
    assert leftovers(stem + "~")
    owner.kill()
    owner.wait(10)
    owner.stdout.close()
    assert _wait_until(lambda: not _pid_alive(pid, None))
    assert leftovers(stem + "~") == []
    assert not (runtime_dir() / f"{share_name('owner-killed')}.key").exists()


def test_interpreter_exit_without_close_cleans_up():
    proc = _run(
        """
        import sys
        from accord import Share
        share = Share(name=sys.argv[1])
        share.x = [1, 2, 3]
        print(share.coordinator_pid, flush=True)
        """,
        share_name("exit"),
    )
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0
    pid = int(out)
    assert _wait_until(lambda: not _pid_alive(pid, None))
    assert leftovers(f"accord.{os.getuid()}.{share_name('exit')}~") == []


def test_segments_and_sockets_are_private(share):
    share.x = 1
    share.flush()
    for name in leftovers(_stem(share) + "~"):
        assert stat.S_IMODE(os.stat(f"/dev/shm/{name}").st_mode) == 0o600
    info = share._link.info
    assert stat.S_IMODE(os.stat(runtime_dir()).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(info.socket_path).st_mode) & 0o077 == 0


def test_wrong_key_is_refused(share):
    share.x = 1
    with pytest.raises(AuthenticationError):
        connect(share._link.info.socket_path, b"not the key" * 3)
    assert share.x == 1  # the coordinator carried on


def test_unserializable_state_from_a_method_is_reported_not_hung(share):
    share.box = Box()
    share.box.put_lock()
    with pytest.raises(UnshareableError, match=r"share\.box can no longer be serialized"):
        len(share.box.items)
    share.apply("box", Box.clear)  # the way back the error message names
    assert share.box.items == []


class Box:
    def __init__(self):
        self.items = []

    def put_lock(self):
        self.items.append(threading.Lock())

    def clear(self):
        self.items.clear()


def _increment_after(share, ready, go, done):
    share.counter += 0  # attached to the first coordinator
    share.flush()
    lst = share.lst  # a proxy kept across the restart
    ready.set()
    go.wait(60)
    # The first operation after the restart comes once the dead
    # coordinator's heartbeat is stale (as it does on a loaded machine):
    # the old incarnation is then found dead before anything is sent, and
    # its reads must follow the restart like its writes.
    ctrl = share._link.client.ctrl  # (the old incarnation's, not yet followed)
    while time.monotonic_ns() - load(ctrl, _control.HEARTBEAT) < STALE_NS:
        time.sleep(0.01)  # a dead process's clock: nothing to wait on
    share.counter += 1
    lst.append(3)
    share.flush()
    done.set()


@pytest.mark.timeout(180)  # two coordinators and a worker started, on a loaded machine
def test_restart_from_the_last_committed_state(ctx):
    share = Share()
    try:
        share.counter = 5
        share.lst = [1, 2]
        share.flush()
        lst = share.lst  # a proxy kept across the restart
        ready, go, done = ctx.Event(), ctx.Event(), ctx.Event()
        worker = ctx.Process(target=_increment_after, args=(share, ready, go, done))
        worker.start()
        assert ready.wait(60)
        with pytest.raises(RestartRefused):
            share.restart()
        old_pid = share.coordinator_pid
        _kill_coordinator(share)
        with pytest.raises(CoordinatorLost) as lost:
            share.lst.pop()
        assert share.restart() == []
        assert share.coordinator_pid != old_pid
        assert share.counter == 5
        # The pop was queued before the death was noticed (then restart()
        # applies it once, its result lost), or refused before (not applied).
        restored = [1] if lost.value.queued else [1, 2]
        assert lst == restored
        go.set()  # the worker's next operations reach the new coordinator
        # Its end, not a fixed wait: a worker that died says so at once.
        assert _wait_until(lambda: done.is_set() or not worker.is_alive(), timeout=120)
        worker.join(60)
        assert done.is_set(), f"the worker failed (exit code {worker.exitcode})"
        assert share.counter == 6
        assert lst == [*restored, 3]
    finally:
        stem = _stem(share)
        share.close()
    assert leftovers(stem + "~") == []


def test_leftovers_of_shares_whose_owner_and_coordinator_were_killed_are_swept():
    owner = _run(
        """
        import sys, threading
        from accord import Share
        share = Share(name=sys.argv[1])
        share.data = [1, 2, 3]
        share.flush()
        print(share.coordinator_pid, flush=True)
        threading.Event().wait()
        """,
        share_name("abandoned"),
    )
    coordinator = int(owner.stdout.readline())
    os.kill(coordinator, signal.SIGKILL)  # first, so that it cannot clean up
    owner.kill()
    owner.wait(10)
    owner.stdout.close()
    assert _wait_until(lambda: not _pid_alive(coordinator, None))
    stem = f"accord.{os.getuid()}.{share_name('abandoned')}"
    assert leftovers(stem + "~")
    assert (runtime_dir() / f"{share_name('abandoned')}.key").exists()
    with Share():  # any new share sweeps what dead shares left
        pass
    assert leftovers(stem + "~") == []
    assert not (runtime_dir() / f"{share_name('abandoned')}.key").exists()
    assert not (runtime_dir() / f"{share_name('abandoned')}.sock").exists()
