"""Which backend a ``backend=`` value names: a URL scheme, or a keyword.

    shm://NAME  shm (or "shm")        processes of one machine, the default
    memory://   memory (or "memory")  threads of one process
    redis://... rediss://... unix://... redis

A new backend adds its scheme here (and its folder under backends/, whose
package exports ``BACKEND``, a `_protocol.Backend`).
"""

from __future__ import annotations

import importlib
import os
import re
import secrets
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ._protocol import Backend

# scheme -> backend folder
SCHEMES = {
    "shm": "shm",
    "memory": "memory",
    "redis": "redis",
    "rediss": "redis",
    "unix": "redis",
}

# Backends whose URL locates a server; a share there is named by name=.
# For the others the URL's rest is the share's name (shm://NAME).
SERVED = frozenset({"redis"})

NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,47}")


def backend_of(value: str) -> tuple[str, str]:
    """(backend, rest): for a URL its scheme's backend and what follows
    ``://`` (a redis URL is kept whole); a bare keyword is its own backend."""
    if not isinstance(value, str):
        raise ValueError(f"unknown backend {value!r}: {_choices()}")
    scheme, sep, rest = value.partition("://")
    backend = SCHEMES.get(scheme)
    if backend is None or (not sep and scheme not in ("shm", "memory")):
        raise ValueError(f"unknown backend {value!r}: {_choices()}")
    return backend, (value if backend in SERVED else rest)


def backend(kind: str) -> Backend:
    """The backend `kind` (a folder `backend_of` names): its package's
    ``BACKEND``, imported on first use (redis-py only for a redis share)."""
    return importlib.import_module(f"{__package__}.{kind}").BACKEND


def for_share(value: str, name: str | None) -> tuple[Backend, str, str]:
    """(backend, url, name) of ``Share(name, backend=value)``: url is what
    locates the backend's server ("" for none); a share without a name gets
    a fresh one."""
    kind, rest = backend_of(value)
    url = ""
    if kind in SERVED:
        url = rest
    elif rest:  # shm://NAME
        if name is not None and name != rest:
            raise ValueError(f"two names for one share: name={name!r} and {value!r}")
        name = rest
    if name is None:
        name = f"anon-{os.getpid()}-{secrets.token_hex(4)}"
    return backend(kind), url, check_name(name)


def for_connect(target: str, name: str | None) -> tuple[Backend, str, str | None]:
    """(backend, url, name) of ``Share.connect(target, name)``: a bare name
    is an shm share's."""
    if "://" not in target:
        if name is not None:
            raise ValueError("name= and key= go with a Redis URL: Share.connect(url, name=...)")
        return backend("shm"), "", check_name(target)
    kind, rest = backend_of(target)
    if kind in SERVED:
        return backend(kind), rest, (None if name is None else check_name(name))
    if name is not None and rest and name != rest:
        raise ValueError(f"two names for one share: name={name!r} and {target!r}")
    name = rest or name
    return backend(kind), "", (None if name is None else check_name(name))


def check_name(name) -> str:
    if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name):
        raise ValueError(
            f"invalid share name {name!r}: use 1-48 letters, digits, '_', '.', '-'"
            " starting with a letter or digit"
        )
    return name


def _choices() -> str:
    return (
        "use 'shm' or 'shm://NAME' (processes of one machine), 'memory' or 'memory://' "
        "(threads of this process) or a Redis URL (redis://host:port/db, rediss://..., "
        "unix://...)"
    )
