"""Big objects: zero-copy reads of arrays, partial writes committed at the
cost of what changed, and never a torn read — across real processes, under
every spawn backend, on the shm and redis backends."""

from __future__ import annotations

import gc
import os
import pickle
import time
import weakref

import pytest
from run_names import share_name

np = pytest.importorskip("numpy")
pd = pytest.importorskip("pandas")

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from accord import ForeignSegment, Share  # noqa: E402
from accord.backends.shm import _buffers  # noqa: E402

BACKENDS = ("shm", "memory", "redis")  # (tests with workers: shm and redis, see conftest)
WORKERS = 4
DEADLINE_S = 30.0


@pytest.fixture
def share(any_share):
    return any_share


def _needs_numpy_in_workers(spawn_backend):
    if spawn_backend == "subinterpreter":
        # numpy's C extension loads once per process: a sub-interpreter that
        # imports it raises ImportError ("cannot load module more than once
        # per process"), and reading a shared array unpickles one.
        pytest.skip("numpy cannot be imported in a sub-interpreter")


def _join(procs):
    for p in procs:
        p.join(60)
        assert p.exitcode == 0, f"worker exit code {p.exitcode}"


# -- zero copy ---------------------------------------------------------------------


def _buffer_segments(share) -> list[str]:
    stem = share._link.info.stem
    return sorted(n for n in os.listdir("/dev/shm") if n.startswith(f"{stem}~b"))


def test_an_unchanged_read_is_the_same_read_only_view():
    with Share() as share:
        share.arr = np.arange(1_000_000, dtype=np.float64)  # 8 MB: out of band
        view = share.get("arr", copy=False)
        assert not view.flags.writeable
        with pytest.raises(ValueError):
            view[0] = 1.0
        assert share.get("arr", copy=False) is view  # no copy, no unpickling
        assert np.asarray(share.arr) is view
        assert share.arr.sum() == view.sum()
        copy = share.get("arr")  # the default: a private, writable copy
        assert copy.flags.writeable and not np.shares_memory(copy, view)
        copy[0] = 5.0
        assert share.get("arr", copy=False)[0] == 0.0
        # The buffer lives in its own private segment, mapped read-only here.
        segments = _buffer_segments(share)
        assert segments
        for name in segments:
            assert os.stat(f"/dev/shm/{name}").st_mode & 0o777 == 0o600
        del share.arr
        share.flush()
        assert _buffer_segments(share) == []
        share.small = np.arange(10)  # small buffers stay in the pickle
        share.flush()
        assert _buffer_segments(share) == []


def test_a_held_view_never_changes():
    with Share() as share:
        share.arr = np.zeros(500_000)
        held = [share.get("arr", copy=False)]
        for k in range(1, 20):
            share.arr[k] = k
            share.arr[100:200] = k
            held.append(share.get("arr", copy=False))
        for k, view in enumerate(held):
            assert view[100] == (k if k else 0.0)
            assert view[1 : k + 1].tolist() == list(range(1, k + 1))
            assert not view[k + 1 : 100].any()


def test_reader_mappings_keep_no_descriptor():
    with Share() as share:
        share.flag = 0
        share.get("flag")  # connected
        before = len(os.listdir("/proc/self/fd"))
        for i in range(20):
            share[f"a{i}"] = np.full(100_000, i, dtype=np.float64)
            assert share.get(f"a{i}", copy=False)[0] == i
        assert len(os.listdir("/proc/self/fd")) == before


def test_a_foreign_buffer_segment_is_refused(tmp_path):
    with Share() as share:
        share.arr = np.arange(100_000, dtype=np.float64)
        share.flush()
        (name,) = _buffer_segments(share)
        os.chmod(f"/dev/shm/{name}", 0o644)
        with pytest.raises(ForeignSegment, match="not private"):
            _buffers._Mapping(name)


def _mapped_file(pid, address: int) -> tuple[str, str] | None:
    """(permissions, path) of the mapping of process `pid` that holds `address`."""
    with open(f"/proc/{pid}/maps") as f:
        for line in f:
            fields = line.split()
            lo, hi = (int(x, 16) for x in fields[0].split("-"))
            if lo <= address < hi:
                return fields[1], fields[5] if len(fields) > 5 else ""
    return None


