"""The shm backend's coordinator process: the core state machine driven by
this backend's loop over authenticated Unix sockets.

Run as ``python -m accord.backends.shm._coordinator`` by `Share`; it reads
its configuration as JSON on stdin, prints READY when it listens, and exits
when the owner closes the share or dies.

Exactly once across restart(): a client's ring keeps each command until it
is in a committed snapshot (`settle`), and each snapshot records how many
writes to its name it includes (see _snapshots.HEADER).  After a crash,
restart() closes the dead coordinator's rings and hands their entries to the
new one, which applies those that the last commits do not include, in the
order they were issued (`replay`), and commits them before it is ready.
"""

from __future__ import annotations

import logging
import os
import pickle
import signal
import time
from collections import deque

import cloudpickle

from ..._core import _coordinator as core
from ..._core import _protocol as P
from ..._core._atomic import load, store
from ..._core._coordinator import HEARTBEAT_S, SPIN_S, Coordinator, Stop
from ..._core._remote import pack_error
from ..._core._slots import WHOLE, slot_of
from .._process import coordinator_main
from . import _client
from ._rings import IDENTITY, SPIN_PAYS, spinning_pays
from ._server import Peer, ShmServer

log = logging.getLogger("accord.backends.shm")

# Tests only: "N" exits (status 70, nothing cleaned up, as a SIGKILL would)
# as soon as N commands are applied, before they are committed; "N:committed"
# once they are committed, before the rings learn it (see `settle`);
# "N:settled" once the rings learn it too (a restart replays none of them).
_EXIT_AT = os.environ.get("ACCORD_TEST_EXIT_AFTER_APPLIED", "0").split(":")
_EXIT_AFTER_APPLIED = int(_EXIT_AT[0])
_EXIT_COMMITTED = _EXIT_AT[1:] == ["committed"]
_EXIT_SETTLED = _EXIT_AT[1:] == ["settled"]
# Tests only: a coordinator started by restart() exits before it is ready.
_RESTART_FAILS = os.environ.get("ACCORD_TEST_RESTART_FAILS") == "1"
# Tests only: the ring of this client id never settles (as a client's whose
# queue never empties, blocked on a wait): all it sent stays to replay.
_HOLD_RING = int(os.environ.get("ACCORD_TEST_HOLD_RING", "-1"))


