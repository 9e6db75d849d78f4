"""The coordinator: the one process of a share that applies every write.

It keeps a mirror of every shared object, runs each client's commands in the
order the client sent them (and after every write to the same object that
was queued before them, by any process), and commits a snapshot of each
changed object to shared memory — in batches: when a reader is waiting, or
when a commit window has passed since the object first changed.

Run as ``python -m accord.share._coordinator`` by `Share`; it reads its
configuration as JSON on stdin, prints READY when it listens, and exits when
the owner closes the share or dies.
"""

from __future__ import annotations

import json
import logging
import operator
import os
import pickle
import signal
import sys
import time
import traceback
from collections import deque
from typing import Any

import cloudpickle

from .. import _logging
from .._errors import ErrorsDropped, TemporaryTarget
from .._remote import Unreadable, pack_error
from ..backends.shm import _client as _shm_client
from ..backends.shm import _control
from ..backends.shm._server import Peer, ShmServer
from . import _protocol as P
from ._serialize import PLAIN, cloudpickle_dumps, dumps, is_plain, unpack, unpack_call
from ._values import is_value

HEARTBEAT_S = 0.1
STUCK_S = 2.0
SPIN_S = 0.0002

log = logging.getLogger("accord.share")


class Stop(BaseException):
    """Raised by SIGTERM: the owner stops the coordinator.  The one
    BaseException a command's error handling lets through."""


class _Lock:
    __slots__ = ("owner", "waiters")

    def __init__(self) -> None:
        self.owner: tuple[int, int] | None = None
        self.waiters: deque[tuple[Peer, int, int, float]] = deque()


