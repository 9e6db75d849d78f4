"""accord demo: four processes share a counter, a list and a user object.

Run with ``make demo``.  Every worker process plays games and records them in
the same Share; the parent shows progress from the shared counter and checks
at the end that not a single update was lost.
"""

from __future__ import annotations

import multiprocessing

from tqdm import tqdm

from accord import Share

WORKERS = 4
GAMES_PER_WORKER = 2_500
TOTAL = WORKERS * GAMES_PER_WORKER


class Leaderboard:
    """A plain user class: its methods run once each, on the share's coordinator."""

    def __init__(self):
        self.best = {}
        self.rounds = 0

    def submit(self, player, score):
        self.rounds += 1
        if score > self.best.get(player, -1):
            self.best[player] = score

    def top(self, n=3):
        return sorted(self.best.items(), key=lambda kv: -kv[1])[:n]


def play(args):
    share, worker = args
    for game in range(GAMES_PER_WORKER):
        score = (worker * 7919 + game * 104729) % 1000
        share.games += 1  # one atomic command: never a lost update
        share.scores.append(score)  # fire-and-forget: returns at once
        share.board.submit(f"player-{worker}", score)  # runs on the coordinator
    return share.board.rounds  # a read: sees at least this worker's own writes


def main() -> None:
    with Share() as share:
        share.games = 0
        share.scores = []
        share.board = Leaderboard()
        context = multiprocessing.get_context("spawn")
        with context.Pool(WORKERS) as pool, tqdm(total=TOTAL, desc="games", unit="game") as bar:
            result = pool.map_async(play, [(share, w) for w in range(WORKERS)])
            while not result.ready():
                result.wait(0.1)
                bar.update(share.games - bar.n)  # progress read from the shared counter
            seen = result.get()
            bar.update(share.games - bar.n)
        assert min(seen) >= GAMES_PER_WORKER
        # The final check: every update from every process is there, exactly once.
        assert share.games == TOTAL, share.games
        assert len(share.scores) == TOTAL
        assert share.board.rounds == TOTAL
        print(f"{share.games} games from {WORKERS} processes, none lost.")
        print("top players:", share.board.top())


if __name__ == "__main__":
    main()
