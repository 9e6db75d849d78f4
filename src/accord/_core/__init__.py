"""The neutral core: what every layer above builds on, and nothing else.

The coordinator's state machine (`_coordinator`: apply, commit, locks; no
I/O) and what it asks of a backend's server (`_server`), the wire
protocol's operations (`_protocol`), serialization
(`_serialize`), value kinds and MISSING (`_values`), write-flag slots
(`_slots`), every error a user can catch (`_errors`), remote-error packing
(`_remote`) and accord's loggers (`_logging`).  Two shared-memory primitives
live here too, because the shm backend and spawn's big frames both use
them: private 0600 segments checked on open (`_segment`) and 64-bit
atomics, futex waits and descriptor-free mappings (`_atomic`, in C).

Imports point down only: `_core` imports no backend, no share, no spawn
(tests/test_structure.py keeps it so).
"""
