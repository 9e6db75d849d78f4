"""Read-modify-write across statements: apply() and lock().

    python examples/read_modify_write.py

Three processes sell tickets from a stock of 100, twice.  "Check the stock,
then take one" is two steps; without protection two processes could both
see the last ticket.  First they use ``share.apply`` (one atomic step on the
coordinator), then ``share.lock`` (any code between acquire and release).
Not a ticket is oversold.

Do not mix the two on one object: a lock excludes only the other holders of
the lock, not an ``apply`` running in between.
"""

from __future__ import annotations

import multiprocessing

from accord import Share


def take_one(stock: dict) -> bool:
    if stock["left"] > 0:
        stock["left"] -= 1
        return True
    return False


def sell_with_apply(share) -> int:
    sold = 0
    while share.apply("stock", take_one):  # runs on the coordinator, atomically
        sold += 1
    return sold


def sell_with_lock(share) -> int:
    sold = 0
    while True:
        with share.lock("stock"):
            if share.stock["left"] == 0:
                return sold
            share.stock["left"] -= 1  # no other lock holder runs in between
            sold += 1


def main() -> None:
    with Share() as share:
        context = multiprocessing.get_context("spawn")
        with context.Pool(3) as pool:
            for seller in (sell_with_apply, sell_with_lock):
                share.stock = {"left": 100}
                sold = sum(pool.map(seller, [share] * 3))
                assert sold == 100 and share.stock["left"] == 0, (sold, share.stock)
                print(f"{seller.__name__}: sold {sold} tickets of 100 from 3 processes, none twice")


if __name__ == "__main__":
    main()
