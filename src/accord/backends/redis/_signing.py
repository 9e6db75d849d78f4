"""Signed payloads: nothing read from Redis is unpickled unless it carries
a valid HMAC-SHA256 made with the share's key.

Anyone who can write to the Redis server can write to a share's keys; the
key is what they lack.  A payload is ``mac || data``, the MAC taken over the
share's name, what the payload is (a command, a reply to one client, the
snapshot of one name) and the data, so a valid payload cannot be replayed
as another kind or under another name either.
"""

from __future__ import annotations

import hashlib
import hmac
import os

from ..._core._errors import TamperedPayload

MAC_SIZE = 32
ENV_KEY = "ACCORD_KEY"


def resolve_key(key: bytes | str | None) -> bytes | None:
    """The share key from an argument, else from $ACCORD_KEY, else None."""
    if key is None:
        key = os.environ.get(ENV_KEY) or None
    if key is None:
        return None
    if isinstance(key, str):
        key = key.encode()
    if not isinstance(key, bytes) or len(key) < 16:
        raise ValueError("a share key must be at least 16 bytes (or characters) long")
    return key


class Signer:
    """Signs and checks the payloads of one share."""

    __slots__ = ("_key", "_name")

    def __init__(self, key: bytes, name: str) -> None:
        self._key = key
        self._name = name.encode() + b"\0"

    def _mac(self, context: bytes, data: bytes) -> bytes:
        return hmac.new(self._key, self._name + context + b"\0" + data, hashlib.sha256).digest()

    def sign(self, context: bytes, data: bytes) -> bytes:
        return self._mac(context, data) + data

    def open(self, context: bytes, payload: bytes | None, where: str) -> bytes:
        """The data of a signed payload; TamperedPayload if the MAC is wrong."""
        if payload is None or len(payload) < MAC_SIZE:
            raise TamperedPayload(f"{where}: not a signed accord payload; refusing to unpickle it")
        data = payload[MAC_SIZE:]
        if not hmac.compare_digest(payload[:MAC_SIZE], self._mac(context, data)):
            raise TamperedPayload(
                f"{where}: signature check failed (written without this share's key, or "
                f"altered); refusing to unpickle it. If the share was created with another "
                f"key, pass that one (key=... or ${ENV_KEY})"
            )
        return data

    def check_value(self) -> bytes:
        """Stored with the share so that connect() can tell a wrong key at once."""
        return self._mac(b"check", b"")
