"""The coordinator's state machine: the one place that applies every write.

It keeps a mirror of every shared object, runs each client's commands in the
order the client sent them (and after every write to the same object that
was queued before them, by any process), and commits a snapshot of each
changed object through its backend's server -- in batches: when a reader is
waiting, or when a commit window has passed since the object first changed.

No I/O of its own: each backend drives it from its own loop
(`backends/shm/_coordinator.py`, `backends/memory/_memory.py`,
`backends/redis/_coordinator.py`) and hands it a server to reply and commit
through.
"""

from __future__ import annotations

import collections
import logging
import operator
import pickle
import time
from collections import deque
from typing import Any

import cloudpickle

from . import _changes
from . import _protocol as P
from ._errors import ErrorsDropped, TemporaryTarget
from ._ranges import changed_bytes
from ._remote import Unreadable, pack_error
from ._serialize import (
    PLAIN,
    cloudpickle_dumps,
    dumps,
    dumps_out_of_band,
    is_plain,
    unpack,
    unpack_call,
)
from ._server import OrderedServer, Server
from ._slots import SLOTS
from ._values import is_value

HEARTBEAT_S = 0.1
STUCK_S = 2.0
SPIN_S = 0.0002

log = logging.getLogger("accord.share")

# A backend's reply target (a client connection, a reply stream).
_Peer = Any


class Stop(BaseException):
    """Raised by SIGTERM: the owner stops the coordinator.  The one
    BaseException a command's error handling lets through."""


class _Lock:
    __slots__ = ("owner", "waiters")

    def __init__(self) -> None:
        self.owner: tuple[int, int] | None = None
        self.waiters: deque[tuple[_Peer, int, int, float]] = deque()


