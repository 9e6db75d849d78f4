"""pandas and numpy: writes through indexers (.loc, .at, .iloc, .iat) are
one command on the coordinator; a write that would land on a temporary
raises instead of being lost."""

from __future__ import annotations

import pytest

from accord import TemporaryTarget

pd = pytest.importorskip("pandas")
np = pytest.importorskip("numpy")

BACKENDS = ("shm", "memory", "redis")


def _frame():
    return pd.DataFrame({"done": [False] * 4, "n": [0, 0, 0, 0], "x": [1.0, 2.0, 3.0, 4.0]})


def test_indexer_writes_reach_the_share(any_share):
    share = any_share
    share.df = _frame()
    local = _frame()
    for target in (share.df, local):
        target.loc[1, "done"] = True
        target.at[2, "done"] = True
        target.iloc[3, 1] = 7
        target.iat[0, 1] = 5
        target.loc[target["x"] > 2.5, "x"] = 0.0
        target.loc[0, "n"] += 10
        target.iloc[1:3, 1] = [8, 9]
    pd.testing.assert_frame_equal(share.get("df"), local)


def test_indexer_reads_see_indexer_writes(any_share):
    any_share.df = _frame()
    for i in range(20):  # each read waits for the write before it, whichever indexer
        any_share.df.loc[0, "n"] = i
        assert any_share.df.at[0, "n"] == i
        assert any_share.df.iloc[0, 1] == i
        assert any_share.df.loc[0:1, "n"].tolist() == [i, 0]


def test_a_write_to_a_pandas_temporary_raises(any_share):
    any_share.df = _frame()
    column = any_share.df["n"]  # a proxy for share.df["n"], a column made anew each time
    with pytest.raises(TemporaryTarget):
        column[0] = 99
        any_share.flush()
    assert any_share.df["n"].tolist() == [0, 0, 0, 0]


def test_numpy_views_write_through(any_share):
    any_share.grid = np.zeros((3, 3))
    row = any_share.grid[1]  # a view, on the coordinator
    row[2] = 5.0
    any_share.grid[0][1] += 2.0
    expected = np.zeros((3, 3))
    expected[1, 2] = 5.0
    expected[0, 1] = 2.0
    assert (any_share.get("grid") == expected).all()
