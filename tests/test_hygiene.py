"""The suite's own hygiene: its names and its cleaning."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from run_names import PREFIX, our_segments, share_name

from accord._core._segment import Segment

ROOT = Path(__file__).resolve().parents[1]


def _prefix_of_a_new_run(env: dict[str, str]) -> str:
    done = subprocess.run(
        [sys.executable, "-c", "import run_names; print(run_names.PREFIX)"],
        cwd=Path(__file__).parent,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return done.stdout.strip()


def test_each_run_of_the_suite_names_its_shares_apart():
    fresh = {k: v for k, v in os.environ.items() if k != "ACCORD_TEST_RUN"}
    first, second = _prefix_of_a_new_run(fresh), _prefix_of_a_new_run(fresh)
    assert first != second and first.startswith("test-") and second.startswith("test-")
    assert PREFIX not in (first, second)
    # A worker of this run (which inherits our environment) names alike.
    assert _prefix_of_a_new_run(dict(os.environ)) == PREFIX
    assert share_name("x") == PREFIX + "x"


def test_the_leftover_check_counts_only_this_runs_segments():
    uid = os.getuid()
    other_run = f"test-{os.getpid() + 1}-"  # another suite of this user, running now
    assert other_run != PREFIX
    theirs = Segment.create(f"accord.{uid}.{other_run}hygiene~control", 64)
    mine = Segment.create(f"accord.{uid}.{share_name('hygiene')}~control", 64)
    try:
        found = our_segments()
        assert mine.name in found
        assert theirs.name not in found
    finally:
        for seg in (theirs, mine):
            seg.unlink()
            seg.close()


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
def test_make_clean_removes_built_extensions_and_build_directories(tmp_path):
    shutil.copy(ROOT / "Makefile", tmp_path / "Makefile")
    built = [
        tmp_path / "src/accord/_core/_atomic.cpython-311-x86_64-linux-gnu.so",
        tmp_path / "src/accord/backends/shm/_ring.cpython-313-x86_64-linux-gnu.so",
        tmp_path / "src/accord/backends/shm/_atomic.cpython-312-x86_64-linux-gnu.so",  # moved since
        tmp_path / "build/lib.linux-x86_64-cpython-311/accord/_core/_fastread.so",
        tmp_path / "benchmarks/build/temp/x.o",
    ]
    kept = [tmp_path / "src/accord/_core/_atomic.c", tmp_path / "src/accord/_core/_segment.py"]
    for path in (*built, *kept):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"")
    subprocess.run(["make", "-s", "clean"], cwd=tmp_path, check=True, timeout=60)
    assert [p for p in built if p.exists()] == []
    assert not (tmp_path / "build").exists() and not (tmp_path / "benchmarks/build").exists()
    assert all(p.exists() for p in kept)
