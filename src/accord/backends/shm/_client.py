"""A process's side of the shm backend: write flags, snapshots, connection.

One `ShmClient` per share per process (see `client_for`), shared by every
`Share` handle and proxy of that share in the process and by all its
threads.  After `fork()` the child gets a fresh one: a socket or a client
slot is never shared between two processes.
"""

from __future__ import annotations

import contextlib
import json
import os
import pickle
import secrets
import socket
import struct
import threading
import time
from pathlib import Path

from ..._core._atomic import fetch_add, load, store
from ..._core._errors import CoordinatorLost, ShareClosed
from ..._core._fastread import Control
from ..._core._segment import Segment
from ..._core._slots import SLOTS
from ..._core._values import is_value
from .._clients import Clients
from .._replies import Replies
from . import _control, _transport
from ._ring import Sender
from ._rings import (
    IDENTITY,
    OWNER_PID,
    RING_CLOSED,
    WAIT_MARK,
    Inbox,
    Producer,
    RingClosed,
    RingSegment,
    template,
)
from ._snapshots import SnapshotReader

# A coordinator that has not beaten for this long is checked for life.
STALE_NS = 1_000_000_000
# A client waiting for a reply checks this often that its coordinator is
# there (a dead one is noticed at once: the kernel closes its socket).
REPLY_CHECK_S = 0.05
# Values the fast read path remembers per client before it starts afresh.
MAX_REMEMBERED = 10_000

_INTENTS = [struct.Struct(f"<{3 + n}Q") for n in range(_control.INTENT_SLOTS + 1)]
monotonic_ns = time.monotonic_ns
PENDING = _control.PENDING
APPLIED = _control.APPLIED
dumps = pickle.dumps


class ShareInfo:
    """Everything a process needs to attach to a share (picklable)."""

    backend = "shm"
    __slots__ = ("key", "name", "pid", "socket_path", "stem")

    def __init__(self, name: str, stem: str, socket_path: str, key: bytes, pid: int) -> None:
        self.name = name
        self.stem = stem
        self.socket_path = socket_path
        self.key = key
        self.pid = pid

    def __reduce__(self):
        return ShareInfo, (self.name, self.stem, self.socket_path, self.key, self.pid)

    def client(self) -> ShmClient:
        """This process's client of the share."""
        return client_for(self)

    def reload(self) -> ShareInfo | None:
        """The share's current incarnation (after a restart), from its key file."""
        return load_record(self.name)

    def remove(self) -> None:
        """Forget the share here and remove everything it left (owner, on close)."""
        from ._server import remove_leftovers

        forget(self)
        remove_leftovers(self.stem, self.socket_path)


def load_record(name: str) -> ShareInfo | None:
    """The live incarnation of share `name` from its key file, if any."""
    try:
        record = json.loads((_transport.runtime_dir() / f"{name}.key").read_text())
        return ShareInfo(
            name, record["stem"], record["socket"], bytes.fromhex(record["key"]), record["pid"]
        )
    except (OSError, ValueError, KeyError):
        return None


