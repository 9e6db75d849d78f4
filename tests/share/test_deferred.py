"""Errors of fire-and-forget commands are never lost: the next read that
waits, flush(), close(), the end of `with`, the end of an accord.Pool task,
or (last resort) a message at interpreter exit."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time

import pytest

from accord import Pool, RemoteTraceback, Share
from accord._core import _coordinator


class Slow:
    def __init__(self):
        self.items = []

    def spin_then_fail(self, seconds):
        # Busy for a while (so that a read right after it must wait), then a
        # runtime error: `remove` of a missing item.
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            pass
        self.items.remove("missing")


def test_leaving_with_raises_the_error(backend):
    with pytest.raises(TypeError) as info, Share(backend=backend) as share:
        share.d = {}
        share.d.update(5)  # fire-and-forget; fails on the coordinator
    assert isinstance(info.value.__cause__, RemoteTraceback)
    assert "fire-and-forget" in "".join(info.value.__notes__)


def test_close_raises_every_error_as_a_group(any_share):
    any_share.d = {}
    any_share.n = 0
    any_share.d.update(5)
    any_share.n += "a"
    any_share.d.update(6)
    with pytest.raises(ExceptionGroup) as info:
        any_share.close()
    assert [type(e) for e in info.value.exceptions] == [TypeError, TypeError, TypeError]


def test_flush_raises_every_error_once(any_share):
    any_share.d = {}
    for i in range(3):
        any_share.d.update(i)
    with pytest.raises(ExceptionGroup) as info:
        any_share.flush()
    assert len(info.value.exceptions) == 3
    any_share.flush()  # raised once, not again
    any_share.d.update(7)
    with pytest.raises(TypeError):
        any_share.flush()


def test_the_next_read_that_waits_raises(any_share):
    any_share.slow = Slow()
    any_share.flush()
    any_share.slow.spin_then_fail(1.0)
    client = any_share._link.client
    slots = any_share._link.read_slots(("slow", 0, "items"))
    assert not client.applied_all(slots), "the method ended before the read: machine too slow?"
    with pytest.raises(ValueError, match="not in list"):
        any_share.slow.items  # noqa: B018  (waits for the method, then raises its error)
    assert any_share.slow.items == []


def test_errors_beyond_the_kept_number_are_counted(any_share, monkeypatch):
    monkeypatch.setattr(_coordinator, "HELD_ERRORS", 3)  # the memory coordinator runs here
    if any_share._link.info.backend != "memory":
        pytest.skip("the coordinator runs in another process")
    any_share.d = {}
    for i in range(5):
        any_share.d.update(i)
    with pytest.raises(ExceptionGroup) as info:
        any_share.flush()
    assert len(info.value.exceptions) == 4
    assert "2 more fire-and-forget command(s)" in str(info.value.exceptions[-1])


def test_an_error_inside_with_keeps_the_blocks_error(backend):
    with pytest.raises(KeyError) as info, Share(backend=backend) as share:
        share.d = {}
        share.d.update(5)
        raise KeyError("the block's own")
    assert "TypeError" in "".join(info.value.__notes__)


def _fails_later(share, i):
    share.d.update(i)  # fire-and-forget: fails on the coordinator
    return "returned"


def _succeeds(share, i):
    share.d[i] = i
    return i


def test_a_pool_task_whose_writes_failed_fails(share_for_processes, spawn_backend):
    share = share_for_processes
    share.d = {}
    with Pool(2, backend=spawn_backend) as pool:
        failing = [pool.submit(_fails_later, share, i) for i in range(4)]
        for future in failing:  # every one, the first of each worker included
            with pytest.raises(TypeError):
                future.result(timeout=60)
        assert list(pool.map(_succeeds, [share] * 4, range(4), timeout=60)) == [0, 1, 2, 3]
    assert share.get("d") == {0: 0, 1: 1, 2: 2, 3: 3}


@pytest.fixture
def share_for_processes(backend):
    with Share(backend=backend) as s:
        yield s


def test_interpreter_exit_prints_what_nothing_raised(tmp_path):
    script = tmp_path / "script.py"
    script.write_text(
        textwrap.dedent(
            """
            import multiprocessing
            import os
            import time
            from accord import Share

            def child(share):
                share.d.update("child")
                share.done = True  # runs after the update: the owner waits for it
                os._exit(0)  # no atexit (as a pool worker ends): the coordinator tells

            if __name__ == "__main__":
                share = Share()
                share.d = {}
                p = multiprocessing.get_context("spawn").Process(target=child, args=(share,))
                p.start()
                p.join()
                deadline = time.monotonic() + 60
                while not share.get("done", False) and time.monotonic() < deadline:
                    time.sleep(0.01)  # polls a condition, with a deadline
                share.d.update(5)  # the owner's own, and no close()
            """
        )
    )
    run = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=60, check=False
    )
    assert run.returncode == 0, run.stderr
    # The owner's error, by the owner at exit, with the remote traceback:
    assert "nothing raised its error before exit" in run.stderr
    assert "TypeError: 'int' object is not iterable" in run.stderr
    # The child's, by the coordinator when the child left:
    assert "a process (client" in run.stderr and "dictionary update sequence" in run.stderr
