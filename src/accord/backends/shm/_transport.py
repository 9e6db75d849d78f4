"""Authenticated Unix domain sockets: a client's connection to its coordinator.

Sockets live in a directory private to the user (0700, checked to be ours),
and every connection proves knowledge of the share's key with an HMAC
challenge in both directions, as `multiprocessing.connection` does.  After
the handshake nothing is read from a socket but its end (a process died) and
the byte that wakes a sleeping coordinator: commands and replies go through
rings in shared memory (see _rings).
"""

from __future__ import annotations

import contextlib
import hmac
import os
import socket
import stat
import struct
import tempfile
from pathlib import Path

from ..._core._errors import AuthenticationError, UnsafeRuntimeDir

_ID = struct.Struct("<I")
_CHALLENGE = 32
HANDSHAKE_TIMEOUT = 5.0


def runtime_dir() -> Path:
    """This user's private directory for sockets and keys (created 0700)."""
    base = os.environ.get("XDG_RUNTIME_DIR")
    if not base or not os.path.isdir(base) or not os.access(base, os.W_OK):
        base = tempfile.gettempdir()
    path = Path(base) / f"accord-{os.getuid()}"
    with contextlib.suppress(FileExistsError):
        path.mkdir(mode=0o700)
    info = os.lstat(path)
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid():
        raise UnsafeRuntimeDir(f"{path} is not a directory owned by you; remove it and retry")
    if stat.S_IMODE(info.st_mode) != 0o700:
        os.chmod(path, 0o700)
    return path


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise ConnectionError("connection closed during the handshake")
        data += chunk
    return data


def _mac(key: bytes, role: bytes, challenge: bytes) -> bytes:
    return hmac.new(key, role + challenge, "sha256").digest()


def listen(path: Path) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old_umask = os.umask(0o177)  # the socket file is created 0600
    try:
        sock.bind(str(path))
    finally:
        os.umask(old_umask)
    sock.listen(128)
    return sock


def accept(listener: socket.socket, key: bytes, client_id: int) -> socket.socket:
    """Accept one connection and authenticate it; returns a blocking socket."""
    sock, _ = listener.accept()
    try:
        sock.settimeout(HANDSHAKE_TIMEOUT)
        challenge = os.urandom(_CHALLENGE)
        sock.sendall(challenge)
        answer = _recv_exact(sock, 32 + _CHALLENGE)
        if not hmac.compare_digest(answer[:32], _mac(key, b"client", challenge)):
            raise AuthenticationError("a client presented the wrong key")
        sock.sendall(_mac(key, b"coordinator", answer[32:]) + _ID.pack(client_id))
        sock.settimeout(None)
        return sock
    except BaseException:
        sock.close()
        raise


def connect(path: Path | str, key: bytes, timeout: float = HANDSHAKE_TIMEOUT):
    """Connect and authenticate both ways; returns (socket, client id)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.settimeout(timeout)
        sock.connect(str(path))
        challenge = _recv_exact(sock, _CHALLENGE)
        mine = os.urandom(_CHALLENGE)
        sock.sendall(_mac(key, b"client", challenge) + mine)
        try:
            answer = _recv_exact(sock, 32 + _ID.size)
        except ConnectionError:
            raise AuthenticationError(
                f"the coordinator behind {path} refused the connection: wrong key"
            ) from None
        if not hmac.compare_digest(answer[:32], _mac(key, b"coordinator", mine)):
            raise AuthenticationError(f"the process behind {path} does not hold the share's key")
        sock.settimeout(None)
        return sock, _ID.unpack(answer[32:])[0]
    except BaseException:
        sock.close()
        raise
