"""A process's side of the redis backend: flags, snapshots and commands in Redis.

One `RedisClient` per share per process, shared by its handles, proxies and
threads (see `client_for`).  Every operation is a round trip or two to
Redis: an unchanged read is one HMGET (write flags + the object's version)
answered from the object this process last unpickled.
"""

from __future__ import annotations

import contextlib
import pickle
import threading
import time
from typing import Any

import redis
import redis.exceptions
from redis.backoff import NoBackoff
from redis.retry import Retry

from ..._core._errors import (
    AccordError,
    BackendRefused,
    BackendUnavailable,
    CoordinatorLost,
    ShareClosed,
    ShareExists,
    ShareNotFound,
)
from ..._core._protocol import Kind, Reply, as_reply
from ..._core._slots import MISSING
from .._clients import Clients
from .._replies import Replies, kind_of
from . import _keys
from ._keys import Keys, safe_url, split_url
from ._signing import Signer, TamperedPayload

__all__ = ["BackendUnavailable", "RedisClient", "RedisInfo", "TamperedPayload"]

DEFAULT_TIMEOUT = 5.0  # seconds an operation waits for an unreachable Redis
DEFAULT_TTL = 3600.0  # seconds an abandoned share's keys live on
CHECK_S = 0.5  # how often a client checks that the coordinator holds its lease
BLOCK_S = 0.2  # one wait for a reply; the lease is checked between waits

monotonic = time.monotonic
dumps = pickle.dumps


class RedisInfo:
    """Everything a process needs to attach to a redis share (picklable)."""

    backend = "redis"
    __slots__ = ("key", "name", "timeout", "ttl", "url")

    def __init__(self, url: str, name: str, key: bytes, timeout: float, ttl: float) -> None:
        self.url = url
        self.name = name
        self.key = key
        self.timeout = timeout
        self.ttl = ttl

    def __reduce__(self):
        return RedisInfo, (self.url, self.name, self.key, self.timeout, self.ttl)

    @classmethod
    def from_url(cls, url: str, name: str, key: bytes) -> RedisInfo:
        plain, options = split_url(url)
        return cls(
            plain,
            name,
            key,
            options.get("timeout", DEFAULT_TIMEOUT),
            options.get("ttl", DEFAULT_TTL),
        )

    @property
    def stem(self) -> tuple[str, str, bytes]:
        return (self.url, self.name, self.key)

    @property
    def pid(self) -> int:
        """The process id of the coordinator holding the share (any machine)."""
        client = client_for(self)
        pid = client.call(client.r.hget, client.keys.state, "pid")
        return int(pid) if pid is not None else 0

    def client(self) -> RedisClient:
        return client_for(self)

    def reload(self) -> None:
        return None  # the URL and name stay; coordinators come and go behind them

    def where(self) -> str:
        return f"share {self.name!r} at {safe_url(self.url)}"

    def remove(self) -> None:
        """Forget the share here and delete its keys (owner, on close)."""
        forget(self)
        with contextlib.suppress(AccordError):
            delete_share(self)


def connect_redis(url: str, timeout: float) -> redis.Redis:
    """A redis-py client: user, password, TLS (rediss://) come from the URL."""
    return redis.Redis.from_url(
        url,
        socket_timeout=timeout + BLOCK_S,
        socket_connect_timeout=timeout,
        retry=Retry(NoBackoff(), 0),  # accord retries, where retrying is safe
    )


def _not_sent(exc: Exception) -> bool:
    # redis-py says "Error 111 connecting to host:port" when it could not
    # even connect: the command cannot have reached the server.
    return "connecting" in str(exc)


