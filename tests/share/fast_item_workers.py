"""Workers of test_fast_item_reads.py, in a module of their own: a
sub-interpreter worker imports the module of its target, and test modules
import hypothesis (whose dependencies include a PyO3 module, which
sub-interpreters refuse)."""

from __future__ import annotations

WAIT_S = 60  # for a worker's answer, on a loaded machine
READS_AND_INCREMENTS = 200


def serve_items(share, commands, answers) -> None:
    """A worker: writes an item of `share.d` / `share.lst` / an attribute of
    `share.obj` as told, or reads one (so that its own fast path holds it),
    answering each with what it then reads back."""
    while True:
        command = commands.get(timeout=WAIT_S)
        what = command[0]
        if what == "stop":
            return
        if what == "d":
            share.d[command[1]] = command[2]
            answers.put(share.d[command[1]])  # its own write, read back
        elif what == "lst":
            share.lst[command[1]] = command[2]
            answers.put(share.lst[command[1]])
        elif what == "attr":
            share.obj.attr = command[1]
            answers.put(share.obj.attr)
        else:  # "read": held by this worker's proxies, then read again
            share.d[command[1]], share.lst[0], share.obj.attr
            answers.put((share.d[command[1]], share.lst[0], share.obj.attr))


def read_then_increment_items(share, n) -> None:
    d, lst = share.d, share.lst
    for _ in range(n):
        share.d["n"]
        share.d["n"] += 1  # (...which must not serve this one: an AUGMENT)
        d["m"]
        d["m"] += 1
        lst[0]
        lst[0] += 1
        share.obj.attr  # noqa: B018
        share.obj.attr += 1


class Plain:
    """An object with instance attributes only: `share.obj.attr` is held."""

    def __init__(self, attr=0) -> None:
        self.attr = attr
