"""Small edges of the contract: what is refused, and where."""

from __future__ import annotations

import concurrent.futures
import multiprocessing
import pickle

import pytest

from accord import Share, ShareNotPortable, UnshareableError


def test_an_open_file_is_refused(any_share, tmp_path):
    path = tmp_path / "data.txt"
    path.write_text("contents")
    with open(path) as f, pytest.raises(UnshareableError, match="open file"):
        any_share.f = f
    with open(path, "rb") as f, pytest.raises(UnshareableError, match=r"share\.box\['f'\]"):
        any_share.box = {"f": f}
    any_share.lst = []
    with open(path) as f, pytest.raises(UnshareableError, match="open file"):
        any_share.lst.append(f)
    assert "f" not in any_share and "box" not in any_share
    assert any_share.lst == []


def test_in_memory_streams_are_values(any_share):
    import io

    any_share.buf = io.BytesIO(b"abc")
    assert any_share.get("buf").getvalue() == b"abc"


def test_the_empty_name(any_share):
    with pytest.raises(AttributeError, match="non-empty"):
        setattr(any_share, "", 1)
    with pytest.raises(AttributeError):
        getattr(any_share, "")
    with pytest.raises(AttributeError, match="non-empty"):
        delattr(any_share, "")
    with pytest.raises(TypeError, match="non-empty"):
        any_share[""] = 1
    assert list(any_share) == []


def test_api_names_are_not_deleted_as_shared_objects(any_share):
    any_share["close"] = 1
    with pytest.raises(AttributeError, match=r"part of the Share API.*del share\['close'\]"):
        del any_share.close
    with pytest.raises(AttributeError, match="private"):
        del any_share._link
    assert any_share["close"] == 1
    del any_share["close"]
    assert "close" not in any_share


def _read(share):
    return share.x


def test_a_memory_share_is_refused_when_sent_to_a_multiprocessing_pool():
    with Share(backend="memory") as share:
        share.x = 1
        ctx = multiprocessing.get_context("spawn")
        with ctx.Pool(1) as pool:
            with pytest.raises(ShareNotPortable):
                pool.apply_async(_read, (share,)).get(timeout=30)
            # The worker survived: the pool still works.
            assert pool.apply_async(abs, (-3,)).get(timeout=30) == 3
        with (
            concurrent.futures.ProcessPoolExecutor(1, mp_context=ctx) as ex,
            pytest.raises(ShareNotPortable),
        ):
            ex.submit(_read, share).result(timeout=30)
        # Within its process it still pickles (a value holding the share).
        assert pickle.loads(pickle.dumps(share)).x == 1