def _private_segment_maps(pid, stem: str) -> set[str]:
    """The share's buffer segments that process `pid` maps copy-on-write."""
    found = set()
    with open(f"/proc/{pid}/maps") as f:
        for line in f:
            fields = line.split()
            if len(fields) > 5 and fields[1] == "rw-p" and f"/{stem}~b" in fields[5]:
                found.add(os.path.basename(fields[5]))
    return found


def _segment_of(view) -> str:
    perms, path = _mapped_file("self", view.__array_interface__["data"][0])
    assert perms.startswith("r--"), perms  # mapped read-only
    return os.path.basename(path)


def test_the_owner_keeps_no_copy_of_what_it_assigned():
    with Share() as share:
        arr = np.arange(1_000_000, dtype=np.float64)
        gone = weakref.ref(arr)
        share.arr = arr
        share.flush()
        del arr
        gc.collect()
        assert gone() is None  # the share kept no reference to it (nor a copy)
        # Its later reads map the committed segment, like any reader's.
        view = share.get("arr", copy=False)
        assert view[7] == 7.0 and not view.flags.writeable
        assert _segment_of(view).startswith(f"{share._link.info.stem}~b")


def test_the_coordinator_holds_big_buffers_over_the_readers_pages():
    with Share() as share:
        stem, coordinator = share._link.info.stem, share.coordinator_pid
        share.arr = np.arange(1_000_000, dtype=np.float64)
        share.df = pd.DataFrame({"a": np.zeros(100_000), "b": np.arange(100_000)})
        published = {_segment_of(share.get("arr", copy=False))}
        frame = share.get("df", copy=False)
        published |= {_segment_of(frame[c].to_numpy()) for c in frame}
        # The coordinator's own copies are copy-on-write mappings of exactly
        # the segments readers map: no private copy of the data.
        assert _private_segment_maps(coordinator, stem) == published
        for k in range(1, 4):  # after each commit it moves onto the new one
            share.arr[k] = -k
            share.df.loc[k, "a"] = float(k)
            view, frame = share.get("arr", copy=False), share.get("df", copy=False)
            assert view[k] == -k and frame["a"][k] == k
            now = {_segment_of(view)} | {_segment_of(frame[c].to_numpy()) for c in frame}
            assert now != published
            assert _private_segment_maps(coordinator, stem) == now
            published = now


def _fill(arr, lo, hi, value):
    arr[lo:hi].fill(value)  # a method: what it changes is not known ahead


def _set_cells(df, rows, value):
    for r in rows:
        df.iat[r, 1] = value


def test_writes_after_the_coordinator_maps_its_copy_land(any_share):
    share = any_share
    rng = np.random.default_rng(7)
    local = rng.standard_normal(600_000)  # 4.8 MB, several pages per write
    frame = pd.DataFrame({"a": np.zeros(50_000), "b": np.arange(50_000.0)})
    share.arr, share.df = local.copy(), frame.copy()
    held = []
    for step in range(24):
        kind = step % 8
        if kind == 0:
            share.arr[step] = local[step] = -step
        elif kind == 1:
            lo = int(rng.integers(0, 590_000))
            share.apply("arr", _fill, lo, lo + 5_000, float(step))
            local[lo : lo + 5_000] = step
        elif kind == 2:
            share.arr += 1.0
            local += 1.0
        elif kind == 3:  # a new array of the same size: the old mapping is let go
            local = rng.standard_normal(600_000)
            share.arr = local.copy()
        elif kind == 4:
            share.df.loc[step, "a"] = frame.loc[step, "a"] = step
            share.df.iloc[-step, 1] = frame.iloc[-step, 1] = -step
        elif kind == 5:
            rows = rng.integers(0, 50_000, 20)
            share.apply("df", _set_cells, rows, float(step))
            _set_cells(frame, rows, float(step))
        elif kind == 6:  # a column replaced: its block is reallocated
            share.df["a"] = share.get("df")["a"] * 2 + step
            frame["a"] = frame["a"] * 2 + step
        else:
            share.df.at[7, "b"] = frame.at[7, "b"] = 0.5 * step
        view, df = share.get("arr", copy=False), share.get("df", copy=False)
        assert np.array_equal(view, local), f"step {step}"
        pd.testing.assert_frame_equal(df, frame, obj=f"step {step}")
        held.append((view, local.copy(), df, frame.copy()))
    for view, then, df, frame_then in held:  # held views never changed
        assert np.array_equal(view, then)
        pd.testing.assert_frame_equal(df, frame_then)


