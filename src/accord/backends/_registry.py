"""Which backend a ``backend=`` value names: a URL scheme, or a keyword.

    shm://NAME  shm (or "shm")        processes of one machine, the default
    memory://   memory (or "memory")  threads of one process
    redis://... rediss://... unix://... redis

A new backend adds its scheme here (and its folder under backends/).
"""

from __future__ import annotations

# scheme -> backend folder
SCHEMES = {
    "shm": "shm",
    "memory": "memory",
    "redis": "redis",
    "rediss": "redis",
    "unix": "redis",
}


def backend_of(value: str) -> tuple[str, str]:
    """(backend, rest): for a URL its scheme's backend and what follows
    ``://`` (a redis URL is kept whole); a bare keyword is its own backend."""
    if not isinstance(value, str):
        raise ValueError(f"unknown backend {value!r}: {_choices()}")
    scheme, sep, rest = value.partition("://")
    backend = SCHEMES.get(scheme)
    if backend is None or (not sep and scheme not in ("shm", "memory")):
        raise ValueError(f"unknown backend {value!r}: {_choices()}")
    return backend, (value if backend == "redis" else rest)


def _choices() -> str:
    return (
        "use 'shm' or 'shm://NAME' (processes of one machine), 'memory' or 'memory://' "
        "(threads of this process) or a Redis URL (redis://host:port/db, rediss://..., "
        "unix://...)"
    )
