"""Creating, attaching to and restarting an shm share (used by `Share`
through the registry: `BACKEND`)."""

from __future__ import annotations

import contextlib
import os
import pickle
import secrets
from subprocess import Popen
from typing import TYPE_CHECKING

from ..._core._errors import AccordError, RestartRefused, ShareExists, ShareNotFound
from .._process import launch_config, spawn
from . import _transport
from ._client import (
    ShareInfo,
    abandoned_records,
    client_for,
    forget,
    load_record,
    save_record,
)
from ._rings import RingSegment, collect, owners
from ._server import remove_leftovers

if TYPE_CHECKING:
    from .._protocol import Backend, BackendInfo


class ShmBackend:
    """The shm backend's `Backend`: a coordinator process per share, found
    by name through this user's runtime directory."""

    def create(self, name: str, url: str, key, window: float) -> tuple[ShareInfo, Popen]:
        if key is not None:
            raise ValueError("key= is for network backends; shm shares make their own key")
        return _start_coordinator(name, window)

    def attach(self, url: str, name: str | None, key) -> ShareInfo:
        if key is not None:
            raise ValueError("name= and key= go with a Redis URL: Share.connect(url, name=...)")
        if name is None:
            raise ValueError("which share? Share.connect(name) or Share.connect('shm://NAME')")
        info = load_record(name)
        if info is None:
            raise ShareNotFound(f"no share named {name!r} is running for this user")
        client_for(info).check_alive()
        return info

    def restart(self, info: BackendInfo, window: float) -> tuple[ShareInfo, Popen, list[str]]:
        if not isinstance(info, ShareInfo):
            raise RestartRefused(f"not an shm share: {info!r}")
        client = client_for(info)
        # First mark the dead incarnation replaced: processes stop appending
        # to its command rings and follow the share to the new one.  Then
        # close the rings: a process that passed that check just before
        # cannot append any more (it is told, and sends to the new one), so
        # what they hold now is all that was ever queued.
        client.retire()
        client.salvage()  # errors posted to this process, raised after the restart
        try:
            rings = RingSegment.attach(f"{info.stem}~rings")
        except FileNotFoundError:
            entries, writers = {}, {}
        else:
            try:
                entries = collect(rings)
                writers = owners(rings, entries)  # told of replayed writes that fail
            finally:
                rings.close()
        restored, lost, includes = client.snapshots.salvage()
        for name in lost:  # the object is gone, and the writes to it with it
            includes[name] = 1 << 63
        forget(info)
        with contextlib.suppress(FileNotFoundError):  # its path is the new one's
            os.unlink(info.socket_path)
        # The new coordinator applies the entries its predecessor had not
        # committed (exactly once: see _coordinator.replay) before it is
        # ready.  The dead one's segments go only then: if the new one fails
        # to start, restart() may be called again and finds them all.
        new, process = _start_coordinator(
            info.name, window, (restored, includes, entries, writers), spare=info.stem
        )
        remove_leftovers(info.stem, None)
        return new, process, lost


BACKEND: Backend = ShmBackend()  # checked against the protocol by basedpyright


def _start_coordinator(
    name: str, window: float, restore: tuple | None = None, spare: str | None = None
):
    """Start a coordinator for share `name` (from `restore`, a restart);
    remove what dead ones of that name left, but the segments of `spare`."""
    runtime = _transport.runtime_dir()
    socket_path = runtime / f"{name}.sock"
    key_file = runtime / f"{name}.key"
    # Segment names carry a random part: another local user, who can list
    # /dev/shm, cannot create them first (see _segment for the checks).
    # "~" is not allowed in share names: "accord.UID.NAME~" is this share's.
    stem = f"accord.{os.getuid()}.{name}~{secrets.token_hex(8)}"
    if key_file.exists() or socket_path.exists():
        _refuse_if_alive(name)
        # A dead share's, of this name.
        remove_leftovers(
            f"accord.{os.getuid()}.{name}", str(socket_path), keep_record=True, spare=spare
        )
    for dead in abandoned_records():  # and those of other dead shares of this user
        remove_leftovers(dead.stem, dead.socket_path)
    key = secrets.token_bytes(32)
    config = launch_config(
        window,
        stem=stem,
        socket_path=str(socket_path),
        key=key.hex(),
        restore=restore is not None,
    )
    extra = pickle.dumps(restore, 5) if restore is not None else b""
    process, _line = spawn(
        "accord.backends.shm._coordinator",
        config,
        extra,
        name,
        # A restart that fails keeps the record: restart() may be tried again.
        lambda: remove_leftovers(stem, str(socket_path), keep_record=restore is not None),
    )
    info = ShareInfo(name, stem, str(socket_path), key, process.pid)
    save_record(info)
    return info, process


def _refuse_if_alive(name: str) -> None:
    info = load_record(name)
    if info is None:
        return
    pid = info.pid
    try:
        os.kill(pid, 0)
    except OSError:
        return  # nobody home: leftovers of a dead share
    try:
        BACKEND.attach("", name, None)
    except (AccordError, OSError):  # lost, closed, refused: not a live share
        return
    raise ShareExists(
        f"a share named {name!r} is already running (coordinator pid {pid}); "
        f"attach to it with Share.connect({name!r}) or choose another name"
    )