class ShmCoordinator(Coordinator):
    """Commands arrive through each client's ring, in any interleaving: the
    core's per-peer queues order them; this loop drains the rings, sleeps in
    select() on the sockets (wake-up bytes, arrivals, departures) only once
    every ring is empty, and beats."""

    server: ShmServer

    def __init__(self, server: ShmServer, owner_pid: int, window: float) -> None:
        super().__init__(server, owner_pid, window)
        # peer id -> the time of its last checkpoint committed to its ring (`settle`)
        self.settled_at: dict[int, float] = {}
        # (identity, pid) of a dead predecessor's client -> the errors of its
        # replayed writes, until it connects (`adopt_orphans`) or is gone.
        self.orphans: dict[tuple[int, int], list] = {}
        self.orphans_dropped: dict[tuple[int, int], int] = {}  # beyond HELD_ERRORS
        self._identified: set[int] = set()  # peers `adopt_orphans` has looked at
        # name -> (peer id, error) of fire-and-forget writes to it that
        # failed, held until it is next committed (see `report`).
        self.unposted: dict[str, list[tuple[int, tuple]]] = {}

    def run(self) -> None:
        last_beat = 0.0
        last_input = 0.0
        spare = True
        server = self.server
        while True:
            # Right after a reply, poll without sleeping for a moment: a
            # client waiting for a reply usually sends its next command
            # within tens of microseconds, and waking a sleeping process
            # costs about that.  Fire-and-forget writes alone do not keep it
            # spinning (on a busy machine that takes a core from the
            # writers): their producers wake it once a ring fills up a
            # little, and it then applies them in one batch.
            busy = time.monotonic() - last_input < SPIN_S
            if busy and spare:
                # Each poll while spinning leaves the CPU to whoever else
                # is runnable on it: often the very client whose next
                # command we wait for, polling for its reply on our core
                # (measured at load 5 on 2 cores: a blocking call 78 us
                # with this, 92 without; 316 without when the client polls
                # too).  With no core to spare clients do not poll, and a
                # yield would hand the core to any of the runnable others.
                os.sched_yield()
            timeout = 0 if busy else self._timeout()
            # Commands come through the rings; sleep in select() only once
            # every ring is drained (a client that appends then wakes us).
            if timeout and server.arm():
                timeout = 0
            left = server.poll(timeout)
            server.disarm()
            for peer in list(server.peers.values()):
                self.take(peer)
            for peer in left:
                self.take(peer)  # what it appended before it died is applied
                self.peer_left(peer)
            if self.orphans:
                self.adopt_orphans()  # before their next reply is sent
            replied = self.replied
            self.process()
            if self.replied != replied:
                last_input = time.monotonic()
            applied = time.monotonic()
            if _EXIT_AFTER_APPLIED and not (_EXIT_COMMITTED or _EXIT_SETTLED):
                self._exit_if_applied(_EXIT_AFTER_APPLIED)
            now = time.monotonic()
            self.commit_due(now)
            if _EXIT_AFTER_APPLIED and _EXIT_COMMITTED and not self.dirty:
                self._exit_if_applied(_EXIT_AFTER_APPLIED)
            self.settle(applied)
            if _EXIT_SETTLED:
                self._exit_if_settled(_EXIT_AFTER_APPLIED)
            self.expire_lock_waits(now)
            if now - last_beat >= HEARTBEAT_S / 2:
                last_beat = now
                server.heartbeat()
                # A caller polls for its reply only with a core to spare:
                # with more processes runnable than cores it would only
                # delay whoever would run instead (see _rings.Inbox.sleep).
                spare = spinning_pays()
                store(server.rings.buf, SPIN_PAYS, int(spare))
                if self.orphans:
                    self.log_orphans(alive_only=True)
                if os.getppid() != self.owner_pid:
                    break  # the owner died without closing: nobody can close now
        self.print_held()
        server.close()

    def settle(self, applied: float) -> None:
        """Let each ring reuse the space of commands that are in committed
        snapshots (only those: a restart replays what comes after).

        Every command of a peer up to the end of its last wholly applied
        drain (all of them once its queue is empty) was applied at
        `applied`; they are committed once every name dirty at that moment
        has been committed since -- once the oldest name still dirty became
        dirty after it (`dirty` keeps names in the order they became dirty).
        A peer's queue is seldom empty while several processes write to one
        object (its next command waits for another's), so the position of
        each drain counts as soon as what it brought is applied.  A producer
        waiting for room, or about to (`wants_room`), has the dirty names
        committed at once: a long commit window must not stall it."""
        server = self.server
        queues = self.queues
        oldest = next(iter(self.dirty.values()), None)
        for peers in (server.peers, server.retiring):
            for peer in list(peers.values()):
                if peer.id == _HOLD_RING:
                    continue
                checkpoints = peer.checkpoints
                batches = peer.batches
                queue = queues.get(peer.id)
                if queue is None:
                    batches.clear()
                    done, after = peer.drained, applied
                else:
                    applied_count = peer.received - len(queue)
                    done = None
                    while batches and batches[0][0] <= applied_count:
                        done = batches.popleft()[1]
                    # What follows `done` was drained (so applied) no
                    # earlier than the next drain (see _settled).
                    after = batches[0][2] if batches else applied
                if done is not None:
                    last = checkpoints[-1][1] if checkpoints else peer.committed
                    if done != last:
                        checkpoints.append((applied, done, after))
                if (
                    checkpoints
                    and oldest is not None
                    and oldest <= checkpoints[0][0]
                    and server.wants_room(peer)
                ):
                    for name in list(self.dirty):
                        self.commit(name)
                    oldest = None
                position = None
                while checkpoints and (oldest is None or oldest > checkpoints[0][0]):
                    _when, position, after = checkpoints.popleft()
                    self.settled_at[peer.id] = after
                if position is not None:
                    server.commit(peer, position)
        if server.snapshots.deleted:
            server.snapshots.forget_deleted(self._settled(applied))

    def _settled(self, now: float) -> float:
        """A time before which every applied command is in its ring's
        committed part (so a restart replays none of them).

        Every command of a peer beyond its last settled checkpoint was
        applied no earlier than that checkpoint's `after` (the time of the
        drain that brought it, or a later one); a peer with nothing
        unsettled holds nothing back.  (A recycled id
        inherits an earlier time: that only holds back more.)"""
        server = self.server
        settled = now
        for peers in (server.peers, server.retiring):
            for peer in peers.values():
                if peer.checkpoints or peer.committed != peer.drained or peer.id in self.queues:
                    settled = min(settled, self.settled_at.get(peer.id, 0.0))
        return settled

    def commit(self, name: str) -> None:
        # The snapshot records the writes to `name` it includes (a count of
        # its WHOLE slot), under the same version as its data.
        self.server.snapshots.includes = self.received[slot_of(name, WHOLE)]
        if self.unposted:
            # Before the commit: a death between the two has the error
            # told twice (posted, and by the replay), never lost.
            for peer_id, error in self.unposted.pop(name, ()):
                self._post(peer_id, error)
        super().commit(name)

    def replay(
        self,
        rings: dict[int, list[bytes]],
        includes: dict[str, int],
        writers: dict[int, tuple[int, int]] | None = None,
    ) -> int:
        """Apply the writes a dead predecessor's rings held that its last
        commits do not include, each once; commit them.  Returns how many.

        The error of one that fails is kept for the process that wrote it
        (`writers`: {ring: (identity, pid)}, see _rings.IDENTITY), which is
        told at its next sync point once it connects (`adopt_orphans`), as
        the dead coordinator would have told it; logged if it is gone.

        A write's ticket (the pending count of its object's WHOLE slot it
        took, the last of its waits) orders it: a snapshot of that name
        includes exactly the tickets below its `includes`.  Writes are
        applied in each client's order and, per slot, in ticket order
        (both follow the order they were issued in, so that always
        progresses).  Commands without writes (reads, barriers, locks) are
        not replayed: their callers were told CoordinatorLost.
        """
        queues: list[deque] = []
        tickets: dict[int, list[int]] = {}
        for index in sorted(rings):
            writer = (writers or {}).get(index, (0, 0))
            queue: deque = deque()
            for payload in rings[index]:
                try:
                    command = P.as_command(pickle.loads(payload))
                    writes, waits = command.writes, command.waits
                    name = command.name if writes else None
                except Exception:  # garbled: what its process sent after is still its own
                    log.warning("restart: skipping a garbled command of client %d", index)
                    continue
                if name is None:
                    continue
                ticket = waits[-1] if len(waits) >= 2 and waits[-2] == writes[0] else None
                if ticket is not None and ticket < includes.get(name, 0):
                    continue  # in its last commit already
                queue.append((writes[0], ticket, command, writer))
                if ticket is not None:
                    tickets.setdefault(writes[0], []).append(ticket)
            if queue:
                queues.append(queue)
        order = {slot: deque(sorted(found)) for slot, found in tickets.items()}
        count = 0
        while queues:
            progress = False
            for queue in queues:
                while queue:
                    slot, ticket, command, writer = queue[0]
                    if ticket is not None:
                        if order[slot][0] != ticket:
                            break
                        order[slot].popleft()
                    queue.popleft()
                    self._replay_one(command, writer)
                    count += 1
                    progress = True
            queues = [queue for queue in queues if queue]
            if queues and not progress:  # cannot happen (see above); never hang on it
                log.warning("restart: replayed writes out of their ticket order")
                slot, ticket, command, writer = queues[0].popleft()
                if ticket is not None:
                    order[slot].remove(ticket)
                self._replay_one(command, writer)
                count += 1
        for name in list(self.dirty):
            self.commit(name)
        self.log_orphans(alive_only=True)
        return count

    def _replay_one(self, command: P.Command, writer: tuple[int, int]) -> None:
        # As execute() does, but without crediting flags: the flags of this
        # incarnation start at zero, and no client waits for these writes.
        self._changed = core._UNKNOWN
        self._entry = None
        try:
            self.handlers[command.op](_REPLAYED, command)
        except Stop:
            raise
        except BaseException as exc:
            if command.reply_id:  # its caller was told CoordinatorLost (queued): result lost
                log.exception("restart: a replayed call on share.%s failed", command.name)
            else:  # a fire-and-forget write: its process is told
                errors = self.orphans.setdefault(writer, [])
                if len(errors) < core.HELD_ERRORS:
                    errors.append(pack_error(exc))
                else:  # counted, as `report` does
                    self.orphans_dropped[writer] = self.orphans_dropped.get(writer, 0) + 1
            self._changed = core._UNKNOWN
            self._entry = None
        name = command.name
        self.note_change(name, self._changed)
        self.note_entry(name, self._entry)
        if name not in self.dirty:
            self.dirty[name] = time.monotonic()
            self.dirty_slots[name] = set()

    def adopt_orphans(self) -> None:
        """Hand the errors of replayed writes to their processes as they
        connect: each is sent ahead of that process's next reply (flush, a
        blocking call, the barrier at its exit), as `report` does."""
        server = self.server
        buf = server.rings.buf
        for peer in server.peers.values():
            if peer.id in self._identified:
                continue
            identity = load(buf, server.rings.base(peer.id) + IDENTITY)
            if not identity:
                continue  # not said yet: it says so before its first command
            self._identified.add(peer.id)
            # The pid the kernel gives for its socket, not one it wrote.
            errors = self.orphans.pop((identity, peer.pid), None)
            if errors:
                for error in errors:
                    self.report(peer, error)
                dropped = self.orphans_dropped.pop((identity, peer.pid), 0)
                if dropped:
                    self.held_dropped[peer.id] = self.held_dropped.get(peer.id, 0) + dropped

    def log_orphans(self, alive_only: bool = False) -> None:
        """Log the errors of replayed writes whose process is gone (all of
        them unless `alive_only`: the share closes), as `report` does for a
        process that leaves without reading its errors."""
        for (identity, pid), errors in list(self.orphans.items()):
            if alive_only and identity and _client._pid_alive(pid, None):
                continue
            del self.orphans[(identity, pid)]
            dropped = self.orphans_dropped.pop((identity, pid), 0)
            why = "is gone" if alive_only else "did not connect again before the share closed"
            for error in errors:
                log.error(
                    "restart: a replayed fire-and-forget command of process %d failed, "
                    "and that process %s, so it never read the error:\n%s",
                    pid,
                    why,
                    error[1],
                )
            if dropped:
                log.error("restart: %s", core._dropped_message(dropped))

    def report(self, peer, error: tuple, name: str | None = None) -> None:
        """Keep the error of a fire-and-forget command where it outlives us:
        in its process's reply ring, which the process reads at its next
        sync point -- after a restart() too (see ShmClient.salvage).

        Posted there once restart() would no longer replay the command
        (the replay reports its own error): at the next commit of the
        object it wrote (`commit`), or at once for a command that writes
        none (never replayed).  Until then, and while the ring is half
        full, held here as the core does (sent ahead of the next reply)."""
        super().report(peer, error, name)
        held = self.held.get(peer.id)
        if not held or held[-1] is not error:
            return  # printed: the peer has left
        if name is None:
            self._post(peer.id, error)
        else:
            self.unposted.setdefault(name, []).append((peer.id, error))

    def _post(self, peer_id: int, error: tuple) -> None:
        """Move a held error to its peer's reply ring, if there is room."""
        held = self.held.get(peer_id)
        peer = self.server.peers.get(peer_id)
        if not held or peer is None:
            return
        for i, found in enumerate(held):
            if found is error:
                if self.server.post(peer, cloudpickle.dumps((0, P.ERROR, *error), 5)):
                    del held[i]
                    if not held and not self.held_dropped.get(peer_id):
                        del self.held[peer_id]
                return

    def finish_departure(self, peer_id: int) -> None:
        # Its errors still in its reply ring (older than those held here):
        # nobody will read them now.
        peer = self.peers.get(peer_id)
        if isinstance(peer, Peer):
            errors = self.server.unread_errors(peer)
            if errors:
                core._print_lost(peer_id, errors, 0)
        super().finish_departure(peer_id)

    def print_held(self) -> None:
        self.log_orphans()
        super().print_held()

    def _exit_if_settled(self, count: int) -> None:
        # Every command committed, and every ring's tail past it.
        peers = self.server.peers.values()
        if not (self.dirty or self.queues) and all(p.committed == p.drained for p in peers):
            self._exit_if_applied(count)

    def _exit_if_applied(self, count: int) -> None:
        server = self.server
        queued = sum(len(queue) for queue in self.queues.values())
        if sum(peer.received for peer in server.peers.values()) - queued >= count:
            os._exit(70)

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

    def peer_left(self, peer: Peer) -> None:
        self._identified.discard(peer.id)  # its id may be handed out again
        self.peers[peer.id] = peer  # to be dropped once its queue is done
        super().peer_left(peer)


