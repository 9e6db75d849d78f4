"""The tables of a work database, and the indexes its queries use.

One database holds any number of queues and graphs, each under its name.
Every query a worker runs while working is an index lookup:

- the claim: ``items (queue_id, unmet, position)`` of pending items only —
  the first pending item with no unfinished dependency, in order;
- whether any item is running (the end of a worker's loop): ``items
  (queue_id)`` of running items only; the failures (``failure_policy=
  "stop"``): ``items (queue_id, position)`` of failed items only;
- completing a task: ``deps (dep_id)`` — the tasks that wait for it;
- finding dead workers: ``workers (queue_id, status)``;
- an item's history: ``history (item_id, id)``.

``unmet`` is the number of an item's dependencies that are not completed.
It is computed in one statement when tasks are registered or invalidated and
decremented in the transaction that completes a dependency, so a claim never
looks at dependencies at all.

The indexes on an item's status are partial, one per status that is
looked up: a completion (running → completed) then removes one small
index entry instead of moving one in an index of every item, and every
write on SQLite is made under the one write lock every worker waits for.
A status therefore appears as a literal (`is_`) in the queries that are to
use them, so that PostgreSQL's plans can use them too.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Column,
    Connection,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    func,
    inspect,
    literal_column,
    select,
)

# SQLite only autoincrements INTEGER PRIMARY KEY; PostgreSQL gets 64 bits.
Id = BigInteger().with_variant(Integer(), "sqlite")

metadata = MetaData()

queues = Table(
    "accord_queues",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("name", String(255), nullable=False, unique=True),
    Column("kind", String(8), nullable=False),  # "queue" or "graph"
    Column("created_at", Float, nullable=False),
)

workers = Table(
    "accord_workers",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("queue_id", Id, ForeignKey("accord_queues.id"), nullable=False),
    Column("name", String(255), nullable=False),
    Column("host", String(255), nullable=False),
    Column("pid", Integer, nullable=False),
    Column("labels", Text, nullable=False, default=""),
    Column("started_at", Float, nullable=False),
    Column("heartbeat_at", Float, nullable=False),
    Column("heartbeat_timeout", Float, nullable=False),
    Column("status", String(8), nullable=False),  # active, stopped, killed
    Index("accord_workers_by_status", "queue_id", "status"),
)

items = Table(
    "accord_items",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("queue_id", Id, ForeignKey("accord_queues.id"), nullable=False),
    Column("key", Text, nullable=False),
    Column("position", Integer, nullable=False),
    Column("status", String(12), nullable=False),  # pending, running, completed, failed
    Column("unmet", Integer, nullable=False, default=0),
    Column("requirements", Text, nullable=False, default=""),
    Column("fingerprint", Text),
    Column("worker_id", Id, ForeignKey("accord_workers.id")),
    Column("kills", Integer, nullable=False, default=0),
    Column("error", Text),
    Column("updated_at", Float, nullable=False),
    UniqueConstraint("queue_id", "key", name="accord_items_key"),
    Index("accord_items_by_worker", "worker_id"),
)


def is_(status: str):
    """``items.status = 'status'``, the status written into the SQL (see above)."""
    assert status.isalpha()  # a literal in SQL text: only the statuses below
    return items.c.status == literal_column(f"'{status}'")


def _partial(name: str, status: str, *columns: str) -> Index:
    where = is_(status)
    return Index(name, *(items.c[c] for c in columns), sqlite_where=where, postgresql_where=where)


# Added to the table by their declaration.
_partial("accord_items_ready", "pending", "queue_id", "unmet", "position")
_partial("accord_items_running", "running", "queue_id")
_partial("accord_items_failed", "failed", "queue_id", "position")
# Databases made before 2026-12-03 have this one instead of the three above.
_REPLACED = "accord_items_claim"

deps = Table(
    "accord_deps",
    metadata,
    Column("item_id", Id, ForeignKey("accord_items.id"), primary_key=True),
    Column("dep_id", Id, ForeignKey("accord_items.id"), primary_key=True),
    Index("accord_deps_by_dep", "dep_id"),
)

history = Table(
    "accord_history",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("item_id", Id, ForeignKey("accord_items.id"), nullable=False),
    Column("status", String(12), nullable=False),
    Column("worker_id", Id, ForeignKey("accord_workers.id")),
    Column("at", Float, nullable=False),
    Column("fingerprint", Text),
    Column("error", Text),
    Index("accord_history_by_item", "item_id", "id"),
    Index("accord_history_by_worker", "worker_id"),
)

# Any 64-bit number no other application is likely to pick for
# pg_advisory_xact_lock: serialises concurrent CREATE TABLEs.
_SCHEMA_LOCK = 0x61636F7264_0001


def create(conn: Connection) -> None:
    """Create the tables that are missing, safely from many processes at once."""
    if conn.dialect.name == "postgresql":
        # Two workers creating the same table at once make PostgreSQL fail
        # with a unique violation on pg_type; the lock serialises them.
        conn.execute(select(func.pg_advisory_xact_lock(_SCHEMA_LOCK)))
    metadata.create_all(conn)
    # create_all adds only missing tables, not the indexes of existing ones.
    present = {index["name"] for index in inspect(conn).get_indexes(items.name)}
    for index in items.indexes:
        if index.name not in present:
            index.create(conn)
    if _REPLACED in present:
        conn.exec_driver_sql(f"DROP INDEX {_REPLACED}")
