"""The memory backend: a share for the threads of one process."""

from __future__ import annotations

import threading

import pytest

from accord import Pool, Share, ShareClosed, ShareNotPortable


def test_threads_keep_exact_counters_and_complete_lists():
    with Share(backend="memory") as share:
        share.counter = 0
        share.items = []

        def work(t):
            for i in range(300):
                share.counter += 1
                share.items.append((t, i))

        threads = [threading.Thread(target=work, args=(t,)) for t in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert share.counter == 1200
        items = share.get("items")
        for t in range(4):
            assert [i for (x, i) in items if x == t] == list(range(300))


def _read(share):
    return share.x


def test_a_memory_share_cannot_leave_its_process():
    with Share(backend="memory") as share:
        share.x = 1
        with Pool(1, backend="fork") as pool:
            future = pool.submit(_read, share)
            with pytest.raises(ShareNotPortable):
                future.result(timeout=30)


def test_no_coordinator_process_and_close_ends_the_thread():
    import os

    share = Share(backend="memory")
    assert share.coordinator_pid == os.getpid()
    share.x = [1]
    share.close()
    with pytest.raises(ShareClosed):
        share.x  # noqa: B018
    assert not any(t.name.startswith("accord-coordinator") for t in threading.enumerate())
    with pytest.raises(ShareClosed):
        share.flush()
