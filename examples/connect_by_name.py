"""Unrelated processes attach to one share by name.

    python examples/connect_by_name.py

The first process creates ``Share(name="guestbook")``; it then starts three
independent Python processes (not children that inherit anything: plain
``python this_file.py sign N``), each of which attaches with
``Share.connect("guestbook")`` and signs the book.  A SLURM array job or
three terminals would do the same.
"""

from __future__ import annotations

import subprocess
import sys

from accord import Share

NAME = "guestbook-example"


def sign(visitor: int) -> None:
    share = Share.connect(NAME)
    for line in range(10):
        share.book.append(f"visitor {visitor}, line {line}")
        share.signatures += 1
    share.flush()  # make sure every line is in before this process exits


def main() -> None:
    with Share(name=NAME) as share:
        share.book = []
        share.signatures = 0
        visitors = [subprocess.Popen([sys.executable, __file__, "sign", str(v)]) for v in range(3)]
        for visitor in visitors:
            assert visitor.wait(timeout=60) == 0
        assert share.signatures == 30 == len(share.book)
        print(f"{share.signatures} signatures from 3 unrelated processes; last: {share.book[-1]!r}")


if __name__ == "__main__":
    if sys.argv[1:2] == ["sign"]:
        sign(int(sys.argv[2]))
    else:
        main()
