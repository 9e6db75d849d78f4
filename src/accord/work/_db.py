"""Opening a work database: URL handling, SQLite pragmas, PostgreSQL driver.

SQLite is the default because it needs no server: every worker opens the
same file.  Three settings make it safe with many processes:

- WAL journal, so readers never block the writer and commits need no fsync
  of the main file (``synchronous=NORMAL``);
- every transaction starts with ``BEGIN IMMEDIATE``: it takes the write lock
  up front, so two workers can never both read "item 7 is pending" and then
  both fail to upgrade their lock (SQLite's default deferred BEGIN makes the
  second one fail with "database is locked" instead of waiting);
- a busy timeout, so a worker waits for the lock instead of failing;
- in front of that lock, a "gate" (`_Gate`): writers of one machine queue
  for an flock in the kernel instead of polling SQLite's lock.

WAL needs shared memory between the processes that open the file, which a
network filesystem (NFS, Lustre, GPFS, CIFS…) cannot give across machines.
There the rollback journal is used instead (``journal_mode=DELETE``): SQLite
then locks with POSIX ``fcntl`` byte-range locks on the file itself, which
NFSv4 and the cluster filesystems implement.  It is slower, and only as
safe as the filesystem's locking; for many machines use PostgreSQL.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import random
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, SQLAlchemyError

from ._errors import DatabaseUnavailable

log = logging.getLogger("accord.work")

BUSY_TIMEOUT_S = 60.0

# In a SQLite connection's info: its next transaction only reads (see _begin).
READING = "accord_reading"


@contextlib.contextmanager
def reading(conn: Connection) -> Iterator[Connection]:
    """A transaction that writes nothing but temporary tables: on SQLite it takes no lock.

    In WAL mode it neither waits for the writer nor holds it up.
    """
    conn.info[READING] = True
    try:
        with conn.begin():
            yield conn
    finally:
        conn.info[READING] = False


# Filesystems on which several machines can open one file; SQLite's WAL
# index lives in shared memory and cannot work across them.
NETWORK_FILESYSTEMS = frozenset(
    {"nfs", "nfs4", "cifs", "smb3", "smbfs", "lustre", "gpfs", "beegfs", "ceph", "fuse.sshfs"}
)


def describe(url: str | URL) -> str:
    """The URL as it may be printed: without its password."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return str(url)


def open_engine(url: str, *, must_exist: bool = False, read_only: bool = False) -> Engine:
    """An engine for ``url`` that is known to connect, or `DatabaseUnavailable`.

    ``must_exist``: a SQLite file that does not exist is an error rather than
    created (for tools that only read).  ``read_only``: the engine never
    writes nor takes a write lock (see `_read_only_sqlite`); on PostgreSQL
    every transaction is READ ONLY.  It implies ``must_exist``.
    """
    try:
        parsed = make_url(url)
    except ArgumentError as exc:
        raise DatabaseUnavailable(
            f"cannot open {url!r}: not a database URL "
            "(expected sqlite:///path/to/file.sqlite or postgresql://user@host/db)"
        ) from exc
    shown = describe(parsed)
    backend = parsed.get_backend_name()
    if backend == "sqlite" and read_only:
        engine = _read_only_sqlite(parsed, url)
    elif backend == "sqlite":
        engine = _sqlite_engine(parsed, url, must_exist)
    elif backend in ("postgresql", "postgres"):
        if parsed.drivername in ("postgresql", "postgres"):
            # SQLAlchemy 2.0 would pick psycopg2; accord installs psycopg 3.
            parsed = parsed.set(drivername="postgresql+psycopg")
        options = {"options": "-c default_transaction_read_only=on"} if read_only else {}
        engine = create_engine(parsed, pool_pre_ping=True, connect_args=options)
    else:
        raise DatabaseUnavailable(
            f"cannot open {shown}: accord.work supports sqlite:/// and postgresql:// URLs"
        )
    try:
        with engine.connect():
            pass
    except (SQLAlchemyError, sqlite3.Error, OSError) as exc:
        engine.dispose()
        reason = getattr(exc, "orig", None) or exc
        raise DatabaseUnavailable(f"cannot open {shown}: {reason}") from exc
    return engine