def save_record(info: ShareInfo) -> None:
    """Publish `info` (key included) to this user's processes: a 0600 file."""
    record = {
        "stem": info.stem,
        "socket": info.socket_path,
        "key": info.key.hex(),
        "pid": info.pid,
        "owner": os.getpid(),
    }
    path = _transport.runtime_dir() / f"{info.name}.key"
    # Written aside, then renamed over the old record: a process reading it
    # meanwhile (following a restart) sees the old record or the new one,
    # never an empty file, which would read as "closed".
    aside = path.with_name(f".{info.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    fd = os.open(aside, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(record, f)
        os.replace(aside, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(aside)
        raise


def abandoned_records() -> list[ShareInfo]:
    """Shares of this user whose coordinator and owner are both gone (killed
    before anyone could clean up): their files and segments can go."""
    found = []
    for path in _transport.runtime_dir().glob("*.key"):
        try:
            record = json.loads(path.read_text())
            pid, owner = record["pid"], record.get("owner", 0)
        except (OSError, ValueError, KeyError):
            continue
        if not _pid_alive(pid, None) and not (owner and _pid_alive(owner, None)):
            info = load_record(path.stem)
            if info is not None:
                found.append(info)
    return found


class ShmClient:
    remote = False  # reads are local loads (see Link.get_name)

    def __init__(self, info: ShareInfo) -> None:
        self.info = info
        try:
            self.control = Segment.attach(f"{info.stem}~control", _control.SIZE)
        except FileNotFoundError:
            if load_record(info.name) is None:  # its owner closed it
                raise ShareClosed(f"share {info.name!r} is closed") from None
            # Its owner still has it: the coordinator died (and restart()
            # may be under way), so the caller may retry after a restart.
            raise CoordinatorLost(
                f"the coordinator of share {info.name!r} (pid {info.pid}) is gone"
            ) from None
        _control.check_header(self.control.buf)
        self.ctrl = self.control.buf
        # The fast read path's view of the flags (see Link.get_name and
        # _core/_fastread.c); closed before the control segment is unmapped.
        self.fast = Control(
            self.ctrl,
            heartbeat=_control.HEARTBEAT,
            commits=_control.COMMITS,
            pending=PENDING,
            applied=APPLIED,
            slots=SLOTS,
            stale_ns=STALE_NS,
            limit=MAX_REMEMBERED,
        )
        self.snapshots = SnapshotReader(self.control, info.stem, self._check_waiting)
        self._send_lock = threading.Lock()  # a write's flags and its send, together
        self.replies = Replies()
        self._sock: socket.socket | None = None
        self._rings: RingSegment | None = None
        self._reply_rings: RingSegment | None = None
        self._inbox: Inbox | None = None
        self._producer: Producer | None = None
        self._id = -1
        self._intent = 0
        # The C path of this client's fire-and-forget writes of one plain
        # value (see _ring.c's Sender), made with the connection; its `seq`
        # numbers this client's commands (intent records), both paths'.
        self.sender: Sender | None = None
        self._next_reply = 0
        self._last_verified = 0
        # Set once (by _lose or close), with the fast read path closed.
        self.lost: CoordinatorLost | ShareClosed | None = None
        self.owner_process = None  # the Popen, in the process that started it

    # -- the connection --------------------------------------------------------

    def _connect(self) -> socket.socket:
        self._check_lost()
        try:
            sock, client_id = _transport.connect(self.info.socket_path, self.info.key)
        except (FileNotFoundError, ConnectionRefusedError):
            raise self._lose("its socket is gone", undelivered=True) from None
        except _transport.AuthenticationError:
            # The socket's path now serves another coordinator (the share was
            # restarted): this incarnation is gone; Link follows the new one.
            raise self._lose(
                "its socket now serves a newer coordinator", undelivered=True
            ) from None
        except OSError as exc:
            raise self._lose(f"cannot connect: {exc}", undelivered=True) from None
        try:
            if self._rings is None:
                self._rings = RingSegment.attach(f"{self.info.stem}~rings")
            if self._reply_rings is None:
                self._reply_rings = RingSegment.attach(f"{self.info.stem}~replies")
            self._producer = Producer(
                self._rings, client_id, self.info.stem, self._ring_alive, wake=self._wake
            )
            # Who appends here, before anything is appended (see _rings.IDENTITY).
            base = self._rings.base(client_id)
            store(self._rings.buf, base + IDENTITY, _identity)
            store(self._rings.buf, base + OWNER_PID, os.getpid())
            self._inbox = Inbox(self._reply_rings, client_id, producer=self._rings)
        except FileNotFoundError:
            sock.close()
            raise self._lose("its command rings are gone", undelivered=True) from None
        self._sock, self._id = sock, client_id
        self._intent = _control.intent_offset(client_id)
        self._close_sender()
        self.sender = sender = self._producer.sender(
            self.ctrl,
            self._intent,
            PENDING,
            _control.CLOSED,
            _control.REPLACED,
            self._send_lock,
            self.replies.deferred,
            self._wake,
        )
        self.fast.send = sender.send  # `share.name += x` in C (see _fastread.c)
        return sock

    def _close_sender(self) -> None:
        self.fast.send = None
        sender, self.sender = self.sender, None
        if sender is not None:
            sender.close()  # its views go before the segments are unmapped

    @staticmethod
    def template(op: int, fields: tuple, writes: tuple) -> tuple | None:
        """The `Sender.send` template of a fire-and-forget command whose last
        field is a 1-tuple holding a plain value (see `_rings.template`)."""
        return template(op, fields, writes)

    def _ring_alive(self) -> None:
        """Raise if the coordinator is gone (a client waiting for room in
        its ring): the command was not queued and may be sent again."""
        try:
            self._check_waiting()
        except (CoordinatorLost, ShareClosed) as exc:
            exc.undelivered = True
            raise

    def _lose(self, why: str, undelivered: bool = False) -> CoordinatorLost | ShareClosed:
        """Record that the coordinator is gone; the error to raise.

        `undelivered` marks an error raised before the command left this
        process: it may safely be sent again to a restarted coordinator.
        """
        if load(self.ctrl, _control.CLOSED):
            self.lost = ShareClosed(f"share {self.info.name!r} is closed")
        else:
            self.lost = CoordinatorLost(
                f"the coordinator of share {self.info.name!r} (pid {self.info.pid}) is gone: {why}"
            )
        self.fast.close()  # every read now goes through the checks in Python
        if self.sender is not None:
            self.sender.close()  # and every write (its seq stays for the Python path)
        self.salvage()
        error = type(self.lost)(*self.lost.args)
        error.undelivered = undelivered
        return error

    def salvage(self) -> None:
        """Keep what the reply ring still holds, once the coordinator is
        gone: the errors of fire-and-forget commands it posted there, which
        the next sync point raises -- after a restart too (that command may
        be in the committed state, so the new coordinator does not replay
        it and cannot know its error)."""
        inbox = self._inbox
        if inbox is None:
            return

        def take() -> list[tuple]:
            found: list[tuple] = []
            for _ in range(64):  # bounded: the coordinator appends no more
                try:
                    entries = inbox.take()
                    found += [pickle.loads(data) for data in entries]
                except Exception:  # a spilled reply removed by restart(), ...: what came before
                    break
                if not entries:
                    break
            return found

        self.replies.collect(take)

    def _check_lost(self) -> None:
        if self.lost is not None:
            raise type(self.lost)(*self.lost.args)

    def known(self, name: str) -> None:
        """For remote clients only (`remote` is False here): nothing unchecked."""
        return None

    def check_alive(self) -> None:
        """Raise CoordinatorLost if the coordinator has died or the share closed.

        Cheap (one load) while the coordinator's heartbeat is fresh.
        """
        if self.lost is not None:
            self._check_lost()
        now = monotonic_ns()
        if now - load(self.ctrl, _control.HEARTBEAT) < STALE_NS:
            return
        if now - self._last_verified < STALE_NS // 5:
            return
        self._last_verified = now
        if load(self.ctrl, _control.CLOSED):
            raise self._lose("closed")
        if not _pid_alive(self.info.pid, self.owner_process):
            raise self._lose("its process has exited")

    def _check_waiting(self) -> None:
        """check_alive for a reader waiting on the coordinator: a closed
        share is noticed at once, not once the heartbeat is stale."""
        if self.lost is None and load(self.ctrl, _control.CLOSED):
            raise self._lose("closed")
        self.check_alive()

    # -- sending -------------------------------------------------------------

    def send(self, op: int, fields: tuple, writes: tuple = (), reads: tuple = (), reply=False):
        """Queue one command; with `reply`, wait for and return its reply.

        `writes` are the flag slots this command raises (the first one is the
        object's WHOLE slot); `reads` the slots whose earlier writes must be
        applied before the command runs.  Targets are taken before this
        command's own increments, so it never waits for itself: a write
        waits for every earlier write to its object, by any process.
        """
        if self.replies.deferred:
            self.replies.raise_deferred()
        buf = self.ctrl
        if load(buf, _control.CLOSED) or load(buf, _control.REPLACED):
            # A ring append would succeed and never be applied (a socket
            # send to a dead peer fails): closed, or replaced by restart().
            raise self._lose("replaced by restart()", undelivered=True)
        if writes and not reply and not reads:
            # A fire-and-forget write, the common case: its intent, flags
            # and ring append in one C call (`Producer.write`), the command
            # pickled with a mark where its wait goes.
            payload = dumps((op, 0, (writes[0], WAIT_MARK), writes, *fields), 5)
            with self._send_lock:
                if self._sock is None:
                    self._connect()
                producer, sender = self._producer, self.sender
                assert producer is not None and sender is not None  # set by _connect
                seq = sender.seq + 1
                done = producer.write(buf, self._intent, PENDING, seq, writes, payload)
                if done == RING_CLOSED:
                    # restart() closed the rings after we passed the check
                    # above: not queued, so it may go to the new coordinator.
                    raise self._lose("replaced by restart()", undelivered=True)
                if done >= 0:
                    sender.seq = seq
                    if done & 3 == 2:
                        self._wake()
                    return None
            # (A full ring, or a big command: nothing done; the path below
            # waits for room or spills.)
        with self._send_lock:
            if self._sock is None:
                self._connect()
            sender = self.sender
            assert sender is not None  # set by _connect
            waits = []
            for s in reads:
                waits.append(s)
                waits.append(load(buf, PENDING + 8 * s))
            seq = sender.seq + 1
            if writes:
                # Record the intent before raising each flag: if this process
                # dies before the send, the coordinator credits the flags the
                # mask names.  (Dying between a mask bit and its flag credits
                # one flag too many: a later read may then not wait for one
                # write.  The other order would make readers wait forever.)
                intent = self._intent
                count = len(writes)
                _INTENTS[count].pack_into(buf, intent, seq, 1, count, *writes)
                old = fetch_add(buf, PENDING + 8 * writes[0], 1)
                waits.append(writes[0])
                waits.append(old)
                for i in range(1, count):
                    store(buf, intent + 8, (2 << i) - 1)
                    fetch_add(buf, PENDING + 8 * writes[i], 1)
            if reply:
                self._next_reply += 1
                reply_id = self._next_reply
            else:
                reply_id = 0
            payload = dumps((op, reply_id, waits, writes, *fields), 5)
            # Durable once appended: applied exactly once even if this
            # process or the coordinator dies now (restart() replays it).
            producer = self._producer
            assert producer is not None  # set by _connect
            try:
                wake = producer.append(payload)
            except RingClosed:
                # restart() closed the rings after we passed the check above:
                # not queued, so it may be sent to the new coordinator.
                raise self._lose("replaced by restart()", undelivered=True) from None
            sender.seq = seq
            if wake:  # the coordinator sleeps in select(): wake it there
                self._wake()
        if reply:
            try:
                return self._await(reply_id)
            except CoordinatorLost as exc:
                # Queued before the coordinator died: restart() applies it
                # exactly once, but its result is lost.
                exc.queued = True
                raise
        return None

    def _wake(self) -> None:
        """Wake the coordinator, asleep in select(), with a byte on our socket."""
        sock = self._sock
        assert sock is not None
        try:
            sock.send(b"\0", socket.MSG_DONTWAIT)
        except BlockingIOError:
            pass  # full of wake-ups already
        except OSError as exc:
            # Queued, but the coordinator is gone: restart() applies it;
            # the next operation tells the coordinator is lost.
            self._lose(f"wake-up failed ({exc})")

    # -- receiving -------------------------------------------------------------

    def _await(self, reply_id: int) -> tuple:
        """Wait for the reply `reply_id` in this client's reply ring."""
        return self.replies.wait(reply_id, self._receive)

    def _receive(self) -> list[tuple]:
        """The replies in the reply ring; sleeps on it (a futex the
        coordinator wakes) until there are some.  Between sleeps, checks
        that the coordinator is there: its socket closes when it dies."""
        inbox = self._inbox
        if inbox is None:
            raise self._lose("disconnected")
        while True:
            entries = inbox.take()
            if entries:
                return [pickle.loads(data) for data in entries]
            if not inbox.sleep(REPLY_CHECK_S):
                try:
                    self._check_connection()
                except (CoordinatorLost, ShareClosed):
                    entries = inbox.take()  # replied, then went
                    if entries:
                        return [pickle.loads(data) for data in entries]
                    raise

    def _check_connection(self) -> None:
        """Raise if the coordinator closed our socket (it died, or cut us
        off) or is otherwise gone.  It sends nothing on it: any byte there
        is a protocol error too."""
        sock = self._sock
        if sock is None:
            raise self._lose("disconnected")
        try:
            data = sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
        except (BlockingIOError, InterruptedError):
            data = None
        except OSError as exc:
            raise self._lose(f"receive failed ({exc})") from None
        if data is not None:
            raise self._lose("connection closed" if not data else "unexpected data on its socket")
        self._check_waiting()

    def raise_deferred(self) -> None:
        """Raise the errors of earlier fire-and-forget commands."""
        self.replies.raise_deferred()

    # -- reading ---------------------------------------------------------------

    def applied_all(self, slots) -> bool:
        buf = self.ctrl
        for s in slots:
            if load(buf, APPLIED + 8 * s) < load(buf, PENDING + 8 * s):
                return False
        return True

    def pending_slots(self) -> tuple[int, ...]:
        """The slots with writes raised and not yet committed: a command
        that waits on them (`send(..., reads=...)`) runs after every write
        queued, by any process, before this call -- what `list(share)`
        needs, since the coordinator drains the rings in no causal order.
        Both counter arrays are copied first (64 KiB each; the copy reads
        each aligned word whole on x86-64 and arm64, as their loads are):
        the slots that differ there are then read again, one atomic load
        each.  A write queued before this call raised its counter before
        the copy, so only a write concurrent with the call can be missed."""
        buf = self.ctrl
        size = 8 * SLOTS
        raised = bytes(buf[PENDING : PENDING + size])
        done = bytes(buf[APPLIED : APPLIED + size])
        if raised == done:
            return ()  # nothing pending anywhere (the common case)
        found = []
        for start in range(0, size, _CHUNK):
            if raised[start : start + _CHUNK] == done[start : start + _CHUNK]:
                continue
            for at in range(start, start + _CHUNK, 8):
                if raised[at : at + 8] != done[at : at + 8]:
                    pending = load(buf, PENDING + at)
                    if pending and load(buf, APPLIED + at) < pending:
                        found.append(at // 8)
        return tuple(found)

    def remember(self, name: str, slot: int, cached=None) -> None:
        """Let the fast read path serve `name` (its WHOLE flag is `slot`)
        while nothing is committed and no write to it is pending: what was
        last read of it (`cached`, if the caller has it), if that is an
        immutable value."""
        if cached is None:
            cached = self.snapshots.cached(name)
            if cached is None:
                return
        # The count before the object: another thread may be storing a newer
        # read of it, and an object newer than its count is still current
        # while the count is (the reverse would not be).
        commits = cached.commits
        kind = cached.kind
        obj = cached.obj
        if commits >= 0 and kind is not None and kind.is_value and is_value(obj):
            self.fast.remember(name, obj, commits, slot)

    def lookup(self, name: str, slots):
        """(what was last read for `name` if nothing was committed since,
        else None; whether every write to `slots` queued before now is
        applied).  The flags are checked first: a current snapshot then
        includes every such write."""
        clear = self.applied_all(slots)
        return self.snapshots.unchanged(name), clear

    def kind(self, name: str):
        """The type and `Kind` of the committed `name` (`Typed`), or MISSING."""
        self.check_alive()
        return self.snapshots.kind(name)

    def read(self, name: str):
        """The committed object `name` (shared with other reads: do not mutate)."""
        self.check_alive()
        return self.snapshots.read(name)

    # -- lifetime ------------------------------------------------------------

    def disconnect(self) -> None:
        self._close_sender()
        sock, self._sock = self._sock, None
        self._producer = None
        self._inbox = None
        if sock is not None:
            sock.close()

    def retire(self) -> None:
        """Mark this incarnation of the share replaced (restart(), by the
        owner, once its coordinator died): every client then stops
        appending to its rings and follows the share to the new one."""
        store(self.ctrl, _control.REPLACED, 1)

    def close(self) -> None:
        if self.lost is None:  # handles still holding this client re-resolve the share
            self.lost = ShareClosed(f"share {self.info.name!r} is closed")
        self.disconnect()
        self.fast.close()  # it holds a view of the control segment
        for rings in (self._rings, self._reply_rings):
            if rings is not None:
                rings.close()
        self.snapshots.close()
        self.control.close()

    def _after_fork(self) -> None:
        # The parent's socket, client slot and ring stay the parent's.
        self._close_sender()
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        self._producer = self._inbox = None  # the parent's rings stay the parent's
        self._id = -1
        self._send_lock = threading.Lock()
        self.replies = Replies()
        self.owner_process = None
        self.fast.forget()
        self.snapshots.after_fork()


def _pid_alive(pid: int, process) -> bool:
    if process is not None:
        return process.poll() is None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie is dead too
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] != "Z"
    except (OSError, IndexError):
        return True


_clients: Clients[ShmClient] = Clients()  # by stem; `coordinating` in a coordinator
_CHUNK = 512  # bytes of flag counters `pending_slots` compares at once


def _new_identity() -> None:
    global _identity
    _identity = secrets.randbits(63) + 1  # never 0: "not said"


# This interpreter's identity in its rings (see _rings.IDENTITY): one per
# interpreter (each imports this module anew) and per forked child.
_identity = 0
_new_identity()
os.register_at_fork(after_in_child=_new_identity)


def client_for(info: ShareInfo) -> ShmClient:
    """This process's client of the share described by `info`."""
    return _clients.get(
        info.stem,
        f"share {info.name!r}",
        lambda: _new_client(info),
        lambda client: client.info.pid != info.pid,  # a restarted share's
    )


def _new_client(info: ShareInfo) -> ShmClient:  # under the registry's lock
    _sweep_closed()
    return ShmClient(info)


def _sweep_closed() -> None:
    # A long-lived worker may see many shares come and go: let go of the
    # sockets and mappings of those that were closed (or whose coordinator
    # was replaced).  Runs only when a new client is made.
    for stem, client in _clients.items():
        if client.lost is not None or load(client.ctrl, _control.CLOSED):
            _clients.pop(stem)
            client.close()


def forget(info: ShareInfo) -> None:
    client = _clients.pop(info.stem)
    if client is not None:
        client.close()
