"""The redis backend: independent processes attached by URL, signed payloads,
Redis restarts, coordinator takeover, TTLs and cleanup.  Each test uses the
suite's own redis-server (see redis_server.py)."""

from __future__ import annotations

import os
import pickle
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import redis
from run_names import share_name

from accord import (
    BackendRefused,
    BackendUnavailable,
    CoordinatorLost,
    KeyRequired,
    Share,
    ShareClosed,
    ShareNotFound,
    TamperedPayload,
)

KEY = "a-test-key-of-the-suite-0123456789"


def until(condition, timeout=15.0, what="condition"):
    """Poll `condition` until it is true (returns its value) or time is up."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)  # polling another process's progress


def keys_of(url, name):
    r = redis.Redis.from_url(url)
    try:
        return sorted(k.decode() for k in r.scan_iter(match=f"accord:{{{name}}}:*"))
    finally:
        r.close()


WORKER = textwrap.dedent(
    """
    import sys
    from accord import Share

    url, name, worker, n = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    share = Share.connect(url, name=name)      # the key comes from $ACCORD_KEY
    for i in range(n):
        share.counter += 1
        share.items.append((worker, i))
        share.tally["k"] += 1
    share.flush()
    assert share.counter >= n                  # read-after-write from this process
    print(share.items[-1] is not None)
    """
)


def _run_workers(tmp_path, url, name, count, n):
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    env = {**os.environ, "ACCORD_KEY": KEY}
    procs = [
        subprocess.Popen(
            [sys.executable, str(script), url, name, str(w), str(n)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for w in range(count)
    ]
    for p in procs:
        out, err = p.communicate(timeout=50)
        assert p.returncode == 0, err
        assert out.strip() == "True"


def test_independent_processes_keep_exact_counters_and_complete_lists(redis_server, tmp_path):
    workers, n = 3, 150
    with Share(name=share_name("exact"), backend=redis_server.url, key=KEY) as share:
        share.counter = 0
        share.items = []
        share.tally = {"k": 0}
        share.flush()
        _run_workers(tmp_path, redis_server.url, share_name("exact"), workers, n)
        assert share.counter == workers * n
        assert share.tally["k"] == workers * n
        items = share.get("items")
        assert len(items) == workers * n
        for w in range(workers):  # each process's writes in the order it issued them
            assert [i for (x, i) in items if x == w] == list(range(n))


def test_connect_needs_the_right_key(redis_server):
    with Share(name=share_name("key"), backend=redis_server.url, key=KEY) as share:
        share.x = 1
        with pytest.raises(TamperedPayload, match="created with another key"):
            Share.connect(redis_server.url, name=share_name("key"), key="another-key-0123456789")
        with pytest.raises(KeyRequired):
            Share.connect(redis_server.url, name=share_name("key"))
        assert Share.connect(redis_server.url, name=share_name("key"), key=KEY).x == 1
    with pytest.raises(ShareNotFound):
        Share.connect(redis_server.url, name=share_name("key"), key=KEY)


class Boom:
    """Unpickling this creates a file: proof that something was unpickled."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_tampered_payloads_are_refused_and_never_unpickled(redis_server, tmp_path, capfd):
    marker = tmp_path / "unpickled"
    evil = pickle.dumps(Boom(str(marker)))
    r = redis.Redis.from_url(redis_server.url)
    with Share(name=share_name("tamper"), backend=redis_server.url, key=KEY) as share:
        share.cfg = {"a": 1}
        share.flush()
        prefix = f"accord:{{{share_name('tamper')}}}:"
        # A snapshot replaced by someone without the key (signed with a wrong MAC).
        r.hset(prefix + "snap", "cfg", b"\0" * 32 + evil)
        r.hset(prefix + "state", "v:cfg", b"999999 0 0 1")
        with pytest.raises(TamperedPayload, match="signature check failed"):
            share.get("cfg")
        # Unsigned data.
        r.hset(prefix + "snap", "cfg", b"short")
        r.hset(prefix + "state", "v:cfg", b"999998 0 0 1")
        with pytest.raises(TamperedPayload, match="not a signed accord payload"):
            share.get("cfg")
        # A forged command in the stream: the coordinator drops it.
        r.xadd(prefix + "cmd", {"d": b";" + b"\1" * 32 + evil})
        share.n = 1
        assert share.n == 1  # the coordinator went on
        share.cfg = {"a": 2}  # a new signed commit repairs the object
        share.flush()
        assert share.cfg["a"] == 2
    assert not marker.exists()
    assert "signature check failed" in capfd.readouterr().err
    r.close()