def sqlite_path(engine: Engine) -> Path:
    return Path(engine.url.database or "").resolve()


def _set_journal(cursor: sqlite3.Cursor, journal: str) -> None:
    """Set the journal mode unless the file has it already.

    Changing it takes an exclusive lock, and SQLite answers "database is
    locked" at once, without its busy handler, when another connection is in
    the middle of a transaction — which happens when several workers open a
    new database together.  Try again until the busy timeout.
    """
    deadline = time.monotonic() + BUSY_TIMEOUT_S
    while True:
        try:
            if cursor.execute("PRAGMA journal_mode").fetchone()[0].upper() != journal:
                cursor.execute(f"PRAGMA journal_mode = {journal}")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.01)


SHORT_BUSY_MS = 2


def _take_write_lock(dbapi_connection: sqlite3.Connection) -> None:
    """``BEGIN IMMEDIATE``, waiting for the write lock in steps of at most 2 ms.

    SQLite's own busy handler sleeps ever longer between tries, up to 100
    ms: with many workers, one that waits sleeps through the moments the
    lock is free while the others, who ask at once, take it in turn, and it
    can wait for many seconds (measured: 12 s for a first claim beside
    three busy workers).  Here the connection's busy timeout is 2 ms and
    this loop tries again after at most 2 ms more, until BUSY_TIMEOUT_S.
    """
    deadline = None
    pause = 0.0002
    while True:
        try:
            dbapi_connection.execute("BEGIN IMMEDIATE")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) and "busy" not in str(exc):
                raise
            now = time.monotonic()
            deadline = deadline or now + BUSY_TIMEOUT_S
            if now >= deadline:
                raise
            time.sleep(pause * random.uniform(0.5, 1.5))
            pause = min(pause * 2, SHORT_BUSY_MS / 1000)


class _Gate:
    """An exclusive flock beside the database, taken before SQLite's write lock.

    SQLite keeps no queue for its write lock: a writer that finds it taken
    sleeps and tries again (`_take_write_lock`).  With many workers on few
    cores those wake-ups take the CPU from the one worker that holds the
    lock, and every other waits longer (measured: 16 workers on 2 cores
    spent a third of their CPU time asking, and a batch's transaction
    took twice as long).  A writer that waits here sleeps in the kernel
    until the flock is free, at no cost.  The gate only orders writers;
    ``BEGIN IMMEDIATE`` still excludes them, so anything that writes
    without it (another tool, the ``sqlite3`` shell) is waited for as
    before, and so is everything when the file cannot be opened (another
    user's).  The kernel drops the flock of a process that dies; a holder
    that does not let go (a process suspended in a transaction) is waited
    for ``timeout`` seconds, then this transaction goes without the gate.

    One per connection (flocks of different descriptors exclude each other,
    within a process too), reopened in a forked child (a descriptor it
    inherited shares the parent's flock).
    """

    def __init__(self, path: Path) -> None:
        self._path = path
        self._fd: int | None = None
        self._pid = 0
        self._held = False

    def acquire(self, timeout: float) -> None:
        if self._pid != os.getpid():
            self._fd, self._pid, self._held = None, os.getpid(), False
        if self._fd is None:
            try:
                self._fd = os.open(
                    self._path, os.O_RDONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600
                )
            except OSError:
                return  # no gate: SQLite's lock alone, as always
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            self._held = True
            return
        except BlockingIOError:
            pass
        # flock has no timeout: a thread waits, and this one waits for it.
        fd, got, mutex, state = self._fd, threading.Event(), threading.Lock(), {}

        def wait() -> None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
            except OSError:
                return
            with mutex:
                if state.get("abandoned"):
                    # Given up on: the descriptor is this thread's now.
                    os.close(fd)
                    return
                state["got"] = True
            got.set()

        thread = threading.Thread(target=wait, name="accord-sqlite-gate", daemon=True)
        mine = False
        try:
            thread.start()
            got.wait(timeout)
        except RuntimeError:
            if thread.ident is not None:
                raise
            state["never"] = True  # no threads here (interpreter shutting down)
            return
        finally:
            # Also when the wait is interrupted (KeyboardInterrupt): a flock
            # the thread takes after that must not stay held for good.
            if not state.get("never"):
                with mutex:
                    mine = state.get("got", False)
                    if not mine:
                        state["abandoned"] = True
                if mine:
                    self._held = True  # released by the caller if it raises
                else:
                    self._fd = None  # the thread's now; the next transaction opens another
        if not mine:
            log.warning(
                "%s: a writer held it for %g s; going on without it", self._path.name, timeout
            )

    def release(self) -> None:
        if self._held:
            self._held = False
            assert self._fd is not None
            fcntl.flock(self._fd, fcntl.LOCK_UN)

    def close(self) -> None:
        self.release()
        if self._fd is not None and self._pid == os.getpid():
            os.close(self._fd)
        self._fd = None


