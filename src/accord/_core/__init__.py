"""The neutral core: what every layer above builds on, and nothing else.

The coordinator's state machine (`_coordinator`: apply, commit, locks; no
I/O) and what it asks of a backend's server (`_server`), the wire
protocol's operations (`_protocol`), serialization
(`_serialize`), value kinds and MISSING (`_values`), and write-flag slots
(`_slots`).  Errors (`accord._errors`), remote-error packing
(`accord._remote`) and accord's loggers (`accord._logging`) are core too.

Imports point down only: `_core` imports no backend, no share, no spawn
(tests/test_structure.py keeps it so).
"""