def test_close_deletes_every_key_and_keys_have_a_ttl(redis_server):
    share = Share(name=share_name("close"), backend=redis_server.url, key=KEY)
    share.lst = [1]
    share.lst.pop()  # a reply list too
    r = redis.Redis.from_url(redis_server.url)
    present = keys_of(redis_server.url, share_name("close"))
    close = share_name("close")
    assert {f"accord:{{{close}}}:state", f"accord:{{{close}}}:snap"} <= set(present)
    for key in present:
        assert r.pttl(key) > 0, key  # an abandoned share expires by itself
    share.close()
    assert keys_of(redis_server.url, share_name("close")) == []
    r.close()
    with pytest.raises(ShareClosed):
        share.lst  # noqa: B018


def test_an_abandoned_share_expires(redis_server):
    url = redis_server.url + "?ttl=3"  # 1 s lapsed under load while the share was alive
    share = Share(name=share_name("expire"), backend=url, key=KEY)
    share.x = 1
    share.flush()
    os.kill(share.coordinator_pid, signal.SIGKILL)
    until(lambda: keys_of(redis_server.url, share_name("expire")) == [], what="the keys to expire")
    share._finalizer.detach()  # nothing left to close


def test_killed_coordinator_is_detected_and_a_new_one_takes_over_without_loss(redis_server):
    # A long commit window: most writes are applied but not committed when
    # the coordinator is killed; the new one must replay them from the stream.
    with Share(
        name=share_name("takeover"), backend=redis_server.url, key=KEY, commit_window=60
    ) as share:
        share.counter = 0
        share.items = []
        for i in range(200):
            share.counter += 1
            share.items.append(i)
        pid = share.coordinator_pid
        os.kill(pid, signal.SIGKILL)
        started = time.monotonic()
        with pytest.raises(CoordinatorLost, match="accord coordinator"):
            until(lambda: share.counter is None, what="CoordinatorLost")
        assert time.monotonic() - started < 5
        assert share.restart() == []
        assert share.coordinator_pid != pid
        assert share.counter == 200
        assert share.get("items") == list(range(200))
        share.counter += 1
        assert share.counter == 201


def test_a_standby_service_takes_over(redis_server, tmp_path):
    env = {**os.environ, "ACCORD_KEY": KEY}
    with Share(name=share_name("standby"), backend=redis_server.url, key=KEY) as share:
        share.counter = 0
        standby = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "accord.cli",
                "coordinator",
                redis_server.url,
                "--name",
                share_name("standby"),
            ],
            env=env,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            for _ in range(50):
                share.counter += 1
            first = share.coordinator_pid
            os.kill(first, signal.SIGKILL)

            def taken_over():
                try:
                    return share.coordinator_pid == standby.pid and share.counter == 50
                except CoordinatorLost:
                    return False

            until(taken_over, what="the standby to take over")
            share.counter += 1
            assert share.counter == 51
        finally:
            share.close()  # deletes the keys: the service sees it and stops
            _, err = standby.communicate(timeout=20)
        assert standby.returncode == 0, err
        assert "closed" in err


def test_redis_restart_gives_clear_errors_then_resumes(tmp_path):
    from redis_server import RedisServer

    server = RedisServer(tmp_path, persistent=True)
    try:
        url = server.url + "?timeout=1"
        with Share(name=share_name("restart"), backend=url, key=KEY) as share:
            share.counter = 0
            for _ in range(20):
                share.counter += 1
            assert share.counter == 20
            server.stop()
            started = time.monotonic()
            with pytest.raises(BackendUnavailable, match="unreachable"):
                share.counter  # noqa: B018
            with pytest.raises(BackendUnavailable):
                share.counter += 1
            assert time.monotonic() - started < 5
            server.start()

            def resumed():
                try:
                    return share.counter == 20
                except (BackendUnavailable, CoordinatorLost):
                    return False

            until(resumed, what="the share to resume")
            for _ in range(20):
                share.counter += 1
            assert share.counter == 40
    finally:
        server.stop()


