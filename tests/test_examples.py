"""The examples run, and end with what they promise."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).parent.parent / "examples"


@pytest.mark.parametrize(
    ("script", "expected"),
    [
        ("demo.py", "10000 games from 4 processes, none lost."),
        ("connect_by_name.py", "30 signatures from 3 unrelated processes"),
        ("read_modify_write.py", "sell_with_lock: sold 100 tickets of 100 from 3 processes"),
        ("recover.py", "restarted (coordinator pid"),
        ("pool.py", "asyncio: 285 from 10 awaited tasks; hits now 1010"),
        ("work_queue.py", "30 items done once by 3 independent processes"),
    ],
)
def test_example(script, expected):
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / script)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=EXAMPLES.parent,
    )
    assert result.returncode == 0, result.stderr
    assert expected in result.stdout
