"""Helpers of the work-distribution tests: waiting, barriers, worker processes."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

WORKER = Path(__file__).with_name("worker.py")


def wait_until(condition, timeout: float = 20.0, what: str = "condition"):
    """Poll ``condition`` until it returns something true; fail after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = condition()
        if result:
            return result
        time.sleep(0.02)
    pytest.fail(f"timed out after {timeout} s waiting for {what}")


# For the workers that must outlive a test: a worker is presumed dead by the
# timeout it registered with, so the ones killed on purpose get a short one
# and these a long one (a loaded machine can starve a heartbeat for seconds),
# with the short interval, which is also how often their claims look for
# dead workers.
SURVIVOR = {"heartbeat_timeout": 120.0, "heartbeat_interval": 0.1}


def barrier(tmp_path: Path) -> Path:
    """An empty directory for the workers' ``barrier`` option."""
    where = tmp_path / "barrier"
    where.mkdir()
    return where


class Workers:
    """Starts worker processes and makes sure none outlives the test."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen] = []

    def start(self, **config) -> subprocess.Popen:
        proc = subprocess.Popen(
            [sys.executable, str(WORKER), json.dumps(config)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.procs.append(proc)
        return proc

    def run(self, configs: list[dict], timeout: float = 90.0) -> list[list[str]]:
        """Start one worker per config at once; wait; the keys each one did."""
        procs = [self.start(**c) for c in configs]
        return [self.finish(p, timeout) for p in procs]

    @staticmethod
    def finish(proc: subprocess.Popen, timeout: float = 90.0) -> list[str]:
        out, err = proc.communicate(timeout=timeout)
        assert proc.returncode == 0, err
        return [line.split(" ", 1)[1] for line in out.splitlines() if line.startswith("done ")]

    def close(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
            proc.communicate()