class Coordinator:
    server: Server  # any backend's server (shm, memory, redis): see _server.py

    def __init__(self, server: Server, owner_pid: int, window: float) -> None:
        self.server = server
        self.owner_pid = owner_pid
        self.window = window
        self.mirror: dict[str, object] = {}
        self.received = [0] * SLOTS  # increments applied, per slot
        self.uncommitted: dict[int, set[str]] = {}  # slot -> names not yet committed
        self.dirty: dict[str, float] = {}  # name -> when it first changed
        self.dirty_slots: dict[str, set[int]] = {}
        self.commit_cost: dict[str, float] = {}
        self.types: dict[str, P.Typed] = {}  # name -> its type and kind
        self.queues: dict[int, deque] = {}
        self.peers: dict[int, _Peer] = {}
        self.departed: dict[int, tuple[int, ...]] = {}  # peer id -> lost intent
        # Errors of fire-and-forget commands, per peer, kept until the peer
        # next waits for a reply (it reads its socket only then): sent ahead
        # of that reply, or printed if the peer leaves without one.
        # peer id -> errors (pickled error, traceback, and what a backend adds)
        self.held: dict[int, list[tuple[Any, ...]]] = {}
        self.held_dropped: dict[int, int] = {}
        self.blocked_since: dict[int, float] = {}
        self.locks: dict[str, _Lock] = {}
        # name -> byte ranges of its (array) buffer changed since its last
        # commit; None: not known, the whole buffer (see _buffers).
        self.touched: dict[str, list | None] = {}
        self._changed = _UNKNOWN  # what the command being run changed
        # name -> operations since its last commit, replayable by readers
        # (a list, dict, set or deque; see _changes); None: not replayable.
        self.changes: dict[str, list | None] = {}
        self._entry = None  # the replayable form of the command being run
        self.unreadable: set[str] = set()  # names last committed as Unreadable
        self.replied = 0  # replies sent so far
        # peer id -> the shape of its last `share.x += k` (see run_augments)
        self.runs: dict[int, _AugmentRun | _AppendRun] = {}
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

    # -- the loop (each backend's own, see ShmCoordinator.run) --------------------

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
        queued = self.run_queued
        runs = self.runs
        progress = True
        while progress:
            progress = False
            for peer_id, queue in list(self.queues.items()):
                while queue:
                    message = queue[0]
                    if type(message) is bytes:
                        run = runs.get(peer_id)
                        if run is not None and (
                            self.run_augments(run, queue)
                            if isinstance(run, _AugmentRun)
                            else self.run_appends(run, queue)
                        ):
                            if self.blocked_since:
                                self.blocked_since.pop(peer_id, None)
                            progress = True
                            continue
                        message = queue[0]  # (run_appends may have decoded it)
                    if type(message) is not tuple and type(message) is not P.Command:
                        raw = message
                        try:
                            message = queue[0] = _decoded(message)
                        except Stop:
                            raise
                        except BaseException:
                            # Only an authenticated peer can send; a garbled
                            # frame means a broken client: cut it off.
                            log.warning("dropping a client that sent a garbled command")
                            queue.clear()
                            self.peer_left(self.peers[peer_id])
                            break
                        if type(message) is tuple:
                            if message[0] == P.AUGMENT:
                                run = runs.get(peer_id)
                                if type(run) is not _AugmentRun or not run.matches(raw):
                                    run = _AugmentRun.of(raw, message)
                                    if run is not None:
                                        runs[peer_id] = run
                            elif (
                                message[0] == P.CALL
                                and type(message[5]) is str
                                and message[5] in _APPENDS
                                and len(message[4]) == 1
                                and type(message[4][0]) is str
                                and type(message[2]) is tuple
                                and len(message[2]) == 2
                            ):
                                run = runs.get(peer_id)
                                if type(run) is not _AppendRun or not run.matches(message):
                                    runs[peer_id] = _AppendRun(message)
                    waits = message[2]
                    if waits and (
                        received[waits[0]] < waits[1]
                        or (len(waits) > 2 and not self.satisfied(waits))
                    ):
                        break  # (noted below if it stays blocked)
                    if self.blocked_since:
                        self.blocked_since.pop(peer_id, None)
                    queue.popleft()
                    if isinstance(message, P.Command):
                        self.execute(self.peers[peer_id], message)
                    else:  # a fire-and-forget write, a plain tuple (see _decoded)
                        queued(self.peers[peer_id], message)
                    progress = True
                if not queue:
                    del self.queues[peer_id]
                    if peer_id in self.departed:
                        self.finish_departure(peer_id)
        for peer_id, queue in list(self.queues.items()):
            if queue and type(queue[0]) is not bytes:  # blocked on its waits
                self.note_blocked(peer_id, queue[0][2])

    def run_queued(self, peer: _Peer, message: tuple) -> None:
        """`execute` for the commands most writes are -- a fire-and-forget
        ASSIGN, AUGMENT or CALL on a name, as `_decoded` left it: the same
        steps with fewer calls (the coordinator's cost is the floor of
        every writer's throughput)."""
        op = message[0]
        writes = message[3]
        place = message[4]
        name = place[0]
        self._changed = _UNKNOWN
        self._entry = None
        try:
            if op == P.AUGMENT:
                operand = message[6]
                inplace = _INPLACE.get(message[5])
                if inplace is not None and len(place) == 1 and type(operand) is tuple:
                    # `share.x += 1`: the name's value, replaced
                    mirror = self.mirror
                    if name not in mirror:
                        raise AttributeError(f"share has no attribute {name!r}")
                    mirror[name] = inplace(mirror[name], operand[0])
                else:
                    self.augment(place, message[5], operand)
            elif op == P.CALL:
                self.call(place, message[5], message[6])
            else:
                self.set_place(place, unpack(message[5]))
            changed = self._changed
            entry = self._entry
        except Stop:
            raise
        except BaseException as exc:
            changed = entry = None
            self.report(peer, pack_error(exc), name)
        if changed is _UNKNOWN or changed is None:
            self.touched[name] = None
        else:
            self.note_change(name, changed)
        if entry is None:
            self.changes[name] = None
        else:
            self.note_entry(name, entry)
        # `credit`, for a name: `uncommitted[s]` holds `name` exactly when
        # `s` is in `dirty_slots[name]` (both are dropped by its commit).
        received = self.received
        for s in writes:
            received[s] += 1
        slots = self.dirty_slots.get(name)
        if slots is None:
            self.dirty[name] = time.monotonic()
            slots = self.dirty_slots[name] = set()
        if not slots.issuperset(writes):
            uncommitted = self.uncommitted
            for s in writes:
                if s not in slots:
                    slots.add(s)
                    names = uncommitted.get(s)
                    if names is None:
                        uncommitted[s] = {name}
                    else:
                        names.add(name)

    def run_augments(self, run: _AugmentRun, queue: deque) -> int:
        """Apply, as one, the `share.x += k` commands at the head of `queue`
        that are the bytes of `run`'s but for their ticket, and whose
        tickets are met -- the same state `run_queued` would leave after
        each (the operator applied once per command, in order, each write
        credited), without decoding or bookkeeping per command.  A run of
        one process's `+=` on one name is what a busy counter's queue
        mostly holds.  Returns how many (0: the head is not one)."""
        name = run.name
        mirror = self.mirror
        if name not in mirror:
            return 0  # run_queued raises the error
        value = mirror[name]
        prefix, suffix, size, at = run.prefix, run.suffix, run.size, run.at
        fn, operand = run.fn, run.operand
        received = self.received
        reached = received[run.slot]
        count = 0
        for message in queue:
            if (
                type(message) is not bytes
                or len(message) != size
                or not message.startswith(prefix)
                or not message.endswith(suffix)
                or int.from_bytes(message[at : at + 8], "little", signed=True) > reached
            ):
                break
            if type(value) not in _NUMBERS:
                break  # a user's __iadd__ could do anything: run_queued runs it
            try:
                value = fn(value, operand)
            except Exception:  # no side effect on a number: run_queued reports it
                break
            count += 1
            reached += 1
        if not count:
            return 0
        for _ in range(count):
            queue.popleft()
        mirror[name] = value
        self.touched[name] = None
        self.changes[name] = None
        writes = run.writes
        for s in writes:
            received[s] += count
        slots = self.dirty_slots.get(name)
        if slots is None:
            self.dirty[name] = time.monotonic()
            slots = self.dirty_slots[name] = set()
        if not slots.issuperset(writes):
            uncommitted = self.uncommitted
            for s in writes:
                if s not in slots:
                    slots.add(s)
                    uncommitted.setdefault(s, set()).add(name)
        return count

    def run_appends(self, run: _AppendRun, queue: deque) -> int:
        """Apply, as one, the `proxy.append(x)` commands at the head of
        `queue` on `run`'s name (a list or deque there) whose tickets are
        met -- each decoded, appended and logged for readers as run_queued
        would, with the bookkeeping once.  Returns how many; a command that
        is not one is left decoded at the head."""
        name = run.name
        obj = self.mirror.get(name)
        if type(obj) not in _APPENDABLE:
            return 0
        method = run.method
        append = getattr(obj, method)
        replayable = method in _changes.REPLAYABLE[type(obj)]
        log: list | None = self.changes.get(name, [])
        writes, place, slot = run.writes, run.place, run.slot
        received = self.received
        reached = received[slot]
        count = 0
        while queue:
            raw = queue[0]
            if type(raw) is not bytes:
                break
            try:
                message = pickle.loads(raw)
            except Exception:
                break  # _decoded cuts the client off
            if (
                type(message) is not tuple
                or len(message) != 7
                or message[0] != P.CALL
                or message[1]
                or message[3] != writes
                or message[4] != place
                or message[5] != method
                or type(message[6]) is not tuple
                or len(message[6]) != 1
                or type(message[2]) is not tuple
                or len(message[2]) != 2
                or message[2][0] != slot
                or type(message[2][1]) is not int
            ):
                break  # another command: decoded (again) on the general path
            if message[2][1] > reached:
                queue[0] = message  # waits for another process's write
                break
            queue.popleft()
            args = message[6]
            append(args[0])
            if log is not None:
                if replayable and len(log) < 4096:
                    log.append((_changes.CALL, method, args))
                else:
                    log = self.changes[name] = None
            count += 1
            reached += 1
        if not count:
            return 0
        self.changes[name] = log
        self.touched[name] = None
        for s in writes:
            received[s] += count
        slots = self.dirty_slots.get(name)
        if slots is None:
            self.dirty[name] = time.monotonic()
            slots = self.dirty_slots[name] = set()
        if not slots.issuperset(writes):
            uncommitted = self.uncommitted
            for s in writes:
                if s not in slots:
                    slots.add(s)
                    uncommitted.setdefault(s, set()).add(name)
        return count

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

    def execute(self, peer: _Peer, command: P.Command) -> None:
        op, reply_id, _waits, writes, _fields = command
        self._changed = _UNKNOWN
        self._entry = None
        try:
            result = self.handlers[op](peer, command)
            status = P.OK
        except Stop:
            raise
        except BaseException as exc:
            # SystemExit, KeyboardInterrupt, GeneratorExit... raised by user
            # code are that command's error, raised in its caller with their
            # type: never the end of the coordinator and every object in it.
            result = pack_error(exc)
            status = P.ERROR
            self._changed = _UNKNOWN
            self._entry = None
        if writes:
            name = command.name
            self.note_change(name, self._changed)
            self.note_entry(name, self._entry)
            self.credit(name, writes)
        if reply_id and result is not _no_reply:
            self.reply(peer, reply_id, status, result)
        elif status == P.ERROR:
            self.report(peer, result, command.name if writes else None)

    def note_change(self, name: str, changed) -> None:
        ranges = self.touched.setdefault(name, [])
        if ranges is None:
            return
        if changed is _UNKNOWN or changed is None or len(ranges) >= 1024:
            self.touched[name] = None
        elif changed:
            ranges.append(changed)

    def note_entry(self, name: str, entry) -> None:
        log = self.changes.setdefault(name, [])
        if log is not None:
            if entry is None or len(log) >= 4096:
                self.changes[name] = None
            else:
                log.append(entry)

    def _replayable(self, obj, entry) -> None:
        if type(obj) in _changes.REPLAYABLE:
            self._entry = entry

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

    def reply(self, peer: _Peer, reply_id: int, status: int, result) -> None:
        self.replied += 1  # (a backend's loop may poll harder after replies)
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

    def report(self, peer: _Peer, error: tuple[Any, ...], name: str | None = None) -> None:
        """Keep the error of a fire-and-forget command (a write to `name`)
        for its process.

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

    def print_held(self) -> None:
        """The share closes: print the errors no process will read now."""
        for peer_id, held in list(self.held.items()):
            _print_lost(peer_id, held, self.held_dropped.get(peer_id, 0), "of the closing share")
        self.held.clear()

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
        writer = self.server.snapshots
        touched = self.touched.pop(name, None)
        changes = self.changes.pop(name, None)
        if changes and name in self.mirror and self._append(writer, name, changes):
            pass  # readers replay `changes`: the cost follows what changed
        elif name in self.mirror:
            value = self.mirror[name]
            raws = None
            try:
                if getattr(writer, "zero_copy", False):  # big buffers, own segments
                    data, raws = dumps_out_of_band(value)
                else:
                    data = dumps(value)
                self.unreadable.discard(name)
            except Stop:
                raise
            except BaseException as exc:
                raws = None
                self.unreadable.add(name)  # no change log on this snapshot
                log.error("cannot commit share.%s: %r", name, exc)
                data = dumps(
                    Unreadable(
                        f"share.{name} can no longer be serialized ({type(exc).__name__}: "
                        f"{exc}): a method stored something unpicklable in it; "
                        f"repair it with share.apply({name!r}, fn) or assign it anew"
                    )
                )
            if raws:
                writer.write(name, data, self.kind(name, value), raws, touched)
                # The shm backend holds an array's buffer once: our copy
                # becomes a copy-on-write mapping of what readers map.
                adopt = getattr(writer, "adopt", None)
                if adopt is not None:
                    self.mirror[name] = adopt(name, value, data)
            else:
                writer.write(name, data, self.kind(name, value))
        else:
            writer.delete(name)
        self.commit_cost[name] = time.perf_counter() - started
        self.dirty.pop(name, None)
        for s in self.dirty_slots.pop(name, ()):
            names = self.uncommitted.get(s)
            if names is not None:
                names.discard(name)
                if not names:
                    del self.uncommitted[s]
                    self.server.set_applied(s, self.received[s])

    def _append(self, writer, name: str, changes: list) -> bool:
        append = getattr(writer, "append", None)
        known = self.types.get(name)
        if (
            append is None
            or known is None
            or known.cls is not type(self.mirror[name])
            or name in self.unreadable
        ):
            return False
        try:
            entry = pickle.dumps(changes, 5)
        except Exception:
            return False
        return append(name, entry, known.kind)

    def kind(self, name: str, value) -> P.Kind:
        """(type generation, is an immutable value): changes only when the
        object's type does, so readers can route calls without unpickling."""
        known = self.types.get(name)
        if known is None or known.cls is not type(value):
            generation = known.kind.generation + 1 if known is not None else 0
            kind = P.Kind(generation, is_value(value))
            known = self.types[name] = P.Typed(type(value), kind)
        return known.kind

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
        trim = getattr(self.server.snapshots, "trim", None)  # spare copies (shm)
        if trim is not None:
            trim(now)

    # -- departures ------------------------------------------------------------

    def peer_left(self, peer: _Peer) -> None:
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
        self.runs.pop(peer_id, None)
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
            if len(place) == 3:
                self._changed = changed_bytes(parent, place[-1])
                if is_plain(value) and is_plain(place[-1]):
                    self._replayable(parent, (_changes.SET, place[-1], value))
            parent[place[-1]] = value

    # -- commands --------------------------------------------------------------

    def op_assign(self, peer, command: P.Command):
        place, value = command.fields
        self.set_place(place, unpack(value))

    def op_delete(self, peer, command: P.Command):
        (place,) = command.fields
        if len(place) == 1:
            if self.mirror.pop(place[0], _missing) is _missing:
                raise AttributeError(f"share has no attribute {place[0]!r}")
            return
        parent = self.resolve_target(place[:-2])
        if place[-2] == P.ATTR:
            delattr(parent, place[-1])
        else:
            if len(place) == 3 and is_plain(place[-1]):
                self._replayable(parent, (_changes.DEL, place[-1]))
            del parent[place[-1]]

    def op_augment(self, peer, command: P.Command):
        self.augment(*command.fields)

    def augment(self, place: tuple, op: str, operand) -> None:
        if op not in P.INPLACE:
            raise ValueError(f"unknown in-place operator {op!r}")
        current = self.resolve(place)
        self.set_place(place, getattr(operator, op)(current, unpack(operand)))

    def op_call(self, peer, command: P.Command):
        return self.call(*command.fields)

    def call(self, path: tuple, method: str, packed):
        args, kwargs = unpack_call(packed)
        obj = self.resolve(path)
        if len(path) == 1 and type(packed) is tuple:  # plain arguments only
            methods = _changes.REPLAYABLE.get(type(obj))
            if methods is not None and method in methods:
                self._entry = (_changes.CALL, method, args)
        return getattr(obj, method)(*args, **kwargs)

    def op_apply(self, peer, command: P.Command):
        path, packed, replace = command.fields
        fn, args, kwargs = cloudpickle.loads(packed)
        result = fn(self.resolve(path), *args, **kwargs)
        if replace:
            self.set_place(path, result)
        return result

    def op_barrier(self, peer, command: P.Command):
        waits = command.waits
        for i in range(0, len(waits), 2):
            for name in list(self.uncommitted.get(waits[i], ())):
                self.commit(name)

    def op_flush(self, peer, command: P.Command):
        for name in list(self.dirty):
            self.commit(name)

    def op_names(self, peer, command: P.Command):
        return sorted(self.mirror)

    def op_acquire(self, peer, command: P.Command):
        name, token, timeout = command.fields
        lock = self.locks.setdefault(name, _Lock())
        if lock.owner is None:
            lock.owner = (peer.id, token)
            return True
        if timeout is not None and timeout <= 0:
            return False
        deadline = float("inf") if timeout is None else time.monotonic() + timeout
        lock.waiters.append((peer, command.reply_id, token, deadline))
        return _no_reply

    def op_release(self, peer, command: P.Command):
        name, token = command.fields
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

    server: OrderedServer

    def __init__(self, server: OrderedServer, owner_pid: int, window: float) -> None:
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
            command = P.as_command(message)
            waits = command.waits
            if waits and not self.satisfied(waits):
                # Cannot happen while flags and commands move together;
                # never hang on it: credit what is missing and say so.
                log.warning("unmet waits %s; crediting them", waits)
                for i in range(0, len(waits), 2):
                    missing = waits[i + 1] - self.received[waits[i]]
                    if missing > 0:
                        self.credit(None, (waits[i],) * missing)
            self.execute(self.peer(client_id), command)


