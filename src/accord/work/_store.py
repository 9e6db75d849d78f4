"""The transactions of a work queue: register items, claim, finish, reap, reset.

Each method is one short transaction.  On SQLite it starts with ``BEGIN
IMMEDIATE`` (see `_db`), so transactions of different workers run one after
the other and a claim cannot hand out an item another claim is handing out.
On PostgreSQL the claim locks the row it picks with ``FOR UPDATE SKIP
LOCKED``: concurrent claims pick different rows without waiting for each
other, and registration of one queue's items is serialised by an advisory
lock.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from itertools import islice

from sqlalchemy import (
    Column,
    Connection,
    Engine,
    Float,
    Integer,
    MetaData,
    String,
    Table,
    and_,
    bindparam,
    case,
    delete,
    func,
    insert,
    null,
    or_,
    select,
    update,
)

from . import _history
from ._db import reading
from ._errors import InvalidWork
from ._schema import Id, create, deps, history, is_, items, queues, workers

log = logging.getLogger("accord.work")

PENDING, RUNNING, COMPLETED, FAILED = "pending", "running", "completed", "failed"
STATUSES = (PENDING, RUNNING, COMPLETED, FAILED)

# Rows per INSERT: well under SQLite's limit of 32766 bound parameters.
_BATCH = 500

# The bound list of item ids of a `Prepared` statement.
IDS = "b_ids"


@dataclasses.dataclass(frozen=True)
class Entry:
    """An item as registered: its key and what the scheduler needs to know."""

    key: str
    position: int
    requirements: str = ""
    fingerprint: str | None = None
    deps: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True)
class Claimed:
    item_id: int
    key: str
    fingerprint: str | None


WAIT = "wait"  # nothing to claim now, but running items may finish or be reclaimed
DONE = "done"  # nothing this worker can claim, and nothing running


@dataclasses.dataclass(frozen=True)
class Stopped:
    """The failure policy is "stop" and these items failed."""

    failures: list[tuple[str, str | None]]


# The items one worker skips, on its claim connection only (see Store.connect).
skipped = Table("accord_skipped", MetaData(), Column("id", Id, primary_key=True))
# In Connection.info, which lives as long as the database connection: whether
# that table has rows, and whether it exists (made when first needed: on
# PostgreSQL a temporary table is rows in the catalog, on SQLite a file).
_SKIPPING = "accord_skipping"
_SKIP_TABLE = "accord_skip_table"


def _skip(conn: Connection, ids: Sequence[int]) -> None:
    """Add these items to the ones this connection's claims skip."""
    if not conn.info.get(_SKIP_TABLE):
        conn.exec_driver_sql(
            f"CREATE TEMPORARY TABLE IF NOT EXISTS {skipped.name} (id BIGINT PRIMARY KEY)"
        )
        conn.info[_SKIP_TABLE] = True
    for chunk in batched(ids, _BATCH):
        conn.execute(insert(skipped), [{"id": i} for i in chunk])
    conn.info[_SKIPPING] = True


def batched(rows: Iterable, n: int) -> Iterable[list]:
    """Lists of up to n rows (itertools.batched is Python 3.12)."""
    it = iter(rows)
    while chunk := list(islice(it, n)):
        yield chunk