def test_redis_auth(tmp_path):
    from redis_server import RedisServer

    server = RedisServer(tmp_path, password="s3cret-pass")
    try:
        with Share(backend=server.url, key=KEY) as share:
            share.x = [1]
            share.x.append(2)
            assert share.x == [1, 2]
        wrong = server.url.replace("s3cret-pass", "wrong")
        with pytest.raises(BackendRefused, match="refused the credentials"):
            Share(backend=wrong, key=KEY)
        # ACL users: one limited to accord's keys works, one without them is told why.
        admin = redis.Redis.from_url(server.url)
        for user, password, keys in (("worker", "w-pass", "accord:*"), ("other", "o-pass", "x:*")):
            admin.acl_setuser(
                user, enabled=True, passwords=[f"+{password}"], keys=[keys], commands=["+@all"]
            )
        admin.close()
        port_url = server.url.split("@", 1)[1]
        with Share(backend=f"redis://worker:w-pass@{port_url}", key=KEY) as share:
            share.n = 1
            share.n += 1
            assert share.n == 2
        with pytest.raises(BackendRefused, match="lacks a permission"):
            Share(backend=f"redis://other:o-pass@{port_url}", key=KEY)
    finally:
        server.stop()


def test_tls(tmp_path):
    from redis_server import RedisServer

    server = RedisServer(tmp_path, tls=True)
    try:
        assert server.url.startswith("rediss://")
        with Share(backend=server.url, key=KEY) as share:
            share.x = {"a": 1}
            share.x["a"] += 1
            assert share.x == {"a": 2}
        plain = server.url.replace("rediss://", "redis://").split("?")[0] + "?timeout=0.5"
        with pytest.raises(BackendUnavailable, match="unreachable"):
            Share(backend=plain, key=KEY)  # a TLS server does not talk plain TCP
    finally:
        server.stop()


def test_an_unchanged_read_is_one_hmget(redis_server):
    r = redis.Redis.from_url(redis_server.url)
    with Share(name=share_name("cost"), backend=redis_server.url, key=KEY) as share:
        share.x = 5
        share.n = 0
        assert share.x == 5  # the first read fetches and unpickles the snapshot
        assert share.n == 0
        client = share._link.client
        fetches = []
        fetch = client._read
        client._read = lambda *args: fetches.append(args) or fetch(*args)
        r.config_resetstat()
        for _ in range(50):
            share.n += 1  # another object changes meanwhile: one EVALSHA, no read
            assert share.x == 5
        stats = r.info("commandstats")
        assert stats["cmdstat_hmget"]["calls"] == 50  # flags + version, nothing else
        assert fetches == []  # no snapshot fetched again
        assert share.n == 50
    r.close()


OWNER = textwrap.dedent(
    """
    import sys, time
    from accord import Share

    share = Share(name=sys.argv[2], backend=sys.argv[1], key=sys.argv[3])
    share.items = [1, 2, 3]
    share.flush()
    print(share.coordinator_pid, flush=True)
    time.sleep(60)   # until killed
    """
)


def _gone(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"  # a zombie is gone too
    except OSError:
        return True


def test_owner_killed_its_coordinator_stops_and_the_share_can_be_resumed(redis_server, tmp_path):
    script = tmp_path / "owner.py"
    script.write_text(OWNER)
    owner = subprocess.Popen(
        [sys.executable, str(script), redis_server.url, share_name("orphan"), KEY],
        stdout=subprocess.PIPE,
        text=True,
    )
    coordinator = int(owner.stdout.readline())
    owner.kill()
    owner.wait()
    owner.stdout.close()
    until(lambda: _gone(coordinator), what="the orphaned coordinator to stop")
    present = keys_of(redis_server.url, share_name("orphan"))
    assert (
        f"accord:{{{share_name('orphan')}}}:state" in present
    )  # left to its TTL, or to a successor
    service = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "accord.cli",
            "coordinator",
            redis_server.url,
            "--name",
            share_name("orphan"),
        ],
        env={**os.environ, "ACCORD_KEY": KEY},
        stderr=subprocess.PIPE,
        text=True,
    )
    share = Share.connect(redis_server.url, name=share_name("orphan"), key=KEY)
    try:

        def resumed():
            try:
                return share.get("items") == [1, 2, 3]
            except CoordinatorLost:
                return False

        until(resumed, what="the service to resume the share")
        share.items.append(4)
        assert share.items == [1, 2, 3, 4]
    finally:
        from accord.backends.redis._client import delete_share

        info = share._link.info
        try:
            share.close()  # settles the append above now, not in a 5 s wait at exit
        finally:
            delete_share(info)  # the service sees the share go and stops
        _, err = service.communicate(timeout=20)
    assert service.returncode == 0, err