# In-place operators by name (`Coordinator.run_queued`; P.INPLACE only).
_INPLACE = {name: getattr(operator, name) for name in P.INPLACE}

# The commands `Coordinator.run_queued` runs: (op, reply_id, waits, writes,
# place, *fields), by their length.
_QUEUED = {P.ASSIGN: 6, P.AUGMENT: 7, P.CALL: 7}


def _decoded(message) -> tuple | P.Command:
    """A received command: the plain tuple itself if `run_queued` runs it
    (a fire-and-forget write to a name), else a `Command` (raises if it is
    not one)."""
    if type(message) is bytes:
        message = pickle.loads(message)
    if (
        type(message) is tuple
        and len(message) == _QUEUED.get(message[0], 0)
        and not message[1]
        and message[3]
        and type(message[4]) is tuple
        and message[4]
    ):
        return message
    return P.as_command(message)


# A command's ticket (the count its wait is for) as the shm writer pickles
# it: an 8-byte LONG1 (ring_send patches those 8 bytes; see _rings.WAIT_MARK).
_LONG1_8 = b"\x8a\x08"
# Operands a run of augments may share: immutable numbers, so one object
# serves all (and the only other ones a number takes raise at once).
_SHAREABLE = (int, float, complex, bool)
# Values a run of augments applies to: builtin numbers, whose operators run
# no user code and change nothing when they raise.
_NUMBERS = (int, float, complex)


