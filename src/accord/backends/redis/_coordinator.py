"""The coordinator of a redis share.

The same `Coordinator` as for shared memory (every handler, the mirror, the
flags bookkeeping), with three differences:

* commands come from one Redis stream and run strictly in its order (their
  write flags were raised in that same order, so every wait is met on
  arrival);
* a commit writes *every* changed object, the applied flags and the stream
  position in one atomic script: the committed state is always exactly
  "every command up to that position", so a coordinator that takes over
  continues from the stream after it and no applied write is lost;
* a lease (a key with a short TTL, renewed by a heartbeat thread) says that
  a coordinator holds the share; whoever takes it raises the share's epoch,
  and a commit under a stale epoch is refused.

Run as ``python -m accord.backends.redis._coordinator`` by `Share` (config as
JSON on stdin, like the shm coordinator), or as a service with
`run_service` (`accord coordinator URL --name NAME`).
"""

from __future__ import annotations

import logging
import os
import pickle
import threading
import time
from typing import Any

import redis
import redis.exceptions

from ..._core import _protocol as P
from ..._core._coordinator import OrderedCoordinator, Stop
from ..._core._errors import CommandQuarantined, ShareExists, ShareNotFound
from ..._core._remote import pack_error
from .._process import coordinator_main
from . import _client
from ._client import RedisInfo, connect_redis
from ._server import RedisServer, TakenOver, stream_id

LEASE_S = 1.0  # a coordinator silent for this long is presumed dead
BEAT_S = 0.1
LINGER_S = 0.0005
LINGER_BATCH = 64
# A command whose application killed this many coordinators one after the
# other (each applying it alone) is skipped with an error to its sender.
QUARANTINE_AFTER = 2
_REDIS_DOWN = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError)

log = logging.getLogger("accord.backends.redis")


