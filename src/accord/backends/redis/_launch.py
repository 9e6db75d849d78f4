"""Creating, attaching to and restarting a redis share (used by `Share`
through the registry: `BACKEND`)."""

from __future__ import annotations

import json
import os
import secrets
from subprocess import Popen
from typing import TYPE_CHECKING

from ..._core._errors import KeyRequired, RestartRefused
from .._process import launch_config, spawn
from . import _client
from ._client import RedisInfo, check_share, init_share
from ._coordinator import LEASE_S
from ._signing import resolve_key

if TYPE_CHECKING:
    from .._protocol import Backend, BackendInfo


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


class RedisBackend:
    """The redis backend's `Backend`: the share lives in Redis, its
    coordinator is a process of the owner (any other may stand by)."""

    def create(self, name: str, url: str, key, window: float) -> tuple[RedisInfo, Popen]:
        info = info_for(url, name, key, create=True)
        process, _lost = start(info, window, create=True)
        return info, process

    def attach(self, url: str, name: str | None, key) -> RedisInfo:
        return info_for(url, name, key, create=False)

    def restart(self, info: BackendInfo, window: float) -> tuple[RedisInfo, Popen, list[str]]:
        if not isinstance(info, RedisInfo):
            raise RestartRefused(f"not a redis share: {info!r}")
        # Nothing to salvage: the committed state and every command after
        # it are in Redis; the new coordinator continues from there.
        process, lost = start(info, window)
        return info, process, lost


BACKEND: Backend = RedisBackend()  # checked against the protocol by basedpyright


def start(info: RedisInfo, window: float, create: bool = False) -> tuple[Popen, list[str]]:
    """Start a coordinator process for `info` (after creating the share's
    keys if `create`): (process, names that could not be restored)."""
    if create:
        init_share(info)
    config = launch_config(
        window,
        url=info.url,
        name=info.name,
        key=info.key.hex(),
        timeout=info.timeout,
        ttl=info.ttl,
        wait=3 * LEASE_S,  # a predecessor just killed may hold the lease that long
    )

    def undo():
        if create:
            _client.delete_share(info)

    process, line = spawn("accord.backends.redis._coordinator", config, b"", info.name, undo)
    return process, json.loads(line[len(b"READY") :] or b"[]")