# Rows a WAL connection changes between two checkpoints of its own (see
# _GatedConnection.checkpoint); SQLite's own checkpoint, inside a commit,
# comes only past AUTOCHECKPOINT_PAGES.
CHECKPOINT_ROWS = 40000
AUTOCHECKPOINT_PAGES = 4000


class _GatedConnection(sqlite3.Connection):
    """A SQLite connection whose write transactions pass `_Gate` (see `_begin`).

    In WAL mode it also copies the WAL back into the database file itself
    (a checkpoint), after its commit has let go of the write lock, every
    ``CHECKPOINT_ROWS`` rows it changed.  SQLite's automatic checkpoint
    runs inside the commit that crosses its threshold, with the write lock
    still held: every other worker waited for it (7-14% of the time the
    lock was held, measured).  A checkpoint needs no write lock and runs
    beside the next writer.
    """

    gate: _Gate | None = None
    wal = False
    _checkpointed_at = 0

    def commit(self) -> None:
        try:
            super().commit()
        finally:
            if self.gate is not None:
                self.gate.release()
        if self.wal and self.total_changes - self._checkpointed_at >= CHECKPOINT_ROWS:
            self.checkpoint()

    def checkpoint(self) -> None:
        """Copy what the WAL holds into the database file, without waiting for anyone.

        PASSIVE: frames a reader still needs, and everything while another
        connection checkpoints, stay for a later one; it never waits, takes
        no write lock and cannot fail the commit before it.
        """
        self._checkpointed_at = self.total_changes
        try:
            self.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
        except sqlite3.Error as exc:  # the database's own checkpoint still comes
            log.debug("checkpoint skipped: %s", exc)

    def rollback(self) -> None:
        try:
            super().rollback()
        finally:
            if self.gate is not None:
                self.gate.release()

    def close(self) -> None:
        try:
            super().close()
        finally:
            if self.gate is not None:
                self.gate.close()


def filesystem_type(path: Path) -> str:
    """The type of the filesystem ``path`` is on, from /proc/mounts ("" if unknown)."""
    best, kind = "", ""
    try:
        mounts = Path("/proc/mounts").read_text().splitlines()
    except OSError:
        return ""
    target = str(path)
    for line in mounts:
        fields = line.split()
        if len(fields) < 3:
            continue
        point = fields[1].replace("\\040", " ")
        inside = target == point or target.startswith(point.rstrip("/") + "/")
        if inside and len(point) >= len(best):
            best, kind = point, fields[2]
    return kind


def _sqlite_file(parsed: URL, url: str, must_exist: bool) -> Path:
    database = parsed.database or ""
    if database in ("", ":memory:") or parsed.query.get("mode") == "memory":
        raise DatabaseUnavailable(
            f"cannot open {url}: an in-memory SQLite database cannot be shared by "
            "workers; give a file, e.g. sqlite:///run.sqlite"
        )
    path = Path(database).resolve()
    if not path.parent.is_dir():
        raise DatabaseUnavailable(f"cannot open {url}: the directory {path.parent} does not exist")
    if must_exist and not path.is_file():
        raise DatabaseUnavailable(f"cannot open {url}: {path} does not exist")
    return path