class RedisCoordinator(OrderedCoordinator):
    server: RedisServer

    def __init__(self, server: RedisServer, owner_pid: int | None, window: float) -> None:
        super().__init__(server, owner_pid or 0, window)
        self.last_id = "0-0"
        self.stopping: str | None = None  # why the loop must end
        # Replays: each client's last sequence number applied (a command
        # copied back into the stream has an old one), and those applied
        # since the last commit (committed with it).
        self.sequences: dict[int, int] = {}
        self.unsaved: dict[int, int] = {}
        self.sequence = 0  # of the command being run
        self.sequence_of: dict[str, tuple[int, int]] = {}  # position -> (client, seq)
        # Commands that killed coordinators: applied one at a time up to
        # `careful_until` (a predecessor died in that batch); `quarantined`
        # is skipped, after `attempts` coordinators died applying it.
        self.careful_until = (0, 0)
        self.suspect: tuple[str, int] | None = None  # (position, coordinators it killed)

    # -- state -------------------------------------------------------------------

    def load(self) -> list[str]:
        """Start from the committed state in Redis; names that cannot be
        restored (their classes cannot be imported here) are returned."""
        committed = self.server.load()
        objects, applied, position = committed.objects, committed.applied, committed.position
        lost = list(committed.lost)
        self.sequences = dict(committed.sequences)
        if committed.busy is not None:
            mode, attempts, busy_at = committed.busy
            if stream_id(busy_at) > stream_id(position):
                # The predecessor died applying these commands (or before it
                # could commit them): apply them one at a time, recording
                # each before, so that a command that kills coordinators
                # is found.
                self.careful_until = stream_id(busy_at)
                if mode == "S":
                    self.suspect = (busy_at, attempts)
        for name, ((generation, is_value), data) in objects.items():
            try:
                value = pickle.loads(data)
            except Stop:
                raise
            except BaseException as exc:
                log.error("cannot restore share.%s: %r", name, exc)
                lost.append(name)
                continue
            self.mirror[name] = value
            self.types[name] = P.Typed(type(value), P.Kind(generation, is_value))
        for slot, count in applied.items():
            self.received[slot] = count
        if position:
            self.last_id = self.position = position
        return lost

    # -- the loop ----------------------------------------------------------------

    def run(self) -> None:
        beat = threading.Thread(target=self._beat, name="accord-lease", daemon=True)
        beat.start()
        while self.stopping is None:
            # Block at least 1 ms: polling Redis in a loop would slow the
            # very clients whose commands we wait for.
            block_ms = max(1, int(min(self._timeout(), BEAT_S) * 1000))
            try:
                entries = self.server.read(self.last_id, block_ms)
            except _REDIS_DOWN:
                self._wait_for_redis()
                continue
            if entries:
                self.last_id = entries[-1][0]
                self.admit(entries)
            now = time.monotonic()
            self.commit_due(now)
            self.expire_lock_waits(now)
            waiting = self.server.has_replies()
            self._flush()
            if entries and not waiting and len(entries) < LINGER_BATCH:
                # Only fire-and-forget writes came, a few at a time: let more
                # gather before the next read.  Waking for each one would
                # take the CPU from the processes sending them (a reader
                # that then needs a commit waits this long at most).
                time.sleep(LINGER_S)

    def admit(self, entries) -> None:
        """Run the commands read from the stream, replays left out."""
        admitted = []
        sequences = self.sequences
        for position, client_id, sequence, message in entries:
            if message is not None:
                if sequence <= sequences.get(client_id, 0):
                    log.warning(
                        "ignored a replayed command (client %d, sequence %d, already applied)",
                        client_id,
                        sequence,
                    )
                    message = None
                else:
                    sequences[client_id] = sequence
                    self.sequence_of[position] = (client_id, sequence)
            admitted.append((position, client_id, message))
        if self.careful_until > (0, 0):
            for entry in admitted:
                if stream_id(entry[0]) <= self.careful_until:
                    attempts = (
                        self.suspect[1] if self.suspect and self.suspect[0] == entry[0] else 0
                    )
                    self.server.mark_busy("S", attempts + 1, entry[0])
                else:
                    self.careful_until = (0, 0)
                    self.server.mark_busy("B", 0, admitted[-1][0])
                    self.inbox.extend(admitted[admitted.index(entry) :])
                    self.process()
                    return
                self.inbox.append(entry)
                self.process()
            return
        self.server.mark_busy("B", 0, admitted[-1][0])
        self.inbox.extend(admitted)
        self.process()

    def execute(self, peer, command: P.Command) -> None:
        seq = self.sequence_of.pop(self.position, None)
        if seq is not None:
            self.unsaved[seq[0]] = seq[1]
        self.sequence = seq[1] if seq is not None else 0
        suspect = self.suspect
        if suspect is not None and suspect[0] == self.position:
            self.suspect = None
            if suspect[1] >= QUARANTINE_AFTER:
                self.quarantine(peer, command, suspect[1])
                return
        super().execute(peer, command)

    def report(self, peer, error: tuple[Any, ...], name: str | None = None) -> None:
        # With the command's sequence number: the client raises each error
        # of a queued command once, and refuses an old one copied back.
        super().report(peer, (*error, self.sequence), name)

    def quarantine(self, peer, command: P.Command, deaths: int) -> None:
        """Skip a command that killed `deaths` coordinators: its sender gets
        an error, its write flags are credited (nobody waits for it)."""
        error = CommandQuarantined(
            f"this command (op {command.op}) was skipped: {deaths + 1} coordinators of "
            f"{self.server.info.where()} in a row died while applying it (for example "
            "os._exit() or a crash in a C extension in a method or apply() function)"
        )
        log.error("%s", error)
        if command.writes:
            self.credit(None, command.writes)
        if command.reply_id:
            self.reply(peer, command.reply_id, P.ERROR, pack_error(error))
        else:
            self.report(peer, pack_error(error))

    def _flush(self) -> None:
        while True:
            try:
                self.server.flush()
                return
            except _REDIS_DOWN:
                if self.stopping is not None:
                    return
                self._wait_for_redis()

    def _wait_for_redis(self) -> None:
        time.sleep(BEAT_S)  # pacing: Redis is down or restarting

    def _beat(self) -> None:
        r = connect_redis(self.server.info.url, self.server.info.timeout)
        try:
            while self.stopping is None:
                try:
                    result = self.server.beat(r)
                except _REDIS_DOWN:
                    result = 1  # keep trying; the lease says the rest
                except Exception as exc:  # a bug must not pass for a live coordinator
                    self.stopping = f"heartbeat failed: {exc!r}"
                    break
                if result == 0:
                    self.stopping = "the share was closed (its keys were deleted)"
                elif result == -1:
                    self.stopping = "another coordinator took the share over"
                elif self.owner_pid and os.getppid() != self.owner_pid:
                    self.stopping = "the process that created the share exited"
                time.sleep(BEAT_S)
        finally:
            r.close()

    # -- commits: all at once ------------------------------------------------------

    def commit(self, name: str) -> None:
        if name not in self.dirty:
            return  # committed with the others already
        for each in list(self.dirty):
            super().commit(each)
        self.server.committed_at(self.position, self.unsaved)
        self.unsaved = {}

    def commit_due(self, now: float) -> None:
        for name, since in self.dirty.items():
            if now - since >= self._window(name):
                self.commit(name)
                return

    def stop(self) -> None:
        """Commit what is pending and give the lease back (best effort)."""
        self.stopping = self.stopping or "stopped"
        try:
            if self.dirty:
                self.commit(next(iter(self.dirty)))
            self.server.flush()
            self.server.release()
        except Exception as exc:  # Redis gone, or the share taken: nothing to keep
            log.error("coordinator stopping: %r", exc)
        self.server.close()


def serve(
    info: RedisInfo,
    window: float = 0.002,
    owner_pid: int | None = None,
    wait: float | None = None,
    ready=None,
) -> str:
    """Coordinate the share `info` until it is closed; return why it stopped.

    Waits for the lease (at most `wait` seconds, None: for ever), so running
    it beside a live coordinator makes a standby that takes over when that
    one dies.  `ready(lost_names)` is called once it holds the share.
    """
    _client._clients.coordinating = info.stem
    server = RedisServer(info, LEASE_S)
    deadline = None if wait is None else time.monotonic() + wait
    while True:
        epoch = server.acquire()
        if epoch > 0:
            break
        if epoch == -2:
            server.close()
            raise ShareNotFound(f"no {info.where()} exists (closed, or expired)")
        if deadline is not None and time.monotonic() > deadline:
            server.close()
            raise ShareExists(f"another coordinator holds {info.where()}")
        time.sleep(BEAT_S)  # polling the lease of a live coordinator
    coordinator = RedisCoordinator(server, owner_pid, window)
    try:
        lost = coordinator.load()
        if ready is not None:
            ready(lost)
        coordinator.run()
    except TakenOver as exc:
        coordinator.stopping = str(exc)
    finally:
        coordinator.stop()
    return coordinator.stopping or "stopped"


def main() -> None:
    coordinator_main(_serve)


def _serve(config: dict, extra: bytes, ready) -> None:
    info = RedisInfo(
        config["url"],
        config["name"],
        bytes.fromhex(config["key"]),
        config["timeout"],
        config["ttl"],
    )
    serve(info, config["window"], config["owner_pid"], wait=config["wait"], ready=ready)


if __name__ == "__main__":
    main()