def call(info, fn, *args, idempotent: bool = True, **kwargs) -> Any:
    """Run one redis-py call; retry while Redis is unreachable, up to the
    share's timeout, then raise BackendUnavailable.  A call that may have
    reached the server is retried only if running it twice is harmless."""
    deadline = None
    while True:
        try:
            return fn(*args, **kwargs)
        except redis.exceptions.AuthenticationError as exc:
            raise BackendRefused(
                f"Redis at {safe_url(info.url)} refused the credentials ({exc}): put the "
                "user and password in the URL, redis://USER:PASSWORD@host:port/db"
            ) from None
        except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError) as exc:
            now = monotonic()
            if deadline is None:
                deadline = now + info.timeout
            if now >= deadline or not (idempotent or _not_sent(exc)):
                maybe = "" if idempotent or _not_sent(exc) else " (the command may have been sent)"
                raise BackendUnavailable(
                    f"{info.where()}: Redis is unreachable ({type(exc).__name__}: {exc})"
                    f"{maybe}; waited {info.timeout:g} s (the URL's ?timeout=). "
                    "Operations resume once Redis is back."
                ) from None
            time.sleep(0.05)  # pacing retries while the server is down
        except redis.exceptions.NoPermissionError as exc:
            raise BackendRefused(
                f"{info.where()}: the Redis user lacks a permission accord needs ({exc}); "
                "it needs read/write on keys accord:{NAME}:* and EVALSHA/EVAL"
            ) from None


def parse_entry(entry: bytes) -> tuple[bytes, int, bool, bytes]:
    """(version, type generation, is value, epoch) of a ``v:<name>`` entry."""
    version, generation, is_value, epoch = entry.split()
    return version, int(generation), is_value == b"1", epoch


def snapshot_context(name: str, version: bytes, epoch: bytes) -> bytes:
    """What a snapshot's MAC covers besides the share's name and its data:
    the object's name, the commit (version) and the coordinator (epoch) that
    wrote it, so that it cannot be served under another name or version."""
    return b"s%s\0%s\0%s" % (name.encode(), version, epoch)


class _Snapshot:
    """What this process last read of one name (immutable: threads share it)."""

    __slots__ = ("entry", "kind", "obj", "version")

    def __init__(self, entry: bytes, obj) -> None:
        version, generation, is_value, _epoch = parse_entry(entry)
        self.entry = entry
        self.version = version
        self.kind = Kind(generation, is_value)
        self.obj = obj