def advisory_key(*parts: object) -> int:
    """A signed 64-bit number for pg_advisory_lock, from a name."""
    digest = hashlib.blake2b(repr(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


class Store:
    """One queue (or graph) in one database, as seen by one worker process."""

    def __init__(self, engine: Engine, name: str, kind: str) -> None:
        self.engine = engine
        self.name = name
        self.kind = kind
        self.postgres = engine.dialect.name == "postgresql"
        with engine.begin() as conn:
            create(conn)
            row = conn.execute(
                select(queues.c.id, queues.c.kind).where(queues.c.name == name)
            ).first()
            if row is None:
                self.queue_id = conn.execute(
                    insert(queues).values(name=name, kind=kind, created_at=time.time())
                ).inserted_primary_key[0]  # pyright: ignore[reportOptionalSubscript]
            elif row.kind != kind:
                other = "WorkQueue" if row.kind == "queue" else "TaskGraph"
                raise InvalidWork(
                    f"the name {name!r} is already used by a {other} in this database; "
                    "give this one another name"
                )
            else:
                self.queue_id = row.id
        # Set by the worker that iterates (see _queue._Work).
        self.max_retries = 0
        self.retry_failed = False
        self.stop_on_failure = False
        self.reap_interval = 1.0
        self.accepts: Callable[[str, str, str | None], bool] = lambda key, req, fp: True
        self.requirement_filter: list[str] | None = None
        self.keys_given: int | None = None  # how many keys the worker's list has
        # Items at or before this position were checked against `accepts`
        # when the claim connection was made (see connect): only a queue's
        # items registered since need the check again.
        self._checked_up_to = -1
        self._registered_up_to = -1
        self._next_reap = 0.0
        # Compiled here, not at first use: that is inside a transaction, and
        # on SQLite every other worker would wait the milliseconds it takes.
        self._sql = _Statements(engine.dialect, self.postgres)

    def _mine(self):
        return items.c.queue_id == self.queue_id

    # -- registration -------------------------------------------------------

    def register(self, entries: Sequence[Entry]) -> list[str]:
        """Insert the entries that are missing; invalidate changed fingerprints.

        Returns the keys of completed items that were invalidated: those
        whose fingerprint changed, and every completed item downstream.
        """
        now = time.time()
        with self.engine.begin() as conn:
            if self.postgres:
                conn.execute(
                    select(func.pg_advisory_xact_lock(advisory_key("queue", self.queue_id)))
                )
            existing = {
                row.key: row
                for row in conn.execute(
                    select(
                        items.c.id,
                        items.c.key,
                        items.c.status,
                        items.c.fingerprint,
                        items.c.position,
                    ).where(self._mine())
                )
            }
            new = [e for e in entries if e.key not in existing]
            # Items another worker's list did not have go after all of its
            # items, in this list's order.
            after = 1 + max((row.position for row in existing.values()), default=-1)
            # Every item there is now is at or before this position: see connect.
            self._registered_up_to = max([after - 1] + [after + e.position for e in new])
            for chunk in batched(new, _BATCH):
                conn.execute(
                    insert(items),
                    [
                        {
                            "queue_id": self.queue_id,
                            "key": e.key,
                            "position": after + e.position,
                            "status": PENDING,
                            "unmet": 0,
                            "requirements": e.requirements,
                            "fingerprint": e.fingerprint,
                            "kills": 0,
                            "updated_at": now,
                        }
                        for e in chunk
                    ],
                )
            if self.kind != "graph":
                return []
            ids = dict(conn.execute(select(items.c.key, items.c.id).where(self._mine())).all())
            rewired = self._sync_deps(conn, entries, ids)
            invalidated = self._invalidate_changed(conn, entries, existing, ids, now)
            if new or rewired or invalidated:
                self._count_unmet(conn)
            return invalidated

    def _sync_deps(self, conn: Connection, entries: Sequence[Entry], ids: dict) -> bool:
        """Make the stored edges of these entries their ``deps``; True if any changed.

        Not only new tasks': a task registered by an earlier run may have
        gained or lost dependencies since, and must wait for its deps as
        they are now, not as they were.
        """
        wanted = {(ids[e.key], ids[d]) for e in entries for d in e.deps}
        mine = {ids[e.key] for e in entries}
        stored = {
            (row.item_id, row.dep_id)
            for row in conn.execute(
                select(deps.c.item_id, deps.c.dep_id)
                .join(items, items.c.id == deps.c.item_id)
                .where(self._mine())
            )
        }
        # Edges of tasks only other workers' graphs have are theirs to keep.
        stale = [(i, d) for i, d in stored - wanted if i in mine]
        added = sorted(wanted - stored)
        for chunk in batched(stale, _BATCH):
            conn.execute(
                delete(deps).where(
                    deps.c.item_id == bindparam("b_item"), deps.c.dep_id == bindparam("b_dep")
                ),
                [{"b_item": i, "b_dep": d} for i, d in chunk],
            )
        for chunk in batched(added, _BATCH):
            conn.execute(insert(deps), [{"item_id": i, "dep_id": d} for i, d in chunk])
        return bool(stale or added)

    def _invalidate_changed(self, conn, entries, existing, ids, now) -> list[str]:
        changed = [
            e
            for e in entries
            if e.key in existing
            and e.fingerprint is not None
            and existing[e.key].fingerprint != e.fingerprint
        ]
        if not changed:
            return []
        conn.execute(
            update(items)
            .where(items.c.id == bindparam("b_id"))
            .values(fingerprint=bindparam("b_fp"), updated_at=now),
            [{"b_id": ids[e.key], "b_fp": e.fingerprint} for e in changed],
        )
        roots = [e.key for e in changed if existing[e.key].status == COMPLETED]
        fingerprints = {e.key: e.fingerprint for e in entries}
        # Downstream tasks running now work from the old results too: they
        # go back to the queue (and wait for their deps again); the worker
        # running one finds it taken away when it finishes, and its outcome
        # is not recorded.  Failed ones may have failed on the old results:
        # they are tried again with the new.
        doomed = [
            key
            for key in downstream(roots, entries)
            if key in existing and existing[key].status in (COMPLETED, RUNNING, FAILED)
        ]
        for chunk in batched(doomed, _BATCH):
            conn.execute(
                update(items)
                .where(items.c.id.in_([ids[k] for k in chunk]))
                # A new run of the task: its retries start again, as after a reset.
                .values(status=PENDING, worker_id=None, error=None, kills=0, updated_at=now)
            )
        _history.record(
            conn,
            (
                {
                    "item_id": ids[k],
                    "status": "invalidated",
                    "at": now,
                    "fingerprint": fingerprints.get(k, existing[k].fingerprint),
                }
                for k in doomed
            ),
        )
        return doomed

    def _count_unmet(self, conn: Connection) -> None:
        count_unmet(conn, self.queue_id)

    # -- workers ------------------------------------------------------------

    def add_worker(
        self, name: str, host: str, pid: int, labels: Iterable[str], timeout: float, cap: int | None
    ) -> int | None:
        """Register a worker; None if ``cap`` workers are already active."""
        now = time.time()
        with self.engine.begin() as conn:
            if self.postgres:
                conn.execute(
                    select(func.pg_advisory_xact_lock(advisory_key("workers", self.queue_id)))
                )
            self._reap(conn, now)
            self._next_reap = now + self.reap_interval  # not again in the first claim
            if cap is not None:
                active = conn.execute(
                    select(func.count())
                    .select_from(workers)
                    .where(workers.c.queue_id == self.queue_id, workers.c.status == "active")
                ).scalar_one()
                if active >= cap:
                    return None
            joined = self._sql.join(
                conn,
                b_queue=self.queue_id,
                b_name=name,
                b_host=host,
                b_pid=pid,
                b_labels=",".join(sorted(labels)),
                b_now=now,
                b_timeout=timeout,
            )
            return joined.scalar_one() if self.postgres else joined.lastrowid

    def beat(self, worker_id: int, given_up: Callable[[], None] = lambda: None) -> bool:
        """Record a heartbeat; False if others had already declared this worker dead.

        A worker given up comes back to life; one whose loop ended (its
        last claim found nothing left, and stopped it) stays stopped: the
        heartbeat may beat once more before its thread is stopped.
        ``given_up`` is called before the revival commits: once anyone can
        see this worker active again, it knows its items went back.
        """
        with self.engine.begin() as conn:
            alive = conn.execute(
                update(workers)
                .where(workers.c.id == worker_id, workers.c.status == "active")
                .values(heartbeat_at=time.time())
            ).rowcount
            if alive:
                return True
            revived = conn.execute(
                update(workers)
                .where(workers.c.id == worker_id, workers.c.status == "killed")
                .values(status="active", heartbeat_at=time.time())
            ).rowcount
            if revived:
                given_up()
        return not revived

    def _reap(self, conn: Connection, now: float) -> None:
        """Declare workers without a recent heartbeat dead; re-queue their items."""
        dead = self._sql.silent(conn, b_queue=self.queue_id, b_now=now).all()
        if not dead:
            return
        silent = _silent(now)
        names = dict(dead)
        # The condition again, not only the ids: on PostgreSQL a heartbeat
        # committed since the select is seen by the UPDATE (which re-reads
        # the rows it locks), and a worker that just beat is not dead.
        kill = update(workers).where(workers.c.id.in_(names), silent).values(status="killed")
        if self.postgres:
            # Two workers may reap the same dead one at once; the second
            # waits for the first's row locks, finds it no longer active and
            # must not re-queue its items again.
            names = {i: names[i] for i in conn.execute(kill.returning(workers.c.id)).scalars()}
            if not names:
                return
        else:
            conn.execute(kill)  # transactions run one at a time on SQLite
        self._requeue(conn, names, now, "stopped heartbeating")

    def _requeue(self, conn: Connection, names: dict, now: float, why: str) -> None:
        """Put the items these workers (id: name) run back in the queue, or fail them."""
        orphans = conn.execute(
            select(items.c.id, items.c.key, items.c.kills, items.c.fingerprint, items.c.worker_id)
            .where(items.c.worker_id.in_(names), items.c.status == RUNNING)
            # Locked until commit (PostgreSQL; SQLite runs one transaction at
            # a time anyway): a worker that was only slow and finishes its
            # item now waits, then finds it re-queued, instead of completing
            # it in between and having its completion overwritten here.
            .with_for_update()
        ).all()
        changes, events = [], []
        for item in orphans:
            kills = item.kills + 1
            gone = f"worker {names[item.worker_id]} {why}"
            give_up = kills > self.max_retries
            error = f"{gone} {kills} times (max_retries={self.max_retries})" if give_up else None
            log.warning("%s: item %r re-queued: %s", self.name, item.key, gone)
            changes.append(
                {
                    "b_id": item.id,
                    "b_status": FAILED if give_up else PENDING,
                    "b_kills": kills,
                    "b_error": error,
                }
            )
            base = {
                "item_id": item.id,
                "worker_id": item.worker_id,
                "at": now,
                "fingerprint": item.fingerprint,
            }
            events.append({**base, "status": "killed", "error": gone})
            if give_up:
                events.append({**base, "status": FAILED, "error": error})
        if changes:
            conn.execute(
                update(items)
                .where(items.c.id == bindparam("b_id"))
                .values(
                    status=bindparam("b_status"),
                    kills=bindparam("b_kills"),
                    error=bindparam("b_error"),
                    updated_at=now,
                ),
                changes,
            )
        _history.record(conn, events)

    # -- claiming -----------------------------------------------------------
    #
    # A worker claims with its own connection (`connect`), and the hot
    # statements are compiled once (`Prepared`): building and cache-keying a
    # Core statement costs SQLAlchemy 30-60 µs per execute, several times
    # what SQLite needs to run it.

    def connect(self) -> Connection:
        """The connection one iterating worker claims and finishes with.

        Items this worker never takes (``accepts`` says no: mostly other
        workers' keys) are listed once, up front, in a temporary table of
        this connection that claims skip in SQL; items that turn out not to
        be its own later (registered since, or re-fingerprinted) are added
        as claims meet them.  Skipping each one as claims met it cost a
        query, all in one claim transaction holding the lock: minutes for a
        worker whose list is one of many thousand-item chunks.
        """
        conn = self.engine.connect()
        try:
            # Only the temporary table is written: no write lock (SQLite).
            with reading(conn):
                if conn.info.get(_SKIP_TABLE):
                    # The pool handed back a connection with last loop's rows.
                    conn.execute(delete(skipped))
                conn.info[_SKIPPING] = False
                total = conn.execute(select(func.count()).where(self._mine())).scalar_one()
                # A queue of exactly this worker's keys (the usual case) has
                # none of others'; labels are filtered in SQL anyway.
                if self.keys_given is None or total > self.keys_given:
                    everything = select(
                        items.c.id,
                        items.c.key,
                        items.c.requirements,
                        items.c.fingerprint,
                        items.c.position,
                    ).where(self._mine())
                    rows = conn.execute(everything).all()
                    others = [
                        row.id
                        for row in rows
                        if not self.accepts(row.key, row.requirements, row.fingerprint)
                    ]
                    if others:
                        _skip(conn, others)
                    last = max((row.position for row in rows), default=-1)
                else:
                    last = self._registered_up_to  # no item but this worker's since
                # Items registered later go after every item there is now
                # (see register); a graph's fingerprints may change anyway.
                self._checked_up_to = -1 if self.kind == "graph" else last
        except BaseException:
            conn.close()
            raise
        return conn

    def claim(
        self,
        conn: Connection,
        worker_id: int,
        finished: Sequence[tuple[Claimed, str, str | None]] = (),
        want: int = 1,
        release: Sequence[Claimed] = (),
        recovering: bool = False,
        unless_fewer: int = 0,
    ) -> list[Claimed] | Stopped | str:
        """Record outcomes, hand back items, and claim up to ``want`` more, in one transaction.

        ``unless_fewer``: claim ``want`` only if at least that many items
        are ready, else one (a first batch, before any item was timed).
        An item handed out again after a death or a failure (``kills``) is
        claimed alone.  ``finished``: (item, status, error) of items this worker ran;
        ``release``: items it claimed but will not run (back to the queue
        as they were).  ``recovering``: the last claim's transaction may have
        committed without this worker learning it (the connection broke):
        items it does not know it holds are handed back too.  Returns the
        claimed items (in order), `WAIT`, `DONE` (the worker is then
        stopped, as by `stop_worker`), or `Stopped`.
        """
        now = time.time()
        sql = self._sql
        # Inside the transaction, every other worker waits for this one (on
        # SQLite): only SQL there, and set-based for a batch; the rest of
        # the Python work is done before and after.
        released = [c.item_id for c in release]
        known = [c.item_id for c, *_ in finished] if recovering else []
        with conn.begin():
            self._finish_all(conn, worker_id, finished, now)
            if released:
                self._release(conn, worker_id, released, now)
            if recovering:
                self._release_unknown(conn, worker_id, known, now)
            if now >= self._next_reap:
                self._reap(conn, now)
                self._next_reap = now + self.reap_interval
            if self.stop_on_failure:
                failures = conn.execute(
                    select(items.c.key, items.c.error)
                    .where(self._mine(), is_(FAILED))
                    .order_by(items.c.position)
                    .limit(5)
                ).all()
                if failures:
                    return Stopped([tuple(f) for f in failures])
            if want > 1 and unless_fewer and not self._at_least(conn, unless_fewer):
                want = 1
            taken = self._take(conn, worker_id, want, now)
            if not taken:
                if self.postgres:
                    # Rows other claims had locked were skipped, not absent.
                    busy = or_(is_(RUNNING), self._ready(conn))
                    waiting = conn.execute(
                        select(items.c.id).where(self._mine(), busy).limit(1)
                    ).first()
                else:
                    waiting = sql.busy(conn, b_queue=self.queue_id).first()
                if waiting:
                    return WAIT
                # The end of this worker's loop, recorded here rather than
                # in a transaction of its own (each is one more wait for
                # the write lock, for every worker): it holds no item, and
                # its outcomes are recorded above.
                sql.stopped(conn, b_worker=worker_id, b_now=now)
                return DONE
        taken.sort(key=lambda r: r.position)
        return [Claimed(r.id, r.key, r.fingerprint) for r in taken]

    def _take(self, conn: Connection, worker_id: int, want: int, now: float) -> list:
        """Claim up to ``want`` of the next items this worker accepts: their rows."""
        sql = self._sql
        while rows := self._next(conn, want):
            if rows[-1].position <= self._checked_up_to:
                taken = list(rows)  # in position order: all checked at connect
            else:
                taken = [r for r in rows if self.accepts(r.key, r.requirements, r.fingerprint)]
            if len(taken) < len(rows):
                # Items only other workers were given, ones this worker
                # lacks the labels for, or tasks whose fingerprint is
                # not the one this worker would run them with (a newer
                # worker changed it): never look at them again.
                _skip(conn, [r.id for r in rows if r not in taken])
            if not taken:
                continue
            # An item given out again after its worker died (or, with
            # retry_failed, after it failed) goes alone: one that kills
            # every worker that runs it must not take the rest of a batch
            # with it to `max_retries`.
            for i, r in enumerate(taken):
                if r.kills:
                    del taken[max(i, 1) :]
                    break
            if sql.revive(conn, b_worker=worker_id, b_now=now).rowcount:
                # Others had given this worker up (it was suspended, or
                # declared itself dead in a claim after a freeze).  It
                # is active again before it owns an item: reaping looks
                # only at active workers, so an item claimed as "killed"
                # would stay running forever if this worker then died.
                log.warning("%s: this worker had been presumed dead; active again", self.name)
            if len(taken) == 1:
                [r] = taken
                sql.take(conn, b_id=r.id, b_worker=worker_id, b_now=now)
                sql.event(conn, r.id, RUNNING, worker_id, now, r.fingerprint)
            else:
                ids = [r.id for r in taken]
                sql.take_all(conn, ids, b_worker=worker_id, b_now=now)
                sql.events_of(conn, ids, RUNNING, worker_id, now)
            return taken
        return []

    def _at_least(self, conn: Connection, n: int) -> bool:
        """Whether ``n`` items are ready (of any worker's: a guess, in one index scan)."""
        return self._sql.beyond(conn, b_queue=self.queue_id, b_skip=n - 1).first() is not None

    def peek(self, conn: Connection) -> bool:
        """Whether a claim may find an item now, or the end: read without the write lock.

        For a worker waiting for others' items to finish: on SQLite a claim
        takes the write lock, which every working worker then waits for;
        this read takes none.
        """
        with reading(conn):
            ready = select(items.c.id).where(self._mine(), self._ready(conn)).limit(1)
            if conn.execute(ready).first() is not None:
                return True
            return self._sql.busy(conn, b_queue=self.queue_id).first() is None

    def _release(self, conn: Connection, worker_id: int, ids: list[int], now: float) -> None:
        """Hand back items this worker claimed and never started (history: ``released``)."""
        mine = and_(items.c.id.in_(ids), items.c.worker_id == worker_id, items.c.status == RUNNING)
        query = select(items.c.id, items.c.fingerprint).where(mine)
        if self.postgres:
            query = query.with_for_update()
        rows = conn.execute(query).all()
        if not rows:
            return
        back = [r.id for r in rows]
        conn.execute(
            update(items).where(items.c.id.in_(back)).values(status=PENDING, updated_at=now)
        )
        self._sql.events_of(conn, back, "released", worker_id, now)

    def _release_unknown(self, conn: Connection, worker_id: int, known: list[int], now: float):
        held = (
            conn.execute(
                select(items.c.id).where(
                    items.c.worker_id == worker_id,
                    items.c.status == RUNNING,
                    items.c.id.not_in(known),
                )
            )
            .scalars()
            .all()
        )
        if held:
            log.warning(
                "%s: %d items claimed in a transaction whose answer was lost go back",
                self.name,
                len(held),
            )
            self._release(conn, worker_id, list(held), now)

    def _finish_all(self, conn, worker_id, finished, now) -> None:
        """Record the outcomes of items this worker ran.

        The items of a queue completed (the usual case) go in three
        statements whatever their number: which are still this worker's,
        one UPDATE and one history INSERT … SELECT, each over the whole
        set.  Anything else item by item (see `_finish`).
        """
        bulk = [
            c.item_id for c, status, _ in finished if status == COMPLETED and self.kind == "queue"
        ]
        ours: set[int] = set()
        if len(bulk) > 1:
            sql = self._sql
            # Usually all of them: counted on SQLite, not fetched (PostgreSQL
            # locks the rows, which a count cannot).
            if not self.postgres and sql.count_ours(
                conn, bulk, b_worker=worker_id
            ).scalar_one() == len(bulk):
                ours = set(bulk)
            else:
                ours = set(sql.ours_locked(conn, bulk, b_worker=worker_id).scalars())
            if ours:
                done = sorted(ours)
                sql.complete_all(conn, done, b_now=now)
                sql.events_of(conn, done, COMPLETED, worker_id, now)
        for claimed, status, error in finished:
            if claimed.item_id not in ours:
                self._finish(conn, worker_id, claimed, status, error, now)

    def _ready(self, conn: Connection):
        ready = and_(is_(PENDING), items.c.unmet == 0)
        if self.requirement_filter is not None:
            ready = and_(ready, items.c.requirements.in_(self.requirement_filter))
        if conn.info.get(_SKIPPING):
            ready = and_(ready, items.c.id.not_in(select(skipped.c.id)))
        return ready

    def _next(self, conn: Connection, n: int) -> Sequence:
        if self.requirement_filter is None and not conn.info.get(_SKIPPING):
            return self._sql.next(conn, b_queue=self.queue_id, b_limit=n).all()
        query = (
            select(
                items.c.id,
                items.c.key,
                items.c.requirements,
                items.c.fingerprint,
                items.c.position,
                items.c.kills,
            )
            .where(self._mine(), self._ready(conn))
            .order_by(items.c.position)
            .limit(n)
        )
        if self.postgres:
            query = query.with_for_update(skip_locked=True)
        return conn.execute(query).all()

    def finish(
        self, conn: Connection, worker_id: int, claimed: Claimed, status: str, error: str | None
    ) -> None:
        with conn.begin():
            self._finish(conn, worker_id, claimed, status, error, time.time())

    def stop_worker(
        self,
        worker_id: int,
        name: str,
        finished: Sequence[tuple[Claimed, str, str | None]] = (),
        release: Sequence[Claimed] = (),
    ) -> None:
        """The end of a worker's loop: its last outcomes, its unstarted items, its status.

        One transaction, on a connection of its own (the claim connection
        may be the one that broke).
        """
        now = time.time()
        with self.engine.begin() as conn:
            self._finish_all(conn, worker_id, finished, now)
            if release:
                self._release(conn, worker_id, [c.item_id for c in release], now)
            # An item whose outcome could not be recorded (the claim's
            # connection broke) is still "running" under this worker, and
            # reaping looks only at active workers: put it back now, or it
            # stays running for good and every other worker waits for it.
            self._requeue(
                conn, {worker_id: name}, now, "ended its loop without recording the outcome"
            )
            self._sql.stopped(conn, b_worker=worker_id, b_now=now)

    def _finish(self, conn, worker_id, claimed: Claimed, status, error, now) -> None:
        sql = self._sql
        mine = {"b_id": claimed.item_id, "b_worker": worker_id, "b_now": now}
        if status == COMPLETED and self.kind == "graph" and self.postgres:
            # Registration recounts every task's unmet deps in one UPDATE
            # whose subquery sees the deps as they were when it started; a
            # completion committed meanwhile would be counted as unfinished
            # for good, and its dependents never handed out.  Completions
            # share the lock registration takes alone.
            sql.share_queue(conn, b_key=advisory_key("queue", self.queue_id))
        if status == COMPLETED:
            done = sql.complete(conn, **mine, b_fp=claimed.fingerprint).rowcount
            if not done and sql.requeue(conn, **mine).rowcount:
                self._outdated(conn, worker_id, claimed, now)
                return
        elif status == FAILED and self.retry_failed:
            done = sql.fail_or_retry(conn, **mine, b_error=error, b_max=self.max_retries).rowcount
        else:
            done = sql.finish(conn, **mine, b_status=status, b_error=error).rowcount
        if not done and self._recorded(conn, worker_id, claimed, status):
            return
        if not done:
            # This worker missed its heartbeats long enough to be declared
            # dead, or a task upstream was invalidated: the item went back
            # to the queue, and the worker that has it now records the outcome.
            log.warning(
                "%s: item %r went back to the queue while this worker ran it (it was "
                "presumed dead, or a task upstream was invalidated); its outcome here "
                "(%s) is not recorded",
                self.name,
                claimed.key,
                status,
            )
            return
        if status == COMPLETED and self.kind == "graph":
            sql.release_dependents(conn, b_dep=claimed.item_id)
        sql.event(conn, claimed.item_id, status, worker_id, now, claimed.fingerprint, error)

    def _recorded(self, conn, worker_id: int, claimed: Claimed, status: str) -> bool:
        """Whether this outcome is already recorded: a retried transaction had committed."""
        row = conn.execute(
            select(items.c.status, items.c.worker_id).where(items.c.id == claimed.item_id)
        ).first()
        # A failure retried with retry_failed is back to pending: not told apart.
        return row is not None and tuple(row) == (status, worker_id)

    def _outdated(self, conn, worker_id, claimed: Claimed, now) -> None:
        """History of a task completed with a fingerprint changed while it ran.

        A worker with the new fingerprint registered the task meanwhile: the
        result is not the one that fingerprint describes, so the task went
        back to the queue (see `register`, which updates the fingerprints
        of tasks that are not completed).
        """
        current = conn.execute(
            select(items.c.fingerprint).where(items.c.id == claimed.item_id)
        ).scalar_one()
        log.warning(
            "%s: task %r completed with fingerprint %r, which changed to %r while it ran; "
            "it will be done again",
            self.name,
            claimed.key,
            claimed.fingerprint,
            current,
        )
        self._sql.event(conn, claimed.item_id, COMPLETED, worker_id, now, claimed.fingerprint)
        self._sql.event(conn, claimed.item_id, "invalidated", None, now, current)

    def set_error(self, item_id: int, error: str) -> None:
        """Replace the error recorded for a failed item (and its last history row)."""
        with self.engine.begin() as conn:
            conn.execute(
                update(items)
                .where(items.c.id == item_id, items.c.status == FAILED)
                .values(error=error)
            )
            last = select(func.max(history.c.id)).where(
                history.c.item_id == item_id, history.c.status == FAILED
            )
            conn.execute(
                update(history).where(history.c.id == last.scalar_subquery()).values(error=error)
            )

    # -- reading and maintenance ---------------------------------------------

    def counts(self) -> dict[str, int]:
        # A read: progress bars ask every second, and must not queue for
        # the write lock behind the workers (nor hold them up).
        with self.engine.connect() as conn, reading(conn):
            return counts(conn, self.queue_id)

    def reset(self, statuses: Sequence[str] = (FAILED,)) -> list[str]:
        with self.engine.begin() as conn:
            return reset(conn, self.queue_id, statuses)


def _silent(now):
    """Active workers whose heartbeat is older than their timeout at ``now``."""
    return and_(
        workers.c.status == "active", workers.c.heartbeat_at + workers.c.heartbeat_timeout < now
    )


def counts(conn: Connection, queue_id: int) -> dict[str, int]:
    """Items per status (every status present, zeros included).

    Counted in the partial index of each status but "completed", which
    has none (see _schema): those are the rest of all the queue's items.
    """

    def count(*where):
        return select(func.count()).where(items.c.queue_id == queue_id, *where).scalar_subquery()

    indexed = (PENDING, RUNNING, FAILED)
    total, *numbers = conn.execute(select(count(), *(count(is_(s)) for s in indexed))).one()
    found: dict[str, int] = dict(zip(indexed, numbers, strict=True))
    found[COMPLETED] = total - sum(numbers)
    return {status: found[status] for status in STATUSES}


def count_unmet(conn: Connection, queue_id: int) -> None:
    """Recompute every item's count of unfinished dependencies, in one statement."""
    upstream = items.alias("upstream")
    unfinished = (
        select(func.count())
        .select_from(deps.join(upstream, upstream.c.id == deps.c.dep_id))
        .where(deps.c.item_id == items.c.id, upstream.c.status != COMPLETED)
        .scalar_subquery()
    )
    conn.execute(update(items).where(items.c.queue_id == queue_id).values(unmet=unfinished))


def reset(conn: Connection, queue_id: int, statuses: Sequence[str]) -> list[str]:
    """Put items with these statuses back in the queue; returns their keys.

    Completed tasks of a graph that go back make their dependents wait for
    them again.  A running item goes back too: its worker's outcome is then
    not recorded (it finds the item taken away, as after an invalidation).
    """
    rows = conn.execute(
        select(items.c.id, items.c.key, items.c.fingerprint).where(
            items.c.queue_id == queue_id, items.c.status.in_(statuses)
        )
    ).all()
    now = time.time()
    for chunk in batched(rows, _BATCH):
        conn.execute(
            update(items)
            .where(items.c.id.in_([r.id for r in chunk]))
            .values(status=PENDING, kills=0, error=None, updated_at=now)
        )
    _history.record(
        conn,
        (
            {"item_id": r.id, "status": "reset", "at": now, "fingerprint": r.fingerprint}
            for r in rows
        ),
    )
    if rows and COMPLETED in statuses:
        count_unmet(conn, queue_id)
    return [r.key for r in rows]


def drop(conn: Connection, queue_id: int) -> int:
    """Delete a queue or graph: its items, edges, history and workers; returns its item count."""
    mine = select(items.c.id).where(items.c.queue_id == queue_id)
    conn.execute(delete(history).where(history.c.item_id.in_(mine)))
    conn.execute(delete(deps).where(deps.c.item_id.in_(mine)))
    n = conn.execute(delete(items).where(items.c.queue_id == queue_id)).rowcount
    conn.execute(delete(workers).where(workers.c.queue_id == queue_id))
    conn.execute(delete(queues).where(queues.c.id == queue_id))
    return n


def downstream(roots: Iterable[str], entries: Iterable[Entry]) -> list[str]:
    """The roots and every entry that depends on them, directly or not."""
    children: dict[str, list[str]] = {}
    for e in entries:
        for d in e.deps:
            children.setdefault(d, []).append(e.key)
    seen: dict[str, None] = {}
    stack = list(roots)
    while stack:
        key = stack.pop()
        if key not in seen:
            seen[key] = None
            stack.extend(children.get(key, ()))
    return list(seen)


def id_set(ids: Sequence[int]) -> str:
    """SQL that follows ``id`` to match exactly these ids: ``BETWEEN`` or ``IN``.

    A batch is usually a run of consecutive ids (claimed in position order,
    registered in that order): a range is one index seek, where a list of
    a thousand is that many, and a thousand literals to parse.
    """
    assert ids, "an empty IN list is not valid SQL on every database"
    # int(): the ids are the database's own integers; nothing else is ever
    # written into the SQL text.
    low, high = int(min(ids)), int(max(ids))
    if high - low + 1 == len(ids) == len(set(ids)):
        return f"BETWEEN {low} AND {high}"
    return "IN (" + ",".join(str(int(i)) for i in ids) + ")"


class Prepared:
    """A statement compiled once for one dialect, run with ``exec_driver_sql``.

    An ``IN`` over a list of item ids (``bindparam(IDS, expanding=True)``)
    is written into the SQL at each call, as a range or literal integers
    (`id_set`): SQLAlchemy's own expansion costs more per id than the
    database does.
    """

    def __init__(self, statement, dialect) -> None:
        compiled = statement.compile(dialect=dialect)
        self.sql = str(compiled)
        self.defaults = compiled.construct_params(_check=False)
        self.defaults.pop(IDS, None)
        self.order = compiled.positiontup  # None for named parameter styles
        if self.order is not None:
            self.order = [name for name in self.order if name != IDS]
        self._in = f"IN (__[POSTCOMPILE_{IDS}])"
        self.expands = self._in in self.sql

    def __call__(self, conn: Connection, ids: Sequence[int] = (), **params):
        args = {**self.defaults, **params}
        sql = self.sql
        if self.expands:
            sql = sql.replace(self._in, id_set(ids))
        if self.order is not None:
            return conn.exec_driver_sql(sql, tuple(args[name] for name in self.order))
        return conn.exec_driver_sql(sql, args)


class _Statements:
    """The statements of the claim loop, compiled for one database."""

    def __init__(self, dialect, postgres: bool) -> None:
        ready = and_(items.c.queue_id == bindparam("b_queue"), is_(PENDING), items.c.unmet == 0)
        upcoming = (
            select(
                items.c.id,
                items.c.key,
                items.c.requirements,
                items.c.fingerprint,
                items.c.position,
                items.c.kills,
            )
            .where(ready)
            .order_by(items.c.position)
            .limit(bindparam("b_limit", type_=Integer))
        )
        if postgres:
            upcoming = upcoming.with_for_update(skip_locked=True)
        self.next = Prepared(upcoming, dialect)
        self.beyond = Prepared(
            select(items.c.id)
            .where(ready)
            .order_by(items.c.position)
            .limit(1)
            .offset(bindparam("b_skip", type_=Integer)),
            dialect,
        )

        def take(which):
            return Prepared(
                update(items)
                .where(which)
                .values(
                    status=RUNNING,
                    worker_id=bindparam("b_worker"),
                    error=None,
                    updated_at=bindparam("b_now"),
                ),
                dialect,
            )

        self.take = take(items.c.id == bindparam("b_id"))
        self.revive = Prepared(
            update(workers)
            .where(workers.c.id == bindparam("b_worker"), workers.c.status != "active")
            .values(status="active", heartbeat_at=bindparam("b_now")),
            dialect,
        )
        running = and_(
            items.c.id == bindparam("b_id"),
            items.c.worker_id == bindparam("b_worker"),
            items.c.status == RUNNING,
        )
        self.finish = Prepared(
            update(items)
            .where(running)
            .values(
                status=bindparam("b_status"),
                error=bindparam("b_error"),
                updated_at=bindparam("b_now"),
            ),
            dialect,
        )
        # A failure counts as a try, like a death (see _requeue): back to
        # the queue while tries are left.
        self.fail_or_retry = Prepared(
            update(items)
            .where(running)
            .values(
                status=case((items.c.kills < bindparam("b_max"), PENDING), else_=FAILED),
                kills=items.c.kills + 1,
                error=bindparam("b_error"),
                updated_at=bindparam("b_now"),
            ),
            dialect,
        )
        # Completed only with the fingerprint it was claimed with; otherwise
        # (changed while it ran) back to the queue with `requeue`.
        self.complete = Prepared(
            update(items)
            .where(running, items.c.fingerprint.is_not_distinct_from(bindparam("b_fp")))
            .values(status=COMPLETED, error=None, updated_at=bindparam("b_now")),
            dialect,
        )
        self.requeue = Prepared(
            update(items).where(running).values(status=PENDING, updated_at=bindparam("b_now")),
            dialect,
        )
        waiting = select(deps.c.item_id).where(deps.c.dep_id == bindparam("b_dep"))
        self.release_dependents = Prepared(
            update(items).where(items.c.id.in_(waiting)).values(unmet=items.c.unmet - 1), dialect
        )
        self._record = Prepared(
            insert(history).values(
                item_id=bindparam("b_item"),
                status=bindparam("b_status"),
                worker_id=bindparam("b_worker"),
                at=bindparam("b_now"),
                fingerprint=bindparam("b_fp"),
                error=bindparam("b_error"),
            ),
            dialect,
        )
        joined = insert(workers).values(
            queue_id=bindparam("b_queue"),
            name=bindparam("b_name"),
            host=bindparam("b_host"),
            pid=bindparam("b_pid"),
            labels=bindparam("b_labels"),
            started_at=bindparam("b_now"),
            heartbeat_at=bindparam("b_now"),
            heartbeat_timeout=bindparam("b_timeout"),
            status="active",
        )
        # The new id: RETURNING on PostgreSQL, the cursor's lastrowid on
        # SQLite (RETURNING only since SQLite 3.35).
        self.join = Prepared(joined.returning(workers.c.id) if postgres else joined, dialect)
        self.silent = Prepared(
            select(workers.c.id, workers.c.name).where(
                workers.c.queue_id == bindparam("b_queue"), _silent(bindparam("b_now"))
            ),
            dialect,
        )
        self.stopped = Prepared(
            update(workers)
            .where(workers.c.id == bindparam("b_worker"))
            .values(status="stopped", heartbeat_at=bindparam("b_now")),
            dialect,
        )
        self.share_queue = Prepared(
            select(func.pg_advisory_xact_lock_shared(bindparam("b_key"))), dialect
        )
        self.busy = Prepared(
            select(items.c.id)
            .where(items.c.queue_id == bindparam("b_queue"), is_(RUNNING))
            .limit(1),
            dialect,
        )
        # The same over a set of items, in one statement each (batches).
        these = items.c.id.in_(bindparam(IDS, expanding=True))
        held = and_(these, items.c.worker_id == bindparam("b_worker"), items.c.status == RUNNING)
        self.ours = Prepared(select(items.c.id).where(held), dialect)
        self.count_ours = Prepared(select(func.count()).where(held), dialect)
        if postgres:
            self.ours_locked = Prepared(select(items.c.id).where(held).with_for_update(), dialect)
        else:
            self.ours_locked = self.ours
        self.take_all = take(these)
        self.complete_all = Prepared(
            update(items)
            .where(these)
            .values(status=COMPLETED, error=None, updated_at=bindparam("b_now")),
            dialect,
        )
        self.release_all = Prepared(
            update(items).where(these).values(status=PENDING, updated_at=bindparam("b_now")),
            dialect,
        )
        self._record_all = Prepared(
            insert(history).from_select(
                ["item_id", "status", "worker_id", "at", "fingerprint", "error"],
                select(
                    items.c.id,
                    bindparam("b_status", type_=String),
                    bindparam("b_worker", type_=Id),
                    bindparam("b_now", type_=Float),
                    items.c.fingerprint,
                    null(),
                ).where(these),
            ),
            dialect,
        )

    def events_of(self, conn, ids: Sequence[int], status: str, worker_id, now: float) -> None:
        """A history row for each of these items, with its fingerprint: one statement."""
        self._record_all(conn, ids, b_status=status, b_worker=worker_id, b_now=now)

    def event(self, conn, item_id, status, worker_id, now, fingerprint, error=None) -> None:
        """A history row for one item."""
        self._record(
            conn,
            b_item=item_id,
            b_status=status,
            b_worker=worker_id,
            b_now=now,
            b_fp=fingerprint,
            b_error=error,
        )
