"""Workers of test_c_writes.py, in a module of their own: a sub-interpreter
worker imports the module of its target, and test modules import hypothesis
(whose dependencies include a PyO3 module, which sub-interpreters refuse)."""

from __future__ import annotations


def mixed_writer(share, wid: int, n: int) -> None:
    lst = share.lst
    for i in range(n):
        share.counter += 1  # C
        if i % 3 == 0:
            lst.append((wid, i))  # a tuple: the Python path
        else:
            lst.append(f"{wid}:{i}")  # C
        if i % 10 == 0:
            share.counter += 2**70  # the Python path
            share.counter -= 2**70
    share.flush()


def order(items: list, wid: int) -> list[int]:
    out = []
    for item in items:
        if isinstance(item, tuple) and item[0] == wid:
            out.append(item[1])
        elif isinstance(item, str) and item.split(":")[0] == str(wid):
            out.append(int(item.split(":")[1]))
    return out


def child_writes(share, n: int) -> None:
    for i in range(n):
        share.counter += 1
        share.lst.append(i)
    share.flush()
