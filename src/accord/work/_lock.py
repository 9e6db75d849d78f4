"""`queue.lock`: one lock shared by every worker of a name, on any machine.

On SQLite it is a POSIX ``fcntl`` lock on a file beside the database (the
same kind of lock SQLite itself takes, so it works wherever the database
does, NFS included); on PostgreSQL a session-level ``pg_advisory_lock``.
Both are released by the operating system or the server when the holding
process dies, so a crashed worker never leaves the lock taken.
"""

from __future__ import annotations

import fcntl
import os
import re
import threading
import time
from pathlib import Path

from sqlalchemy import Connection, Engine, func, select

from ._db import sqlite_path
from ._store import advisory_key

_registry_lock = threading.Lock()
_thread_locks: dict[tuple[str, str], threading.Lock] = {}


class WorkLock:
    """A lock held across all workers of the same name (``queue.lock``).

    Use it for what the workers share outside the database, such as one
    output file:

        >>> from accord.work import WorkQueue
        >>> db = "sqlite:///run.sqlite"  # a file in the current directory
        >>> queue = WorkQueue(["a", "b"], db=db, name="lines", progress=False)
        >>> for item in queue:
        ...     with queue.lock:
        ...         print(item)  # one worker at a time appends here
        a
        b
    """

    def __init__(self, engine: Engine, name: str) -> None:
        self._engine = engine
        self._name = name
        self._fd: int | None = None
        self._conn: Connection | None = None
        self.path: Path | None = None
        if engine.dialect.name == "sqlite":
            safe = re.sub(r"[^A-Za-z0-9_.-]", "_", name)[:64]
            tag = advisory_key("lock", name) & 0xFFFFFFFF
            self.path = sqlite_path(engine).with_name(
                f"{sqlite_path(engine).name}.{safe}-{tag:08x}.lock"
            )
        # fcntl locks belong to the process, not the thread (and closing any
        # descriptor of the file drops them): threads of one process, through
        # any queue object of this name, take turns on one thread lock first.
        # Keyed by the lock file, not the URL: a relative and an absolute URL
        # of one database must share it.
        where = str(self.path) if self.path else str(engine.url)
        with _registry_lock:
            self._local = _thread_locks.setdefault((where, name), threading.Lock())

    def acquire(self, timeout: float | None = None) -> bool:
        """Take the lock; with a timeout (seconds), False if it was not free in time."""
        deadline = None if timeout is None else time.monotonic() + timeout
        if not self._local.acquire(timeout=-1 if timeout is None else timeout):
            return False
        try:
            taken = self._take_file(deadline) if self.path else self._take_advisory(deadline)
        except BaseException:
            self._local.release()
            raise
        if not taken:
            self._local.release()
        return taken

    def release(self) -> None:
        if self.path is not None:
            assert self._fd is not None, "release of a WorkLock that is not held"
            fcntl.lockf(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None
        else:
            assert self._conn is not None, "release of a WorkLock that is not held"
            try:
                self._conn.execute(select(func.pg_advisory_unlock(self._key)))
            finally:
                self._conn.close()
                self._conn = None
        self._local.release()

    def __enter__(self) -> WorkLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    @property
    def _key(self) -> int:
        return advisory_key("lock", self._name)

    def _take_file(self, deadline: float | None) -> bool:
        assert self.path is not None  # a SQLite database's lock file
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            if deadline is None:
                fcntl.lockf(fd, fcntl.LOCK_EX)
            else:
                while True:
                    try:
                        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                        break
                    except OSError:
                        if time.monotonic() >= deadline:
                            os.close(fd)
                            return False
                        time.sleep(0.01)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        return True

    def _take_advisory(self, deadline: float | None) -> bool:
        # The lock lives as long as this connection: its own, outside the
        # pool's transactions, so claims can commit while it is held.
        conn = self._engine.connect().execution_options(isolation_level="AUTOCOMMIT")
        try:
            if deadline is None:
                conn.execute(select(func.pg_advisory_lock(self._key)))
            else:
                while not conn.execute(select(func.pg_try_advisory_lock(self._key))).scalar():
                    if time.monotonic() >= deadline:
                        conn.close()
                        return False
                    time.sleep(0.01)
        except BaseException:
            conn.close()
            raise
        self._conn = conn
        return True