class _AugmentRun:
    """The bytes of one fire-and-forget `share.x op= operand` but for its
    ticket: a received command whose bytes are `prefix + 8 bytes + suffix`
    unpickles as this one with the ticket those 8 bytes say (pickle is
    deterministic in its input; only a LONG1's payload differs), so it is
    applied without unpickling (see Coordinator.run_augments)."""

    __slots__ = ("at", "fn", "name", "operand", "prefix", "size", "slot", "suffix", "writes")

    @classmethod
    def of(cls, raw: object, message: tuple) -> _AugmentRun | None:
        """The run `message` (decoded from `raw` by _decoded) starts, if it
        is a `share.x op= plain immutable value` with its ticket where the
        shm writer puts it; else None."""
        _op, _reply, waits, writes, place, opname, operand = message
        fn = _INPLACE.get(opname) if type(opname) is str else None
        if (
            type(raw) is not bytes
            or fn is None
            or type(waits) is not tuple
            or len(waits) != 2
            or type(waits[1]) is not int
            or not 0 <= waits[1] < 1 << 62
            or type(writes) is not tuple
            or any(type(s) is not int for s in writes)
            or waits[0] != writes[0]
            or len(set(writes)) != len(writes)
            or len(place) != 1
            or type(place[0]) is not str
            or type(operand) is not tuple
            or len(operand) != 1
            or type(operand[0]) not in _SHAREABLE
        ):
            return None
        ticket = _LONG1_8 + waits[1].to_bytes(8, "little", signed=True)
        at = raw.find(ticket)
        if at < 0 or raw.find(ticket, at + 1) >= 0:
            return None  # not where the writer puts it, or ambiguous
        at += len(_LONG1_8)
        prefix, suffix = raw[:at], raw[at + 8 :]
        # Those 8 bytes must be the ticket's and nothing else's (not, say,
        # the inside of a bytes operand): another value there changes the
        # ticket alone.
        other = waits[1] ^ 1
        try:
            probe = pickle.loads(prefix + other.to_bytes(8, "little", signed=True) + suffix)
        except Exception:
            return None
        if probe != (*message[:2], (waits[0], other), *message[3:]):
            return None
        run = cls()
        run.at = at
        run.prefix = prefix
        run.suffix = suffix
        run.size = len(raw)
        run.slot = waits[0]
        run.writes = writes
        run.name = place[0]
        run.fn = fn
        run.operand = operand[0]
        return run

    def matches(self, raw) -> bool:
        """Is `raw` a command of this run (its ticket aside)?"""
        return (
            type(raw) is bytes
            and len(raw) == self.size
            and raw.startswith(self.prefix)
            and raw.endswith(self.suffix)
        )


