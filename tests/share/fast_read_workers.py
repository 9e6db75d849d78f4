"""Workers of test_fast_reads.py, in a module of their own: a sub-interpreter
worker imports the module of its target, and test modules import hypothesis
(whose dependencies include a PyO3 module, which sub-interpreters refuse)."""

from __future__ import annotations

WAIT_S = 60  # for a worker's answer, on a loaded machine
READS_AND_INCREMENTS = 200


def serve(share, commands, answers) -> None:
    """A worker: writes or reads `share.x` as told, answering each."""
    while True:
        command = commands.get(timeout=WAIT_S)
        if command[0] == "stop":
            return
        if command[0] == "write":
            share.x = command[1]
            answers.put(("wrote", share.x))  # its own write, read back
        else:
            share.x  # noqa: B018  (remembered: the next read may come from the cache)
            answers.put(("read", share.x))


def read_then_increment(share, n) -> None:
    for _ in range(n):
        share.counter  # noqa: B018  (remembered by this read...)
        share.counter += 1  # (...which must not serve this one: an AUGMENT)
