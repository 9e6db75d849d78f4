"""A real redis-server for the tests: on a free loopback port, in a temporary
directory, started and stopped by the suite (Debian package `redis-server`,
installed by `make test`)."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path

import redis


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class RedisServer:
    """One redis-server process; `stop()` and `start()` again keep its data
    when `persistent` (append-only file)."""

    def __init__(
        self, directory: Path, *, persistent: bool = False, password: str = "", tls: bool = False
    ) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError(
                "redis-server is not installed: `make test` installs it "
                "(apt-get install redis-server), or install it yourself"
            )
        self.binary = binary
        self.directory = directory
        self.port = free_port()
        self.persistent = persistent
        self.password = password
        self.tls = tls
        if tls:
            self._make_certificate()
        self.process: subprocess.Popen | None = None
        self.start()

    @property
    def cert(self) -> Path:
        return self.directory / "cert.pem"

    def _make_certificate(self) -> None:
        # One self-signed certificate for 127.0.0.1: the server's, and the
        # authority clients verify it with.
        subprocess.run(
            ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"]
            + ["-keyout", str(self.directory / "key.pem"), "-out", str(self.cert)]
            + ["-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
            check=True,
            capture_output=True,
        )

    @property
    def url(self) -> str:
        auth = f"default:{self.password}@" if self.password else ""
        if self.tls:
            return f"rediss://{auth}127.0.0.1:{self.port}/0?ssl_ca_certs={self.cert}"
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10.0) -> None:
        args = [self.binary, "--bind", "127.0.0.1"]
        if self.tls:
            args += ["--port", "0", "--tls-port", str(self.port), "--tls-auth-clients", "no"]
            args += ["--tls-cert-file", str(self.cert), "--tls-key-file"]
            args += [str(self.directory / "key.pem"), "--tls-ca-cert-file", str(self.cert)]
        else:
            args += ["--port", str(self.port)]
        args += ["--dir", str(self.directory), "--save", ""]
        args += ["--appendonly", "yes" if self.persistent else "no"]
        if self.persistent:
            args += ["--appendfsync", "always"]
        if self.password:
            args += ["--requirepass", self.password]
        self.process = subprocess.Popen(
            args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=self.directory
        )
        client = redis.Redis.from_url(self.url)
        deadline = time.monotonic() + timeout
        try:
            while True:
                try:
                    if client.ping():
                        return
                except redis.exceptions.BusyLoadingError:
                    pass
                except redis.exceptions.ConnectionError:
                    if self.process.poll() is not None:
                        raise RuntimeError("redis-server exited at start") from None
                if time.monotonic() > deadline:
                    raise RuntimeError(f"redis-server did not answer within {timeout} s")
                time.sleep(0.01)  # polling the server's port
        finally:
            client.close()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()  # redis-server writes its append-only file and exits
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None