def test_unknown_changes_to_an_adopted_buffer_copy_the_written_pages():
    from accord._core._serialize import dumps_out_of_band

    if not _buffers._pagemap_usable():
        pytest.skip("this kernel does not tell written pages apart (/proc/self/pagemap)")
    stem = f"accord.{os.getuid()}.{share_name('adopt')}"
    writer, reader = _buffers.BufferWriter(stem), _buffers.BufferReader()
    page = _buffers.PAGE
    try:
        local = pd.DataFrame({"a": np.zeros(200_000), "b": np.zeros(200_000)})  # 3.2 MB
        data, raws = dumps_out_of_band(local)
        writer.publish("df", data, raws, None)
        mirror = writer.adopt("df", local, data)
        assert mirror is not local  # rebuilt over the published pages
        pd.testing.assert_frame_equal(mirror, local)
        assert writer.adopt("df", mirror, data) is mirror  # once
        held = []
        expected = local.copy()  # the same writes on a plain frame
        for step in range(1, 12):
            for frame in (mirror, expected):  # ranges unknown to accord
                frame.loc[step * 1000, "a"] = float(step)
                frame.iloc[step * 3000, 1] = -float(step)
            before = writer.copied
            data, raws = dumps_out_of_band(mirror)
            snapshot = writer.publish("df", data, raws, None)
            assert writer.adopt("df", mirror, data) is mirror
            copied = writer.copied - before
            frame = reader.load("df", pickle.loads(snapshot))
            pd.testing.assert_frame_equal(mirror, expected, obj=f"step {step}")
            pd.testing.assert_frame_equal(frame, expected, obj=f"step {step}")
            if 3 <= step < 8:  # every segment filled once: then only the written pages
                assert copied <= 4 * page, f"step {step}: {copied} bytes copied"
            if step >= 8:  # views held from now on: pinned, never written again
                held.append((frame, expected.copy()))
        # Replaced: the old object keeps its pages (its segment is retired,
        # never written again); the new one is adopted in its turn.
        old, then = mirror, mirror.copy()
        for step in range(5):
            new = pd.DataFrame({"a": np.full(200_000, step), "b": np.ones(200_000)})
            data, raws = dumps_out_of_band(new)
            snapshot = writer.publish("df", data, raws, None)
            mirror = writer.adopt("df", new, data)
            assert mirror is not new
            pd.testing.assert_frame_equal(reader.load("df", pickle.loads(snapshot)), new)
        pd.testing.assert_frame_equal(old, then)
        for frame, frame_then in held:
            pd.testing.assert_frame_equal(frame, frame_then)
    finally:
        reader.close()
        writer.close()


# -- partial writes ------------------------------------------------------------------


def test_slices_masks_and_index_arrays_match_numpy(any_share):
    share = any_share
    rng = np.random.default_rng(12)
    local = rng.standard_normal((300, 400))
    share.arr = local.copy()
    for step in range(40):
        choice = step % 8
        if choice == 0:
            i, j = rng.integers(0, 300), rng.integers(0, 400)
            share.arr[i, j] = local[i, j] = step
        elif choice == 1:
            a, b = sorted(rng.integers(0, 300, 2))
            share.arr[a:b] = local[a:b] = -step
        elif choice == 2:
            mask = rng.random((300, 400)) < 0.01
            share.arr[mask] = local[mask] = step
        elif choice == 3:
            share.arr[:, 7] += 1.5
            local[:, 7] += 1.5
        elif choice == 4:
            share.arr += 1
            local += 1
        elif choice == 5:
            share.arr[::-3, 2:9:2] = local[::-3, 2:9:2] = step * 2
        elif choice == 6:
            row = int(rng.integers(0, 300))
            share.arr[row] *= 2  # a row, in place
            local[row] *= 2
        else:
            share.arr[-1, -1] = local[-1, -1] = -1.0
        assert np.array_equal(share.get("arr", copy=False), local), f"step {step}"
        assert np.array_equal(share.arr[5:50:3], local[5:50:3])
        assert np.array_equal(share.arr[local > 1], local[local > 1])


def test_one_element_write_costs_what_changed():
    with Share() as share:
        share.arr = np.zeros(4_000_000)  # 32 MB
        for i in range(12):
            share.arr[i] = 1.0
            assert share.get("arr", copy=False)[i] == 1.0
        assert share.get("arr", copy=False).sum() == 12