class RedisClient:
    remote = True  # a round trip costs more than a local check (see Link.get_name)

    def __init__(self, info: RedisInfo) -> None:
        self.info = info
        self.keys = Keys(info.name)
        self.r = connect_redis(info.url, info.timeout)
        self.signer = Signer(info.key, info.name)
        self._send = _keys.Script(_keys.SEND)
        self._read = _keys.Script(_keys.READ)
        self.snapshots: dict[str, _Snapshot] = {}
        self._fields: dict = {}
        self._specs: dict = {}
        self.owner_process = None
        self.lost: CoordinatorLost | ShareClosed | None = None
        self._reset()

    def _after_fork(self) -> None:
        self._reset()  # a reply list of its own; redis-py reconnects by itself
        self.owner_process = None

    def _reset(self) -> None:
        self._id = 0
        self._next_reply = 0
        self.replies = Replies()
        self._checked = 0.0
        # Every command carries (client id, sequence) under its MAC; the
        # coordinator applies each sequence number of a client once, in
        # order, so a command copied back into the stream is ignored.  The
        # lock keeps this process's commands in the stream in their order.
        self._seq = 0
        self._send_lock = threading.Lock()
        self._awaited: set[int] = set()  # reply ids of calls not yet answered
        self._error_sequence = 0  # of the last queued command whose error came

    def call(self, fn, *args, **kwargs):
        return call(self.info, fn, *args, **kwargs)

    # -- liveness --------------------------------------------------------------

    def check_alive(self, force: bool = False) -> None:
        """Raise CoordinatorLost if no coordinator holds the share (checked
        at most every CHECK_S seconds), ShareClosed if the share is gone."""
        if self.lost is not None:
            raise type(self.lost)(*self.lost.args)
        now = monotonic()
        if not force and now - self._checked < CHECK_S:
            return
        state, lease = self.call(self._exists, self.keys.state, self.keys.lease)
        if not state:
            raise ShareClosed(f"{self.info.where()} is closed (or expired)")
        if not lease:
            raise CoordinatorLost(
                f"the coordinator of {self.info.where()} is gone (its lease expired); "
                f"start another with `accord coordinator {safe_url(self.info.url)} "
                f"--name {self.info.name}` (or share.restart() in the creating process): "
                "it continues from the last committed state"
            )
        self._checked = now

    def _exists(self, *keys):
        with self.r.pipeline(transaction=False) as pipe:
            for key in keys:
                pipe.exists(key)
            return pipe.execute()

    # -- flags and snapshots -----------------------------------------------------

    def _flag_fields(self, slots) -> list[str]:
        fields = self._fields.get(slots)
        if fields is None:
            fields = [f for s in slots for f in (f"p{s}", f"a{s}")]
            if len(self._fields) < 10_000:
                self._fields[slots] = fields
        return fields

    @staticmethod
    def _clear(values) -> bool:
        for i in range(0, len(values) - 1, 2):
            if int(values[i + 1] or 0) < int(values[i] or 0):
                return False
        return True

    def applied_all(self, slots) -> bool:
        return self._clear(self.call(self.r.hmget, self.keys.state, self._flag_fields(slots)))

    def lookup(self, name: str, slots):
        """(what was last read for `name` if it is still the committed
        version, else None; whether every write to `slots` queued before
        now is applied) — both from one HMGET, so they agree."""
        key = (name, slots)
        fields = self._fields.get(key)
        if fields is None:
            fields = [*self._flag_fields(slots), f"v:{name}"]
            if len(self._fields) < 10_000:
                self._fields[key] = fields
        values = self.call(self.r.hmget, self.keys.state, fields)
        cached = self.snapshots.get(name)
        if cached is not None and values[-1] != cached.entry:
            cached = None
        return cached, self._clear(values[:-1])

    def known(self, name: str):
        """What was last read for `name` (maybe no longer current), or None."""
        return self.snapshots.get(name)

    def read(self, name: str):
        """The committed object `name` (shared with other reads: do not mutate)."""
        self.check_alive()
        cached = self.snapshots.get(name)
        entry, data = self.call(
            self._read,
            self.r,
            2,
            self.keys.state,
            self.keys.snap,
            name,
            cached.version if cached is not None else b"",
        )
        if entry is None:
            self.snapshots.pop(name, None)
            return MISSING
        if data is None and cached is not None:
            if cached.entry != entry:  # same version, another kind: cannot happen
                cached = self.snapshots[name] = _Snapshot(entry, cached.obj)
            return cached.obj
        where = f"{self.info.where()}: the snapshot of {name!r}"
        try:
            version, _generation, _is_value, epoch = parse_entry(entry)
        except ValueError:
            raise TamperedPayload(f"{where}: its index entry is malformed") from None
        if cached is not None and int(version) < int(cached.version):
            raise TamperedPayload(
                f"{where}: version {int(version)} is older than version "
                f"{int(cached.version)} read before (the share's keys were rolled back)"
            )
        data = self.signer.open(snapshot_context(name, version, epoch), data, where)
        obj = pickle.loads(data)
        self.snapshots[name] = _Snapshot(entry, obj)
        return obj

    def kind(self, name: str):
        """The type and `Kind` of the committed `name` (`Typed`), or MISSING."""
        return kind_of(self.read(name), self.snapshots.get(name))

    # -- commands --------------------------------------------------------------

    def _client_id(self) -> int:
        with self.replies.ready:  # one id per process, even if threads race here
            if not self._id:
                self._id = int(self.call(self.r.hincrby, self.keys.state, "n", 1))
            return self._id

    def send(self, op: int, fields: tuple, writes: tuple = (), reads: tuple = (), reply=False):
        """Queue one command (raising its write flags in the same step); with
        `reply`, wait for and return its reply."""
        if self.replies.deferred:
            self.replies.raise_deferred()
        client_id = self._id or self._client_id()
        if reply:
            with self.replies.ready:
                self._next_reply += 1
                reply_id = self._next_reply
                self._awaited.add(reply_id)
        else:
            reply_id = 0
        message = (op, reply_id, None, writes, *fields)
        spec = self._specs.get((reads, writes))
        if spec is None:
            spec = f"{','.join(map(str, reads))};{','.join(map(str, writes))}"
            if len(self._specs) < 10_000:
                self._specs[(reads, writes)] = spec
        keys = self.keys
        with self._send_lock:
            self._seq += 1  # used even if the send fails: a gap is harmless
            payload = self.signer.sign(b"c", dumps((client_id, self._seq, message), 5))
            done = self.call(
                self._send,
                self.r,
                3,
                keys.state,
                keys.cmd,
                keys.lease,
                payload,
                spec,
                idempotent=False,
            )
        if done != 1:
            if done == 0:
                error = ShareClosed(f"{self.info.where()} is closed (or expired)")
            else:
                with contextlib.suppress(CoordinatorLost):
                    self.check_alive(force=True)
                error = CoordinatorLost(f"no coordinator holds {self.info.where()}")
            error.undelivered = True
            raise error
        if reply:
            return self._await(reply_id)
        return None

    def _await(self, reply_id: int) -> Reply:
        """Wait for reply `reply_id` from this process's reply list (checking
        between waits that a coordinator still holds the share)."""
        return self.replies.wait(reply_id, self._receive)

    def _receive(self) -> list[Reply]:
        popped = self.call(self.r.blpop, [self.keys.replies(self._id)], timeout=BLOCK_S)
        if popped is None:
            self.check_alive(force=True)
            return []
        where = f"{self.info.where()}: a reply"
        message = as_reply(pickle.loads(self.signer.open(b"r%d" % self._id, popped[1], where)))
        # A signed reply copied back into the list is dropped: a reply must
        # answer a call of ours not yet answered; an error of a queued
        # command must be of a later command than the last one raised.
        if message.reply_id:
            with self.replies.ready:
                if message.reply_id not in self._awaited:
                    return []
                self._awaited.discard(message.reply_id)
        elif message.sequence is not None:  # (a notice of errors dropped has none)
            if message.sequence <= self._error_sequence:
                return []
            self._error_sequence = message.sequence
        return [message]

    def raise_deferred(self) -> None:
        """Raise the first error of an earlier fire-and-forget command."""
        self.replies.raise_deferred()

    # -- lifetime ------------------------------------------------------------

    def close(self) -> None:
        if self.lost is None:
            self.lost = ShareClosed(f"{self.info.where()} is closed")
        with contextlib.suppress(Exception):
            self.r.close()


