"""Slices, masks and index arrays as keys: reads, writes, deletes and
in-place operators, on every backend."""

from __future__ import annotations

import pytest


def test_list_slices(any_share):
    share = any_share
    share.lst = [0, 1, 2, 3, 4, 5]
    local = [0, 1, 2, 3, 4, 5]
    assert share.lst[1:3] == local[1:3]
    assert share.lst[::-2] == local[::-2]
    share.lst[1:3] = [9, 9, 9]
    local[1:3] = [9, 9, 9]
    assert share.lst == local
    del share.lst[0:1]
    del local[0:1]
    assert share.lst == local
    share.lst[::2] = ["a"] * len(local[::2])
    local[::2] = ["a"] * len(local[::2])
    assert share.lst == local
    share.lst[1:2] += ["x", "y"]
    local[1:2] += ["x", "y"]
    assert share.lst == local
    del share.lst[::3]
    del local[::3]
    assert share.lst == local
    with pytest.raises(ValueError):  # a wrong-length extended slice, raised here
        share.lst[::2] = []
        share.flush()
    assert share.get("lst") == local


def test_a_slice_read_is_a_private_copy(any_share):
    any_share.lst = [[1], [2], [3]]
    part = any_share.lst[0:2]
    part.append([9])
    assert any_share.lst == [[1], [2], [3]]


def test_nested_slices(any_share):
    any_share.cfg = {"rows": [1, 2, 3, 4]}
    any_share.cfg["rows"][1:] = [7]
    del any_share.cfg["rows"][:1]
    assert any_share.cfg == {"rows": [7]}


def test_bytearray_slices(any_share):
    any_share.buf = bytearray(b"hello")
    any_share.buf[0:1] = b"J"
    assert any_share.buf[0:2] == bytearray(b"Je")
    assert any_share.get("buf") == bytearray(b"Jello")


def test_numpy_slices_masks_and_index_arrays(any_share):
    np = pytest.importorskip("numpy")
    share = any_share
    share.arr = np.arange(10)
    local = np.arange(10)
    share.arr[1:3] = [-1, -2]
    local[1:3] = [-1, -2]
    share.arr[share.get("arr") > 6] = 0
    local[local > 6] = 0
    share.arr[np.array([0, 5])] = 42
    local[np.array([0, 5])] = 42
    share.arr[2:6] += 100
    local[2:6] += 100
    share.arr[local == 42] *= 2
    local[local == 42] *= 2
    assert (share.get("arr") == local).all()
    assert (share.arr[::3] == local[::3]).all()
    assert (share.arr[local > 50] == local[local > 50]).all()
    grid = np.zeros((3, 3))
    share.grid = grid.copy()
    share.grid[1:, 0] = 5
    grid[1:, 0] = 5
    share.grid[:, 1:] -= 1
    grid[:, 1:] -= 1
    assert (share.get("grid") == grid).all()


def test_a_numpy_selection_is_read_only(any_share):
    np = pytest.importorskip("numpy")
    any_share.arr = np.arange(5)
    view = any_share.arr[1:3]  # locally a view: writing to it would change arr
    with pytest.raises(ValueError, match="read-only"):
        view[0] = 99
    assert (any_share.get("arr") == np.arange(5)).all()