def test_a_commit_copies_only_the_changed_bytes():
    from accord._core._ranges import changed_bytes
    from accord._core._serialize import dumps_out_of_band

    stem = f"accord.{os.getuid()}.{share_name('ranges')}"
    writer, reader = _buffers.BufferWriter(stem), _buffers.BufferReader()
    try:
        local = np.zeros(1_000_000)  # 8 MB
        held = []
        for step in range(30):
            if step == 0:
                touched = None
            elif step % 3 == 1:
                key = slice(step, step + 10)
                touched = [changed_bytes(local, key)]
                local[key] = step
            elif step % 3 == 2:
                key = local == step - 1  # a mask: its first to its last element
                touched = [changed_bytes(local, key)]
                local[key] = -step
            else:
                touched = [changed_bytes(local, step * 1000)]
                local[step * 1000] = step
            before = writer.copied
            data, raws = dumps_out_of_band(local)
            snapshot = writer.publish("arr", data, raws, touched)
            copied = writer.copied - before
            view = reader.load("arr", pickle.loads(snapshot))
            assert np.array_equal(view, local), f"step {step}"
            if 3 <= step < 20:  # fresh segments are filled whole, then only ranges
                assert copied <= 8 * 40 * 3, f"step {step}: {copied} bytes copied"
            if step >= 20:  # views held from now on: pinned, never written again
                held.append((view, local.copy()))  # (so new segments: whole copies)
        for view, then in held:
            assert np.array_equal(view, then)
        # An unknown change (None): the whole buffer, correct all the same.
        local += 1
        before = writer.copied
        data, raws = dumps_out_of_band(local)
        view = reader.load("arr", pickle.loads(writer.publish("arr", data, raws, None)))
        assert writer.copied - before == local.nbytes
        assert np.array_equal(view, local)
    finally:
        reader.close()
        writer.close()


def test_spare_copies_go_when_the_buffer_is_idle():
    from accord._core._serialize import dumps_out_of_band

    stem = f"accord.{os.getuid()}.{share_name('spares')}"
    writer, reader = _buffers.BufferWriter(stem), _buffers.BufferReader()

    def segments():
        return [n for n in os.listdir("/dev/shm") if n.startswith(f"{stem}~b")]

    def commit(arr, touched):
        data, raws = dumps_out_of_band(arr)
        snapshot = writer.publish("arr", data, raws, touched)
        return writer.adopt("arr", arr, data), reader.load("arr", pickle.loads(snapshot))

    try:
        mirror, view = commit(np.zeros(200_000), None)
        expected = np.zeros(200_000)
        for k in range(3):  # partial writes: the published copy and a spare
            mirror[k] = expected[k] = k + 1
            mirror, view = commit(mirror, None)
            assert np.array_equal(view, expected)
        assert len(segments()) == 2
        writer.trim(time.monotonic())  # written just now: the spare stays
        assert len(segments()) == 2
        writer.trim(time.monotonic() + _buffers.SPARE_IDLE_S + 2)
        assert len(segments()) == 1  # idle: only the published copy is left
        assert np.array_equal(view, expected)
        mirror[7] = expected[7] = 7.0  # the next write fills a new spare
        mirror, view = commit(mirror, None)
        assert np.array_equal(view, expected) and np.array_equal(mirror, expected)
        assert len(segments()) == 2
    finally:
        reader.close()
        writer.close()
    assert segments() == []


def _write_rows(share, worker, rows, cols):
    for r in range(worker, rows, WORKERS):
        share.arr[r] = r * 10.0 + np.arange(cols)


def _write_frame_rows(share, worker, rows):
    for r in range(worker, rows, WORKERS):
        if r % 2:
            share.apply("df", _set_row, r, float(r))
        else:  # an indexer through the proxy: one command too
            share.df.loc[r, "a"] = float(r)
            share.df.loc[r, "b"] = -float(r)


def _set_row(df, r, v):
    df.loc[r, "a"] = v
    df.loc[r, "b"] = -v


def test_disjoint_rows_of_an_array_and_a_frame_from_four_processes(share, ctx, spawn_backend):
    _needs_numpy_in_workers(spawn_backend)
    rows, cols = 64, 5_000
    share.arr = np.zeros((rows, cols))
    share.df = pd.DataFrame({"a": np.zeros(rows * 100), "b": np.zeros(rows * 100)})
    procs = [ctx.Process(target=_write_rows, args=(share, w, rows, cols)) for w in range(WORKERS)]
    procs += [ctx.Process(target=_write_frame_rows, args=(share, w, rows)) for w in range(WORKERS)]
    for p in procs:
        p.start()
    _join(procs)
    expected = np.arange(rows)[:, None] * 10.0 + np.arange(cols)
    assert np.array_equal(share.get("arr", copy=False), expected)
    df = share.get("df", copy=False)
    assert df["a"][:rows].tolist() == [float(r) for r in range(rows)]
    assert df["b"][:rows].tolist() == [-float(r) for r in range(rows)]
    assert not df["a"][rows:].any()