class Coordinator:
    # `server` is any backend's server (shm, memory, redis); the protocol
    # they share is not yet complete enough to name here.
    def __init__(self, server: Any, owner_pid: int, window: float) -> None:
        self.server = server
        self.owner_pid = owner_pid
        self.window = window
        self.mirror: dict[str, object] = {}
        self.received = [0] * _control.SLOTS  # increments applied, per slot
        self.uncommitted: dict[int, set[str]] = {}  # slot -> names not yet committed
        self.dirty: dict[str, float] = {}  # name -> when it first changed
        self.dirty_slots: dict[str, set[int]] = {}
        self.commit_cost: dict[str, float] = {}
        self.types: dict[str, tuple] = {}  # name -> (type, generation, is value)
        self.queues: dict[int, deque] = {}
        self.peers: dict[int, Peer] = {}
        self.departed: dict[int, tuple[int, ...]] = {}  # peer id -> lost intent
        # Errors of fire-and-forget commands, per peer, kept until the peer
        # next waits for a reply (it reads its socket only then): sent ahead
        # of that reply, or printed if the peer leaves without one.
        self.held: dict[int, list[tuple[bytes, str]]] = {}
        self.held_dropped: dict[int, int] = {}
        self.blocked_since: dict[int, float] = {}
        self.locks: dict[str, _Lock] = {}
        self.handlers = {
            P.ASSIGN: self.op_assign,
            P.DELETE: self.op_delete,
            P.AUGMENT: self.op_augment,
            P.CALL: self.op_call,
            P.APPLY: self.op_apply,
            P.BARRIER: self.op_barrier,
            P.FLUSH: self.op_flush,
            P.ACQUIRE: self.op_acquire,
            P.RELEASE: self.op_release,
            P.NAMES: self.op_names,
        }

    # -- the loop ----------------------------------------------------------------

    def run(self) -> None:
        last_beat = 0.0
        last_input = 0.0
        while True:
            # Right after input, poll without sleeping for a moment: a client
            # waiting for a reply usually sends its next command within tens
            # of microseconds, and waking a sleeping process costs about that.
            server = self.server
            busy = time.monotonic() - last_input < SPIN_S
            timeout = 0 if busy else self._timeout()
            # Commands come through the rings; sleep in select() only once
            # every ring is drained (a client that appends then wakes us).
            if timeout and server.arm():
                timeout = 0
            left = server.poll(timeout)
            server.disarm()
            for peer in list(server.peers.values()):
                if self.take(peer):
                    last_input = time.monotonic()
            for peer in left:
                self.take(peer)  # what it appended before it died is applied
                self.peer_left(peer)
            self.process()
            for peer in list(server.peers.values()):
                if peer.id not in self.queues:
                    server.commit(peer)
            now = time.monotonic()
            self.commit_due(now)
            self.expire_lock_waits(now)
            if now - last_beat >= HEARTBEAT_S / 2:
                last_beat = now
                self.server.heartbeat()
                if os.getppid() != self.owner_pid:
                    break  # the owner died without closing: nobody can close now
        self.server.close()

    def take(self, peer: Peer) -> bool:
        """Queue what `peer` appended to its ring; whether there was any."""
        entries = self.server.drain(peer)
        if entries is None:
            log.warning("dropping a client that wrote garbage to its ring")
            self.queues.pop(peer.id, None)
            self.server.disconnect(peer)  # poll reports it left
            return False
        if not entries:
            return False
        self.peers[peer.id] = peer
        queue = self.queues.get(peer.id)
        if queue is None:
            self.queues[peer.id] = deque(entries)
        else:
            queue.extend(entries)
        return True

    def _timeout(self) -> float:
        timeout = HEARTBEAT_S
        if self.dirty:
            now = time.monotonic()
            for name, since in self.dirty.items():
                timeout = min(timeout, max(0.0, since + self._window(name) - now))
        for lock in self.locks.values():
            for *_, deadline in lock.waiters:
                timeout = min(timeout, max(0.0, deadline - time.monotonic()))
        return timeout

    def _window(self, name: str) -> float:
        # Spend at most about a tenth of the time committing: a big object is
        # committed less often, so appending to it costs what appending to a
        # small one does.  Readers that wait ask for a commit (BARRIER).
        return max(self.window, 10 * self.commit_cost.get(name, 0.0))

    def process(self) -> None:
        """Run every queued command whose waits are met, per client in order."""
        received = self.received
        progress = True
        while progress:
            progress = False
            for peer_id, queue in list(self.queues.items()):
                while queue:
                    message = queue[0]
                    if type(message) is bytes:
                        try:
                            message = queue[0] = pickle.loads(message)
                        except Stop:
                            raise
                        except BaseException:
                            # Only an authenticated peer can send; a garbled
                            # frame means a broken client: cut it off.
                            log.warning("dropping a client that sent a garbled command")
                            queue.clear()
                            self.peer_left(self.peers[peer_id])
                            break
                    waits = message[2]
                    if waits and (
                        received[waits[0]] < waits[1]
                        or (len(waits) > 2 and not self.satisfied(waits))
                    ):
                        self.note_blocked(peer_id, waits)
                        break
                    self.blocked_since.pop(peer_id, None)
                    queue.popleft()
                    self.execute(self.peers[peer_id], message)
                    progress = True
                if not queue:
                    del self.queues[peer_id]
                    if peer_id in self.departed:
                        self.finish_departure(peer_id)

    def note_blocked(self, peer_id: int, waits) -> None:
        """Look for dead processes when a command's waits have not moved for
        STUCK_S seconds.

        A flag is raised just before its command is sent.  A wait that stays
        unmet means the process that raised it is still sending (a big
        value, a slow machine) or is stopped (SIGSTOP, a debugger): readers
        must wait for it — crediting its flag would let later writes and
        reads overtake a write that then lands after them.  Or it died:
        its socket then closes and `peer_left` credits exactly the flags
        its intent record names.  The one case left is a dead process whose
        socket stays open (a child holds it): that peer is dropped here.
        Only the flags of dead clients are ever credited.
        """
        now = time.monotonic()
        since = self.blocked_since.setdefault(peer_id, now)
        if now - since < STUCK_S:
            return
        self.blocked_since[peer_id] = now  # look again in STUCK_S
        for peer in list(getattr(self.server, "peers", self.peers).values()):
            if peer.id not in self.departed and not peer.alive():
                log.warning(
                    "client %d (pid %s) died but its connection stayed open; "
                    "crediting the writes it never sent",
                    peer.id,
                    peer.pid,
                )
                self.peer_left(peer)

    def satisfied(self, waits) -> bool:
        received = self.received
        return all(received[waits[i]] >= waits[i + 1] for i in range(0, len(waits), 2))

    def execute(self, peer: Peer, message: tuple) -> None:
        op, reply_id, _waits, writes = message[:4]
        try:
            result = self.handlers[op](peer, message)
            status = P.OK
        except Stop:
            raise
        except BaseException as exc:
            # SystemExit, KeyboardInterrupt, GeneratorExit... raised by user
            # code are that command's error, raised in its caller with their
            # type: never the end of the coordinator and every object in it.
            result = pack_error(exc)
            status = P.ERROR
        if writes:
            self.credit(message[4][0], writes)
        if reply_id and result is not _no_reply:
            self.reply(peer, reply_id, status, result)
        elif status == P.ERROR:
            self.report(peer, result)

    def credit(self, name: str | None, writes) -> None:
        received = self.received
        if name is not None:
            if name not in self.dirty:
                self.dirty[name] = time.monotonic()
                self.dirty_slots[name] = set()
            self.dirty_slots[name].update(writes)
        for s in writes:
            received[s] += 1
            if name is not None:
                self.uncommitted.setdefault(s, set()).add(name)
            elif s not in self.uncommitted:
                self.server.set_applied(s, received[s])

    # -- replies ---------------------------------------------------------------

    def reply(self, peer: Peer, reply_id: int, status: int, result) -> None:
        if peer.id in self.departed:
            return
        if peer.id in self.held:
            self.send_held(peer)  # it waits, so it reads its socket: errors first
        if status == P.OK:
            try:
                if type(result) in PLAIN or is_plain(result):
                    payload = pickle.dumps((reply_id, P.OK, result), 5)
                else:
                    payload = cloudpickle_dumps((reply_id, P.OK, result))
            except Stop:
                raise
            except BaseException as exc:
                payload = cloudpickle.dumps((reply_id, P.ERROR, *pack_error(exc)), 5)
        else:
            payload = cloudpickle.dumps((reply_id, P.ERROR, *result), 5)
        self.server.send(peer, payload)

    def report(self, peer: Peer, error: tuple[bytes, str]) -> None:
        """Keep the error of a fire-and-forget command for its process.

        It goes out ahead of the next reply to that process (`send_held`):
        a process that never waits would not read it, and sending to a
        socket nobody reads would in the end block the coordinator."""
        if peer.id in self.departed:
            _print_lost(peer.id, [error], 0)
            return
        held = self.held.setdefault(peer.id, [])
        if len(held) < HELD_ERRORS:
            held.append(error)
        else:
            self.held_dropped[peer.id] = self.held_dropped.get(peer.id, 0) + 1

    def send_held(self, peer) -> None:
        held = self.held.pop(peer.id, [])
        dropped = self.held_dropped.pop(peer.id, 0)
        if dropped:
            held.append(pack_error(ErrorsDropped(_dropped_message(dropped))))
        for error in held:
            self.server.send(peer, cloudpickle.dumps((0, P.ERROR, *error), 5))

    # -- commits ---------------------------------------------------------------

    def commit(self, name: str) -> None:
        started = time.perf_counter()
        if name in self.mirror:
            value = self.mirror[name]
            try:
                data = dumps(value)
            except Stop:
                raise
            except BaseException as exc:
                log.error("cannot commit share.%s: %r", name, exc)
                data = dumps(
                    Unreadable(
                        f"share.{name} can no longer be serialized ({type(exc).__name__}: "
                        f"{exc}): a method stored something unpicklable in it; "
                        f"repair it with share.apply({name!r}, fn) or assign it anew"
                    )
                )
            self.server.snapshots.write(name, data, self.kind(name, value))
        else:
            self.server.snapshots.delete(name)
        self.commit_cost[name] = time.perf_counter() - started
        self.dirty.pop(name, None)
        for s in self.dirty_slots.pop(name, ()):
            names = self.uncommitted.get(s)
            if names is not None:
                names.discard(name)
                if not names:
                    del self.uncommitted[s]
                    self.server.set_applied(s, self.received[s])

    def kind(self, name: str, value) -> tuple[int, bool]:
        """(type generation, is an immutable value): changes only when the
        object's type does, so readers can route calls without unpickling."""
        known = self.types.get(name)
        if known is None or known[0] is not type(value):
            generation = known[1] + 1 if known is not None else 0
            known = self.types[name] = (type(value), generation, is_value(value))
        return known[1], known[2]

    def restore(self, snapshots: dict[str, bytes]) -> None:
        """Start from committed snapshots (a restart): load and commit each."""
        for name, data in snapshots.items():
            try:
                self.mirror[name] = pickle.loads(data)
            except Stop:
                raise
            except BaseException as exc:
                log.error("cannot restore share.%s: %r", name, exc)
                continue
            self.commit(name)

    def commit_due(self, now: float) -> None:
        for name, since in list(self.dirty.items()):
            if now - since >= self._window(name):
                self.commit(name)

    # -- departures ------------------------------------------------------------

    def peer_left(self, peer: Peer) -> None:
        self.peers[peer.id] = peer  # to be dropped once its queue is done
        # Read the intent now, before the client slot can be reused.
        self.departed[peer.id] = self.server.lost_intent(peer)
        for name, lock in list(self.locks.items()):
            lock.waiters = deque(w for w in lock.waiters if w[0].id != peer.id)
            if lock.owner is not None and lock.owner[0] == peer.id:
                self.hand_over(name, lock)
        if peer.id not in self.queues:
            self.finish_departure(peer.id)

    def finish_departure(self, peer_id: int) -> None:
        """Credit the flags a dead client raised for a write it never sent."""
        lost = self.departed.pop(peer_id, ())
        if lost:
            self.credit(None, lost)
        held = self.held.pop(peer_id, None)
        if held:
            _print_lost(peer_id, held, self.held_dropped.pop(peer_id, 0))
        peer = self.peers.pop(peer_id, None)
        if peer is not None:
            self.server.drop(peer)

    # -- paths -----------------------------------------------------------------

    def resolve(self, path: tuple) -> Any:
        try:
            obj: Any = self.mirror[path[0]]
        except KeyError:
            raise AttributeError(f"share has no attribute {path[0]!r}") from None
        for i in range(1, len(path), 2):
            key = path[i + 1]
            obj = getattr(obj, key) if path[i] == P.ATTR else obj[key]
        return obj

    def get_place(self, place: tuple):
        return self.resolve(place)

    def resolve_target(self, path: tuple):
        """The object at `path`, which a write is about to change: refused
        if it is a temporary that the write would change alone."""
        obj = self.resolve(path)
        if len(path) > 1 and _is_temporary(obj) and self.resolve(path) is not obj:
            raise TemporaryTarget(
                f"{_describe(path)} is a temporary {type(obj).__name__}, made anew at each "
                "access (pandas copy-on-write): a write to it would be lost. Write through "
                "the frame instead, e.g. share.df.loc[row, column] = value"
            )
        return obj

    def set_place(self, place: tuple, value) -> None:
        if len(place) == 1:
            self.mirror[place[0]] = value
            return
        parent = self.resolve_target(place[:-2])
        if place[-2] == P.ATTR:
            setattr(parent, place[-1], value)
        else:
            parent[place[-1]] = value

    # -- commands --------------------------------------------------------------

    def op_assign(self, peer, message):
        self.set_place(message[4], unpack(message[5]))

    def op_delete(self, peer, message):
        place = message[4]
        if len(place) == 1:
            if self.mirror.pop(place[0], _missing) is _missing:
                raise AttributeError(f"share has no attribute {place[0]!r}")
            return
        parent = self.resolve_target(place[:-2])
        if place[-2] == P.ATTR:
            delattr(parent, place[-1])
        else:
            del parent[place[-1]]

    def op_augment(self, peer, message):
        place, op, operand = message[4:7]
        if op not in P.INPLACE:
            raise ValueError(f"unknown in-place operator {op!r}")
        current = self.resolve(place)
        self.set_place(place, getattr(operator, op)(current, unpack(operand)))

    def op_call(self, peer, message):
        path, method, packed = message[4:7]
        args, kwargs = unpack_call(packed)
        return getattr(self.resolve(path), method)(*args, **kwargs)

    def op_apply(self, peer, message):
        path, packed, replace = message[4:7]
        fn, args, kwargs = cloudpickle.loads(packed)
        result = fn(self.resolve(path), *args, **kwargs)
        if replace:
            self.set_place(path, result)
        return result

    def op_barrier(self, peer, message):
        waits = message[2]
        for i in range(0, len(waits), 2):
            for name in list(self.uncommitted.get(waits[i], ())):
                self.commit(name)

    def op_flush(self, peer, message):
        for name in list(self.dirty):
            self.commit(name)

    def op_names(self, peer, message):
        return sorted(self.mirror)

    def op_acquire(self, peer, message):
        name, token, timeout = message[4:7]
        lock = self.locks.setdefault(name, _Lock())
        if lock.owner is None:
            lock.owner = (peer.id, token)
            return True
        if timeout is not None and timeout <= 0:
            return False
        deadline = float("inf") if timeout is None else time.monotonic() + timeout
        lock.waiters.append((peer, message[1], token, deadline))
        return _no_reply

    def op_release(self, peer, message):
        name, token = message[4:6]
        lock = self.locks.get(name)
        if lock is None or lock.owner != (peer.id, token):
            raise RuntimeError(f"release of lock {name!r}, which this thread does not hold")
        self.hand_over(name, lock)

    def hand_over(self, name: str, lock: _Lock) -> None:
        lock.owner = None
        while lock.waiters:
            peer, reply_id, token, _deadline = lock.waiters.popleft()
            if peer.id in self.departed:
                continue
            lock.owner = (peer.id, token)
            self.reply(peer, reply_id, P.OK, True)
            return
        del self.locks[name]

    def expire_lock_waits(self, now: float) -> None:
        for lock in self.locks.values():
            if any(w[3] <= now for w in lock.waiters):
                keep = deque()
                for waiter in lock.waiters:
                    if waiter[3] <= now:
                        self.reply(waiter[0], waiter[1], P.OK, False)
                    else:
                        keep.append(waiter)
                lock.waiters = keep