def _read_only_sqlite(parsed: URL, url: str) -> Engine:
    """An engine that reads the file and writes nothing, not even beside it.

    Opening a WAL database, even with ``mode=ro``, creates its ``-wal`` and
    ``-shm`` files when they are missing (and fails where it cannot: a
    read-only copy, directory or mount).  They exist while any worker has
    the database open; then ``mode=ro`` reads through them, seeing committed
    transactions without locking anyone out.  When they do not, no worker
    is running and the main file holds every commit: it is opened
    ``immutable``, which reads it without locks and creates nothing.  A
    database in rollback-journal mode (network filesystems) is read with
    ``mode=ro`` and shared locks, which create nothing either.
    ``query_only`` makes any write that slips through fail.
    """
    path = _sqlite_file(parsed, url, must_exist=True)
    try:
        with path.open("rb") as f:
            # Bytes 18-19 of the header are the file format versions: 2 for WAL.
            wal = f.read(20)[18:20] == b"\x02\x02"
    except OSError as exc:
        raise DatabaseUnavailable(f"cannot open {url}: {exc}") from exc
    quiet = wal and not path.with_name(path.name + "-wal").exists()
    flags = "mode=ro&immutable=1" if quiet else "mode=ro"
    # quote(): a path with '?' or '#' must not end the file name in the URI.
    uri = f"file:{quote(str(path))}?{flags}"

    def connect() -> sqlite3.Connection:
        conn = sqlite3.connect(uri, uri=True, timeout=BUSY_TIMEOUT_S, check_same_thread=False)
        conn.execute("PRAGMA query_only = ON")
        return conn

    return create_engine(parsed, creator=connect)


def _sqlite_engine(parsed: URL, url: str, must_exist: bool) -> Engine:
    path = _sqlite_file(parsed, url, must_exist)
    journal = "DELETE" if filesystem_type(path.parent) in NETWORK_FILESYSTEMS else "WAL"
    engine = create_engine(
        parsed,
        connect_args={
            "timeout": BUSY_TIMEOUT_S,
            "check_same_thread": False,
            "factory": _GatedConnection,
        },
    )
    # Beside SQLite's own -wal and -shm files.
    gate_path = path.with_name(path.name + "-accord-gate")

    @event.listens_for(engine, "connect")
    def _connect(dbapi_connection, _record):
        # The driver's own implicit BEGIN is off, so that ours (below) is the
        # only one and can be IMMEDIATE.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
        _set_journal(cursor, journal)
        if journal == "WAL":
            # Only taking the write lock waits in WAL mode, and _begin waits
            # for it itself (see _take_write_lock).
            cursor.execute(f"PRAGMA busy_timeout = {SHORT_BUSY_MS}")
            # Network filesystems (the rollback journal) have no gate: an
            # flock there costs round trips to the server.
            dbapi_connection.gate = _Gate(gate_path)
            # Checkpoints after the commit (see _GatedConnection); SQLite's
            # own stays as a bound on the WAL's size.
            dbapi_connection.wal = True
            cursor.execute(f"PRAGMA wal_autocheckpoint = {AUTOCHECKPOINT_PAGES}")
        cursor.execute("PRAGMA synchronous = NORMAL")
        cursor.execute("PRAGMA foreign_keys = ON")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _begin(connection):
        # A transaction that only reads (READING set in the connection's
        # info) takes no lock: in WAL mode it neither waits for the writer
        # nor holds it up.
        if connection.info.get(READING):
            connection.exec_driver_sql("BEGIN")
        elif journal == "WAL":
            dbapi_connection = connection.connection.dbapi_connection
            try:
                dbapi_connection.gate.acquire(BUSY_TIMEOUT_S)
                _take_write_lock(dbapi_connection)
            except BaseException:
                dbapi_connection.gate.release()
                raise
        else:
            connection.exec_driver_sql("BEGIN IMMEDIATE")

    return engine