def _add(share, n):
    for _ in range(n):
        share.arr += 1
        share.arr[3] += 2


def test_in_place_add_from_four_processes_is_exact(share, ctx, spawn_backend):
    _needs_numpy_in_workers(spawn_backend)
    share.arr = np.zeros(100_000)
    procs = [ctx.Process(target=_add, args=(share, 25)) for _ in range(WORKERS)]
    for p in procs:
        p.start()
    _join(procs)
    result = share.get("arr", copy=False)
    assert result[3] == 3 * WORKERS * 25
    assert (np.delete(result, 3) == WORKERS * 25).all()


def _set_constants(share, n, done, how):
    for k in range(1, n + 1):
        if how == "item":
            share.arr[:] = float(k)  # the changed bytes are known ahead
        else:  # a method: the commit finds the coordinator's written pages
            share.arr.fill(float(k))
        share.flush()  # committed one by one: every value is a state a reader may see
    done.set()


@pytest.mark.parametrize("how", ["item", "method"])
def test_a_reader_never_sees_a_torn_array(share, ctx, spawn_backend, how):
    _needs_numpy_in_workers(spawn_backend)
    share.arr = np.zeros(512 * 1024)  # 4 MB
    done = ctx.Event()
    writer = ctx.Process(target=_set_constants, args=(share, 30, done, how))
    writer.start()
    seen, held = set(), []
    deadline = time.monotonic() + DEADLINE_S
    while True:
        finished = done.is_set()
        view = share.get("arr", copy=False)
        low, high = view.min(), view.max()
        assert low == high, f"a torn read: {low} and {high} in one array"
        seen.add(float(low))
        if len(held) < 50:
            held.append((float(low), view))
        if finished:
            break
        assert time.monotonic() < deadline, "the writer did not finish in time"
    _join([writer])
    assert share.get("arr", copy=False)[0] == 30.0
    assert len(seen) >= 2
    for value, view in held:  # views held across commits never changed
        assert view.min() == view.max() == value


# -- change logs: replay is exact (in one process: the coordinator is another) ---


@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["append", "insert", "pop", "set", "del", "extend", "clear"]),
            st.integers(-5, 5),
        ),
        max_size=40,
    )
)
def test_list_changes_replay_exactly(ops):
    with Share() as share:
        share.lst = [0, 1, 2]
        local = [0, 1, 2]
        len(share.lst)
        for name, k in ops:
            if name == "append":
                share.lst.append(k)
                local.append(k)
            elif name == "insert":
                share.lst.insert(k, k)
                local.insert(k, k)
            elif name == "extend":
                share.lst.extend((k, k))
                local.extend((k, k))
            elif name == "clear":
                share.lst.clear()
                local.clear()
            elif local and name == "pop":
                share.lst.pop()
                local.pop()
            elif local and -len(local) <= k < len(local):
                if name == "set":
                    share.lst[k] = "s"
                    local[k] = "s"
                else:
                    del share.lst[k]
                    del local[k]
            assert share.get("lst") == local


def test_a_restart_keeps_big_buffers_and_logged_changes():
    import signal

    from accord import CoordinatorLost

    share = Share()
    try:
        share.arr = np.arange(200_000, dtype=np.float64)
        share.arr[5] = -1.0
        share.lst = list(range(1000))
        assert len(share.lst) == 1000
        share.lst.append(-1)
        assert share.lst[-1] == -1  # committed as a change log entry
        share.flush()
        os.kill(share.coordinator_pid, signal.SIGKILL)
        share._link.client.owner_process.wait(10)
        with pytest.raises(CoordinatorLost) as lost:
            share.lst.pop()
        assert share.restart() == []
        arr = share.get("arr", copy=False)
        assert arr[5] == -1.0 and arr[6] == 6.0
        # A call queued before its caller learnt the coordinator was dead is
        # applied once by restart() (its result is lost); one refused before
        # it was queued is not applied at all.
        queued = getattr(lost.value, "queued", False)
        assert share.get("lst") == [*range(1000)] + ([] if queued else [-1])
    finally:
        share.close()
