"""The background thread that tells other workers this one is alive."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

log = logging.getLogger("accord.work")


class Heartbeat:
    """Calls ``beat()`` every ``interval`` seconds until stopped.

    ``beat`` returns False when other workers had already given this one up
    (it was suspended, or the database was unreachable, for longer than the
    heartbeat timeout): its current item has been handed out again.
    """

    def __init__(self, beat: Callable[[], bool], interval: float, name: str) -> None:
        self._beat = beat
        self._interval = interval
        self._stop = threading.Event()
        # A daemon: a worker that exits without finishing its loop must not
        # hang on this thread; its items are reclaimed after the timeout.
        self._thread = threading.Thread(
            target=self._run, name=f"accord-heartbeat-{name}", daemon=True
        )

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                if not self._beat():
                    log.warning(
                        "this worker missed its heartbeat timeout; "
                        "its current item was handed to another worker"
                    )
            except Exception as exc:
                # A database that is briefly unreachable must not end the
                # worker; if it stays unreachable, others reclaim the item.
                log.warning("heartbeat failed: %s", exc)
