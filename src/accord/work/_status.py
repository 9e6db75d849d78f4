"""What `accord status` prints and what `accord reset` does, for any database."""

from __future__ import annotations

import time

from sqlalchemy import Engine, inspect, select

from . import _store
from ._errors import WorkError
from ._schema import items, queues, workers


def _queues(engine: Engine, name: str | None) -> list:
    """The queues in the database (or the one named), or WorkError if none."""
    found = []
    if inspect(engine).has_table(queues.name):
        query = select(queues.c.id, queues.c.name, queues.c.kind).order_by(queues.c.name)
        if name is not None:
            query = query.where(queues.c.name == name)
        with engine.connect() as conn:
            found = conn.execute(query).all()
    if not found:
        raise WorkError(
            f"no work queue named {name!r} in this database"
            if name
            else "no work queues in this database"
        )
    return list(found)


def report(engine: Engine, name: str | None = None, failures: int = 20) -> str:
    """Counts per status, active workers and failures of every queue (or of ``name``)."""
    found = _queues(engine, name)
    now = time.time()
    lines: list[str] = []
    with engine.connect() as conn:
        for queue in found:
            counts = _store.counts(conn, queue.id)
            total = sum(counts.values())
            summary = ", ".join(f"{status} {n}" for status, n in counts.items())
            kind = "task graph" if queue.kind == "graph" else "queue"
            lines.append(f"{queue.name} ({kind}, {total} items): {summary}")
            active = conn.execute(
                select(
                    workers.c.id,
                    workers.c.name,
                    workers.c.heartbeat_at,
                    workers.c.heartbeat_timeout,
                )
                .where(workers.c.queue_id == queue.id, workers.c.status == "active")
                .order_by(workers.c.started_at)
            ).all()
            running = dict(
                conn.execute(
                    select(items.c.worker_id, items.c.key).where(
                        items.c.queue_id == queue.id, items.c.status == _store.RUNNING
                    )
                ).all()
            )
            lines.append(f"  active workers: {len(active)}")
            for w in active:
                age = now - w.heartbeat_at
                late = "  NO HEARTBEAT: presumed dead" if age > w.heartbeat_timeout else ""
                doing = f"running {running[w.id]!r}" if w.id in running else "idle"
                lines.append(f"    {w.name}  heartbeat {age:.1f} s ago  {doing}{late}")
            failed = conn.execute(
                select(items.c.key, items.c.error, workers.c.name)
                .outerjoin(workers, workers.c.id == items.c.worker_id)
                .where(items.c.queue_id == queue.id, items.c.status == _store.FAILED)
                .order_by(items.c.updated_at)
            ).all()
            if failed:
                lines.append(f"  failures: {len(failed)}")
                for key, error, worker in failed[:failures]:
                    last = (error or "").strip().splitlines()[-1:] or ["(no error recorded)"]
                    lines.append(f"    {key!r} ({worker or 'no worker'}): {last[0]}")
                if len(failed) > failures:
                    lines.append(f"    ... and {len(failed) - failures} more")
    return "\n".join(lines)


def reset(
    engine: Engine, name: str | None = None, statuses: tuple[str, ...] = (_store.FAILED,)
) -> dict[str, int]:
    """Re-queue items with these statuses; returns how many per queue."""
    found = _queues(engine, name)
    done = {}
    with engine.begin() as conn:
        for queue in found:
            done[queue.name] = len(_store.reset(conn, queue.id, statuses))
    return done


def drop(engine: Engine, name: str) -> int:
    """Delete the queue or graph ``name`` and everything recorded about it.

    Refused (`WorkError`) while a worker of it is alive: one that still
    heartbeats would fail at its next claim.  Returns how many items went.
    """
    (queue,) = _queues(engine, name)
    now = time.time()
    with engine.begin() as conn:
        alive = (
            conn.execute(
                select(workers.c.name).where(
                    workers.c.queue_id == queue.id,
                    workers.c.status == "active",
                    workers.c.heartbeat_at + workers.c.heartbeat_timeout >= now,
                )
            )
            .scalars()
            .all()
        )
        if alive:
            raise WorkError(
                f"{name!r} has {len(alive)} active workers ({', '.join(alive[:5])}); "
                "stop them first (a killed worker counts until its heartbeat timeout)"
            )
        return _store.drop(conn, queue.id)
