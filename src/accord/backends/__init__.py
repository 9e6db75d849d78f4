"""Where committed state lives and how commands travel.

``shm`` (one machine, the default): snapshots and write flags in POSIX
shared memory, commands over authenticated Unix domain sockets.
"""
