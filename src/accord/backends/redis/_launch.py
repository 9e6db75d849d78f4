"""Creating a redis share and starting its coordinator (used by `Share`)."""

from __future__ import annotations

import json
import os
import secrets
import sys

from ..._errors import KeyRequired
from . import _client
from ._client import RedisInfo, check_share, init_share
from ._coordinator import LEASE_S
from ._signing import resolve_key


def info_for(url: str, name: str | None, key, create: bool) -> RedisInfo:
    """The RedisInfo of share `name` at `url`; for connect, checked to exist
    and to have this key."""
    if name is None:
        if not create:
            raise ValueError("Share.connect(url, name=...): which share at that URL?")
        name = f"anon-{os.getpid()}-{secrets.token_hex(4)}"
    resolved = resolve_key(key)
    if resolved is None:
        if not create:
            raise KeyRequired(
                f"Share.connect({url!r}, name={name!r}) needs the share's key: "
                "pass key=... or set $ACCORD_KEY to the key it was created with"
            )
        resolved = secrets.token_bytes(32)  # only processes handed the share can use it
    info = RedisInfo.from_url(url, name, resolved)
    if not create:
        check_share(info)
    return info


def start(info: RedisInfo, window: float, spawn, create: bool = False) -> tuple:
    """Start a coordinator process for `info` (after creating the share's
    keys if `create`): (process, names that could not be restored)."""
    if create:
        init_share(info)
    config = {
        "url": info.url,
        "name": info.name,
        "key": info.key.hex(),
        "timeout": info.timeout,
        "ttl": info.ttl,
        "owner_pid": os.getpid(),
        "sys_path": [p or os.getcwd() for p in sys.path],
        "window": window,
        "wait": 3 * LEASE_S,  # a predecessor just killed may hold the lease that long
    }

    def undo():
        if create:
            _client.delete_share(info)

    process, line = spawn("accord.backends.redis._coordinator", config, b"", info.name, undo)
    return process, json.loads(line[len(b"READY") :] or b"[]")
