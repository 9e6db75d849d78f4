"""The memory backend: a share for the threads of one process.

``Share(backend="memory")`` runs its coordinator as a thread of this process
and keeps snapshots and write flags in this process's memory: no
subprocess, no shared memory, nothing to clean up.  The contract is the same
as for the other backends (values are still copied in and out, so a thread
never sees another's object change under it); a memory share cannot be
handed to another process.
"""

from ._memory import BACKEND

__all__ = ["BACKEND"]
