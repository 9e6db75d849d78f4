"""Read-modify-write across statements: apply() and lock().

    python examples/read_modify_write.py

Six processes sell tickets from a stock of 100.  "Check the stock, then take
one" is two steps; without protection two processes could both see the last
ticket.  Half of the sellers use ``share.apply`` (one atomic step on the
coordinator), half use ``share.lock`` (any code between acquire and release).
Not a ticket is oversold.
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
        share.stock = {"left": 100}
        context = multiprocessing.get_context("spawn")
        with context.Pool(6) as pool:
            apply_sales = pool.map_async(sell_with_apply, [share] * 3)
            lock_sales = pool.map_async(sell_with_lock, [share] * 3)
            sold = sum(apply_sales.get(60)) + sum(lock_sales.get(60))
        assert sold == 100 and share.stock["left"] == 0, (sold, share.stock)
        print(f"sold {sold} tickets of 100 from 6 processes, none twice")


if __name__ == "__main__":
    main()
