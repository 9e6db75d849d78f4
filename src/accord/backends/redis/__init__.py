"""The redis backend: one share used by processes on many machines.

``Share(backend="redis://host:6379/0", name="run-7")`` keeps the share's
committed state, write flags and command stream in Redis; any process
anywhere attaches with ``Share.connect("redis://host:6379/0", name="run-7")``
(and the share's key).  See the README's "Backends" section.
"""

from ._client import BackendUnavailable, RedisInfo
from ._launch import BACKEND
from ._signing import TamperedPayload

__all__ = ["BACKEND", "BackendUnavailable", "RedisInfo", "TamperedPayload"]
