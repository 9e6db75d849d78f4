"""Starting a coordinator process (backends/_process.py), shared by shm and redis."""

from __future__ import annotations

import os

import pytest
from run_names import share_name

from accord import CoordinatorStartFailed
from accord.backends._process import launch_config, spawn


def test_a_coordinator_that_fails_to_start_says_why_and_is_undone():
    undone = []
    config = launch_config(
        0.002,
        stem=f"accord.{os.getuid()}.{share_name('bad-start')}~0",
        socket_path=f"/nonexistent/{share_name('bad-start')}.sock",
        key="not hex",  # the coordinator fails reading its configuration
        restore=False,
    )
    with pytest.raises(CoordinatorStartFailed, match=rf"{share_name('bad-start')}.*ValueError"):
        spawn(
            "accord.backends.shm._coordinator",
            config,
            b"",
            share_name("bad-start"),
            lambda: undone.append(1),
        )
    assert undone == [1]


def test_launch_config_carries_what_every_coordinator_reads():
    config = launch_config(0.5, url="x")
    assert config["window"] == 0.5 and config["owner_pid"] == os.getpid() and config["url"] == "x"
    assert "" not in config["sys_path"]  # the owner's cwd, absolute: the coordinator's differs
