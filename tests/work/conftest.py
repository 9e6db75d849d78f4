"""Fixtures of the work-distribution tests: databases and worker processes.

``db`` is a fresh database URL, once per backend: a SQLite file in the
test's tmp_path, and a database in a PostgreSQL server this session starts
on a free loopback port (Debian's ``postgresql`` package; ``make test``
installs it).  Workers are independent processes (``tests/work/worker.py``
run by ``sys.executable``), never fork children.
"""

from __future__ import annotations

import glob
import itertools
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
from pathlib import Path

import pytest
from work_helpers import Workers, wait_until

PG_TMP_PREFIX = f"accord-pg-{os.getpid()}-"


@pytest.fixture
def workers():
    pool = Workers()
    yield pool
    pool.close()


# -- PostgreSQL ---------------------------------------------------------------


def _postgres_bin() -> Path:
    found = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/postgres"), key=lambda p: int(Path(p).parts[-3])
    )
    if found:
        return Path(found[-1]).parent
    which = shutil.which("postgres")
    if which:
        return Path(which).resolve().parent
    # A failure, not a skip: CI must not pass without the PostgreSQL path.
    pytest.fail(
        "PostgreSQL server binaries not found (postgres, initdb): "
        "`make test` installs Debian's postgresql package; or apt-get install postgresql"
    )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PostgresServer:
    """A PostgreSQL server of our own, as an unprivileged user when we are root.

    ``stop()`` and ``start()`` restart it on the same port and data (the
    outage tests); ``close()`` removes everything.
    """

    def __init__(self) -> None:
        self.bindir = _postgres_bin()
        self.home = Path(tempfile.mkdtemp(prefix=PG_TMP_PREFIX))
        self.data = self.home / "data"
        self.port = _free_port()
        self.process: subprocess.Popen | None = None
        self._demote = None
        if os.geteuid() == 0:
            # postgres refuses to run as root.
            user = pwd.getpwnam("postgres" if _has_user("postgres") else "nobody")
            os.chown(self.home, user.pw_uid, user.pw_gid)

            def demote():
                os.setgid(user.pw_gid)
                os.setuid(user.pw_uid)

            self._demote = demote
        init = subprocess.run(
            [
                str(self.bindir / "initdb"),
                "-D", str(self.data),
                "-U", "accord",
                "--auth=trust",
                "-E", "UTF8",
                "--locale=C",
                "--no-sync",
            ],
            preexec_fn=self._demote, capture_output=True, text=True, timeout=60, cwd=self.home,
        )  # fmt: skip
        assert init.returncode == 0, init.stderr
        self._log = open(self.home / "log", "a")  # noqa: SIM115 - closed in close()

    def url(self, dbname: str) -> str:
        return f"postgresql://accord@127.0.0.1:{self.port}/{dbname}"

    def start(self) -> None:
        self.process = subprocess.Popen(
            [
                str(self.bindir / "postgres"),
                "-D", str(self.data),
                "-p", str(self.port),
                "-k", str(self.home),
                "-c", "listen_addresses=127.0.0.1",
                "-c", "fsync=off",
                "-c", "synchronous_commit=off",
                "-c", "full_page_writes=off",
                "-c", "max_connections=200",
            ],
            preexec_fn=self._demote,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            cwd=self.home,
        )  # fmt: skip
        import psycopg

        def ready():
            if self.process.poll() is not None:
                pytest.fail(f"postgres exited: {(self.home / 'log').read_text()}")
            try:
                psycopg.connect(
                    host="127.0.0.1", port=self.port, user="accord", dbname="postgres"
                ).close()
                return True
            except psycopg.OperationalError:
                return False

        wait_until(ready, 30, "postgres to accept connections")

    def stop(self) -> None:
        """Fast shutdown: every client's connection is terminated."""
        if self.process is None:
            return
        self.process.send_signal(signal.SIGINT)
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.process = None

    def create_database(self) -> str:
        import psycopg

        name = f"t{os.getpid()}_{next(_databases)}"
        with psycopg.connect(
            host="127.0.0.1", port=self.port, user="accord", dbname="postgres", autocommit=True
        ) as conn:
            conn.execute(f"CREATE DATABASE {name}")
        return self.url(name)

    def close(self) -> None:
        try:
            self.stop()
        finally:
            self._log.close()
            shutil.rmtree(self.home, ignore_errors=True)


_databases = itertools.count()


@pytest.fixture(scope="session")
def postgres_server():
    """The session's PostgreSQL server."""
    server = PostgresServer()
    try:
        server.start()
        yield server
    finally:
        server.close()


@pytest.fixture
def restartable_postgres():
    """A PostgreSQL server of this test alone, which it may stop and start."""
    server = PostgresServer()
    try:
        server.start()
        yield server
    finally:
        server.close()


def _has_user(name: str) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


@pytest.fixture
def postgres_db(postgres_server) -> str:
    """A new, empty database in the session's server."""
    return postgres_server.create_database()


@pytest.fixture
def sqlite_db(tmp_path) -> str:
    return f"sqlite:///{tmp_path}/run.sqlite"


@pytest.fixture(params=["sqlite", "postgres"])
def db(request) -> str:
    """A fresh database, on each backend."""
    return request.getfixturevalue(f"{request.param}_db")