_clients: Clients[RedisClient] = Clients()  # by stem; `coordinating` in a coordinator


def client_for(info: RedisInfo) -> RedisClient:
    """This process's client of the share described by `info`."""
    return _clients.get(
        info.stem, info.where(), lambda: RedisClient(info), lambda client: client.lost is not None
    )


def forget(info: RedisInfo) -> None:
    client = _clients.pop(info.stem)
    if client is not None:
        client.close()


def init_share(info: RedisInfo) -> None:
    """Create the keys of a new share (replacing those of a dead one of the
    same name); refuse if a coordinator holds a share of that name."""
    r = connect_redis(info.url, info.timeout)
    keys = Keys(info.name)
    try:
        if call(info, r.exists, keys.lease):
            raise ShareExists(
                f"{info.where()} is already running; attach to it with "
                f"Share.connect({safe_url(info.url)!r}, name={info.name!r}) or choose another name"
            )
        delete_share(info, r)
        ttl_ms = int(info.ttl * 1000)
        with r.pipeline(transaction=True) as pipe:
            pipe.hset(
                keys.state,
                mapping={
                    "c": 0,
                    "epoch": 0,
                    "n": 0,
                    "check": Signer(info.key, info.name).check_value(),
                },
            )
            pipe.pexpire(keys.state, ttl_ms)
            # The command stream exists from the start, with its TTL (an
            # empty stream needs a consumer group to exist; accord uses none).
            pipe.xgroup_create(keys.cmd, "accord", id="$", mkstream=True)
            pipe.pexpire(keys.cmd, ttl_ms)
            call(info, pipe.execute)
    finally:
        r.close()


def check_share(info: RedisInfo) -> None:
    """For connect(): the share exists and `info.key` is its key."""
    client = client_for(info)
    check = client.call(client.r.hget, client.keys.state, "check")
    if check is None:
        raise ShareNotFound(f"no {info.where()} exists (never created, closed, or expired)")
    if check != client.signer.check_value():
        forget(info)
        raise TamperedPayload(
            f"{info.where()} was created with another key: pass that key "
            "(Share.connect(url, name=..., key=...) or $ACCORD_KEY)"
        )


def delete_share(info: RedisInfo, r: redis.Redis | None = None) -> None:
    """Delete every key of the share."""
    own = r is None
    if r is None:
        r = connect_redis(info.url, info.timeout)
    try:
        keys = Keys(info.name)
        names = [keys.state, keys.snap, keys.cmd, keys.lease]
        names += call(info, lambda: list(r.scan_iter(match=keys.prefix + "r:*", count=1000)))
        call(info, r.delete, *names)
    finally:
        if own:
            r.close()