# Containers whose one-argument append a run applies (run_appends): builtin,
# so appending runs no user code.
_APPENDABLE = (list, collections.deque)
_APPENDS = frozenset({"append"})


class _AppendRun:
    """The shape of a fire-and-forget `proxy.append(x)` on a name: its
    flags, place and method; later commands of that shape are applied
    together (see Coordinator.run_appends)."""

    __slots__ = ("method", "name", "place", "slot", "writes")

    def __init__(self, message: tuple) -> None:
        self.writes = message[3]
        self.place = message[4]
        self.name = message[4][0]
        self.method = message[5]
        self.slot = message[3][0]

    def matches(self, message: tuple) -> bool:
        return message[3] == self.writes and message[4] == self.place and message[5] == self.method


_missing = object()
_UNKNOWN = object()  # a command whose changes are not known: all of the object


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


def _print_lost(peer_id: int, errors: list, dropped: int, why: str = "that has exited") -> None:
    """A process left (or the share closes) without waiting for a reply
    after its failed fire-and-forget commands: nobody else can tell it, so
    say it here."""
    for error in errors:  # (data, traceback, ...)
        log.error(
            "a fire-and-forget command of a process (client %d) %s failed, "
            "and the process never read the error:\n%s",
            peer_id,
            why,
            error[1],
        )
    if dropped:
        log.error("%s", _dropped_message(dropped))


class _NoReply:
    """A handler's result when it answers later (a lock not yet free)."""


_no_reply = _NoReply()