class OrderedCoordinator(Coordinator):
    """A coordinator whose commands arrive in one total order (a Redis
    stream, an in-process queue), their write flags raised in that same
    order: it runs them in that order, and every wait is met on arrival.

    The backend puts ``(position, client id, message)`` in `inbox` (message
    None: refused by the backend, skipped) and calls `process()`.
    """

    def __init__(self, server, owner_pid: int, window: float) -> None:
        super().__init__(server, owner_pid, window)
        self.inbox: deque = deque()
        self.position = ""  # of the last command run
        self.clients: dict[int, Any] = {}  # each backend's own peer objects

    def peer(self, client_id: int):
        peer = self.clients.get(client_id)
        if peer is None:
            peer = self.clients[client_id] = self.server.peer(client_id)
        return peer

    def process(self) -> None:
        inbox = self.inbox
        while inbox:
            position, client_id, message = inbox.popleft()
            self.position = position
            if message is None:
                continue
            waits = message[2]
            if waits and not self.satisfied(waits):
                # Cannot happen while flags and commands move together;
                # never hang on it: credit what is missing and say so.
                log.warning("unmet waits %s; crediting them", waits)
                for i in range(0, len(waits), 2):
                    missing = waits[i + 1] - self.received[waits[i]]
                    if missing > 0:
                        self.credit(None, (waits[i],) * missing)
            self.execute(self.peer(client_id), message)


