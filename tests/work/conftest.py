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


@pytest.fixture(scope="session")
def postgres_server():
    """A PostgreSQL server of our own, as an unprivileged user when we are root."""
    bindir = _postgres_bin()
    home = Path(tempfile.mkdtemp(prefix=PG_TMP_PREFIX))
    data = home / "data"
    demote = None
    if os.geteuid() == 0:
        # postgres refuses to run as root.
        name = "postgres" if _has_user("postgres") else "nobody"
        user = pwd.getpwnam(name)
        os.chown(home, user.pw_uid, user.pw_gid)

        def demote():
            os.setgid(user.pw_gid)
            os.setuid(user.pw_uid)

    def run(*cmd):
        return subprocess.run(
            cmd, preexec_fn=demote, capture_output=True, text=True, timeout=60, cwd=home
        )

    init = run(
        str(bindir / "initdb"),
        "-D",
        str(data),
        "-U",
        "accord",
        "--auth=trust",
        "-E",
        "UTF8",
        "--locale=C",
        "--no-sync",
    )
    assert init.returncode == 0, init.stderr
    port = _free_port()
    log = open(home / "log", "w")  # noqa: SIM115 - closed at teardown
    server = subprocess.Popen(
        [
            str(bindir / "postgres"),
            "-D", str(data),
            "-p", str(port),
            "-k", str(home),
            "-c", "listen_addresses=127.0.0.1",
            "-c", "fsync=off",
            "-c", "synchronous_commit=off",
            "-c", "full_page_writes=off",
            "-c", "max_connections=200",
        ],
        preexec_fn=demote,
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=home,
    )  # fmt: skip
    try:
        import psycopg

        def ready():
            if server.poll() is not None:
                pytest.fail(f"postgres exited: {(home / 'log').read_text()}")
            try:
                psycopg.connect(
                    host="127.0.0.1", port=port, user="accord", dbname="postgres"
                ).close()
                return True
            except psycopg.OperationalError:
                return False

        wait_until(ready, 30, "postgres to accept connections")
        yield {"port": port, "counter": itertools.count()}
    finally:
        server.send_signal(signal.SIGINT)  # fast shutdown
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        log.close()
        shutil.rmtree(home, ignore_errors=True)


def _has_user(name: str) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


@pytest.fixture
def postgres_db(postgres_server) -> str:
    """A new, empty database in the session's server."""
    import psycopg

    name = f"t{os.getpid()}_{next(postgres_server['counter'])}"
    port = postgres_server["port"]
    with psycopg.connect(
        host="127.0.0.1", port=port, user="accord", dbname="postgres", autocommit=True
    ) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    return f"postgresql://accord@127.0.0.1:{port}/{name}"


@pytest.fixture
def sqlite_db(tmp_path) -> str:
    return f"sqlite:///{tmp_path}/run.sqlite"


@pytest.fixture(params=["sqlite", "postgres"])
def db(request) -> str:
    """A fresh database, on each backend."""
    return request.getfixturevalue(f"{request.param}_db")
