"""Where committed state lives and how commands travel.

``shm`` (one machine, the default): snapshots and write flags in POSIX
shared memory, commands over authenticated Unix domain sockets.
``memory`` (one process): a coordinator thread, everything in this
process's memory.  ``redis`` (many machines): snapshots, flags and a command
stream in Redis, every payload signed.  The seam they share is described
in `_protocol.py`.
"""