_missing = object()


def _is_temporary(obj) -> bool:
    # pandas hands out a new Series/DataFrame for df["c"] (copy-on-write);
    # its indexers (.loc, ...) write through to their frame.
    cls = type(obj)
    return cls.__module__.startswith("pandas") and not cls.__name__.endswith("Indexer")


def _describe(path: tuple) -> str:
    text = f"share.{path[0]}"
    for i in range(1, len(path), 2):
        text += f".{path[i + 1]}" if path[i] == P.ATTR else f"[{path[i + 1]!r}]"
    return text


HELD_ERRORS = 100  # per process; beyond that only counted


def _dropped_message(count: int) -> str:
    return (
        f"{count} more fire-and-forget command(s) of this process failed; their errors "
        f"were not kept (only the first {HELD_ERRORS} are)"
    )


def _print_lost(peer_id: int, errors: list, dropped: int) -> None:
    """A process left without waiting for a reply after its failed
    fire-and-forget commands: nobody else can tell it, so say it here."""
    for _data, tb in errors:
        log.error(
            "a fire-and-forget command of a process (client %d) that has exited failed, "
            "and the process never read the error:\n%s",
            peer_id,
            tb,
        )
    if dropped:
        log.error("%s", _dropped_message(dropped))


class _NoReply:
    """A handler's result when it answers later (a lock not yet free)."""


_no_reply = _NoReply()


def _stop(signum, frame):
    raise Stop


def main() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the owner decides when we stop
    signal.signal(signal.SIGTERM, _stop)
    _logging.to_stderr()
    config = json.loads(sys.stdin.buffer.readline())
    sys.path[:] = config["sys_path"]
    _shm_client.coordinating = config["stem"]
    # After a restart, the owner sends the last committed state (pickled
    # snapshots, from our own predecessor) behind the configuration.
    restored = pickle.loads(sys.stdin.buffer.read()) if config.get("restore") else {}
    try:
        server = ShmServer(config["stem"], config["socket_path"], bytes.fromhex(config["key"]))
    except Exception as exc:
        print(f"ERROR {type(exc).__name__}: {exc}", flush=True)
        sys.exit(1)
    coordinator = Coordinator(server, config["owner_pid"], config["window"])
    try:
        coordinator.restore(restored)
        print("READY", flush=True)  # only now may anyone read or connect
        coordinator.run()
    except Stop:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        server.close()
    except BaseException:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        traceback.print_exc()
        server.close()
        raise


if __name__ == "__main__":
    main()