class _Replayed:
    """The peer of a replayed command: its process is told nothing."""

    id = -1


_REPLAYED = _Replayed()


def serve(config: dict, extra: bytes, ready) -> None:
    """Coordinate the share `config` describes until it is closed (see
    `_process.coordinator_main`, which runs it)."""
    _client._clients.coordinating = config["stem"]
    # After a restart, the owner sends what our predecessor left behind the
    # configuration: its last committed state (pickled snapshots), the
    # writes each includes, and the entries of its rings.
    restored, includes, rings, writers = (
        pickle.loads(extra) if config.get("restore") else ({}, {}, {}, {})
    )
    server = ShmServer(config["stem"], config["socket_path"], bytes.fromhex(config["key"]))
    coordinator = ShmCoordinator(server, config["owner_pid"], config["window"])
    try:
        if _RESTART_FAILS and config.get("restore"):
            os._exit(70)
        coordinator.restore(restored)
        if rings:
            replayed = coordinator.replay(rings, includes, writers)
            if replayed:
                log.info("restart: %d write(s) replayed from the rings", replayed)
        ready()  # only now may anyone read or connect
        coordinator.run()
    except Stop:
        coordinator.print_held()
        server.close()
    except BaseException:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        server.close()
        raise


def main() -> None:
    coordinator_main(serve)


if __name__ == "__main__":
    main()
