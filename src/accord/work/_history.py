"""Every status change of every item, kept with worker, time and fingerprint."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from datetime import UTC, datetime

from sqlalchemy import Connection, and_, delete, exists, func, insert, or_, select

from ._schema import history, items, workers

# The statuses a history row can have: an item's status changes, plus the
# events that change it without a worker running it.
STATUSES = ("running", "completed", "failed", "killed", "invalidated", "reset", "released")


@dataclasses.dataclass(frozen=True)
class HistoryEntry:
    """One status change of one item."""

    key: str
    status: str
    worker: str | None
    at: datetime
    fingerprint: str | None
    error: str | None


def record(conn: Connection, rows: Iterable[dict]) -> None:
    """Insert history rows (dicts with item_id, status, worker_id, at, fingerprint, error)."""
    rows = [{"worker_id": None, "fingerprint": None, "error": None, **row} for row in rows]
    if rows:
        conn.execute(insert(history), rows)


def read(conn: Connection, queue_id: int, key: str | None = None) -> list[HistoryEntry]:
    query = (
        select(
            items.c.key,
            history.c.status,
            workers.c.name,
            history.c.at,
            history.c.fingerprint,
            history.c.error,
        )
        .select_from(history.join(items).outerjoin(workers, workers.c.id == history.c.worker_id))
        .where(items.c.queue_id == queue_id)
        .order_by(history.c.id)
    )
    if key is not None:
        query = query.where(items.c.key == key)
    return [
        HistoryEntry(k, status, worker, datetime.fromtimestamp(at, UTC), fp, error)
        for k, status, worker, at, fp, error in conn.execute(query)
    ]


def prune(conn: Connection, queue_id: int, keep_latest: int) -> int:
    """Delete all but the latest ``keep_latest`` rows per item; returns how many went.

    Workers that no longer appear in any history row, own no item and
    whose loop ended are deleted too; nothing that is still referenced is.
    Not those presumed dead ("killed"): one that was only suspended comes
    back, and the items it claims then refer to it.
    """
    ranked = (
        select(
            history.c.id,
            func.row_number()
            .over(partition_by=history.c.item_id, order_by=history.c.id.desc())
            .label("rank"),
        )
        .join(items)
        .where(items.c.queue_id == queue_id)
        .subquery()
    )
    doomed = select(ranked.c.id).where(ranked.c.rank > keep_latest)
    deleted = conn.execute(delete(history).where(history.c.id.in_(doomed))).rowcount
    referenced = or_(
        exists().where(history.c.worker_id == workers.c.id),
        exists().where(items.c.worker_id == workers.c.id),
    )
    conn.execute(
        delete(workers).where(
            and_(workers.c.queue_id == queue_id, workers.c.status == "stopped", ~referenced)
        )
    )
    return deleted
