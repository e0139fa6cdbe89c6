"""FieldView indexes as NumPy indexes the array of shape ``(frames, *frame_shape)``
(several index arrays broadcast together, ``...`` and ``None`` anywhere), on every
store, while reading only the frames the key selects."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import snapsink
from snapsink import Field, HostMemory, SyncSink

N = 7
REF = np.arange(N * 4 * 3, dtype=np.float32).reshape(N, 4, 3) - 20.0
SCALARS = np.arange(N, dtype=np.int64) * 10 - 25
_ = slice(None)
MASK = np.array([True, False, True, True, False, False, True])
MASK2 = (REF[..., 0] % 3) == 1  # (frames, 4): spans the frame axis and the next

# (key, why): every key NumPy takes on REF; the views must give the same
KEYS: list[Any] = [
    0,
    3,
    -1,
    -N,
    np.int64(2),
    np.uint8(5),
    np.array(4),
    _,
    slice(2, 5),
    slice(1, None, 2),
    slice(None, None, -1),
    slice(5, 1, -2),
    slice(-2, None),
    slice(10, 20),
    slice(4, 2),
    [4, 0, 4],
    [-1, 0],
    [],
    [[]],
    range(2, 5),
    np.array([[0, 6], [3, 3]]),
    np.array([[[1]], [[2]]]),
    MASK,
    list(MASK),
    np.zeros(N, bool),
    MASK2,
    (MASK2, 1),
    (MASK, _, 2),
    (2, 1),
    (-1, -1, -1),
    (np.int64(1), _, 0),
    (_, 2),
    (_, _, 1),
    (slice(1, 6, 2), [3, 0]),
    ([0, 2], [1, 2]),  # the pair broadcasts: (2, 3), not (2, 2, 3)
    ([0, 2], [1, 2], [0, 2]),
    ([[0], [5]], [1, 2, 3]),  # (2, 1) with (3,) broadcast to (2, 3)
    ([0, 2], _, [2, 0]),  # arrays split by a slice: broadcast axis goes first
    (MASK, [0, 1, 2, 3]),
    ([6, 1], 2),
    (_, [0, 3], [1, 2]),
    ([], [], []),
    ([N + 2], []),  # out of range, but broadcast to no element: numpy checks no bound
    ([-N - 2], [], _),
    (np.array([[N]]), np.zeros((1, 0), np.intp)),
    (..., 0),
    (..., [0, 2]),
    (0, ...),
    ([3, 1], ..., 1),
    (..., 1, 2),
    (1, 2, 0, ...),
    (1, ..., 2, 0),
    ...,
    None,
    (None, 0),
    (0, None),
    (None, [2, 1], None, _, 1),
    (..., None),
    ([0, 2], None, [1, 2]),
    (None, ..., None),
    (0, True),  # a bool after the frame index follows numpy (a new axis)
    (1, [True, False, True, False]),
    (),
]


def _id(key: Any) -> str:
    text = " ".join(repr(key).split())
    return text if len(text) <= 40 else text[:37] + "..."


def _fill(store: Any) -> Any:
    with SyncSink(store, schema={"x": Field("float32", (4, 3)), "s": "int64"}) as sink:
        for i in range(N):
            sink.write({"x": REF[i], "s": SCALARS[i]}, step=i)
    return store


def _npy(tmp: Path) -> snapsink.Trajectory:
    _fill(snapsink.NpyDirectory(tmp / "run"))
    return snapsink.open(tmp / "run")


def _memory(tmp: Path) -> snapsink.Trajectory:
    return _fill(HostMemory()).trajectory()


def _hdf5(tmp: Path) -> snapsink.Trajectory:
    pytest.importorskip("h5py")
    _fill(snapsink.HDF5Store(tmp / "run.h5", chunk_frames=3))
    return snapsink.open(tmp / "run.h5")


def _zarr(tmp: Path) -> snapsink.Trajectory:
    pytest.importorskip("zarr")
    _fill(snapsink.ZarrStore(tmp / "run.zarr", chunk_frames=3))
    return snapsink.open(tmp / "run.zarr")


STORES: dict[str, Callable[[Path], snapsink.Trajectory]] = {
    "npy": _npy,
    "memory": _memory,
    "hdf5": _hdf5,
    "zarr": _zarr,
}


@pytest.fixture(scope="module", params=list(STORES))
def traj(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Any:
    return STORES[request.param](tmp_path_factory.mktemp(request.param))


def _same(got: Any, want: np.ndarray[Any, Any]) -> None:
    got = np.asarray(got)
    assert got.shape == want.shape
    assert got.dtype == want.dtype
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("key", KEYS, ids=_id)
def test_keys_index_as_numpy(traj: snapsink.Trajectory, key: Any) -> None:
    _same(traj["x"][key], REF[key])


@pytest.mark.parametrize(
    "key",
    [
        0,
        -3,
        [2, 2, 0],
        slice(None, None, -3),
        MASK,
        ...,
        None,
        (None, ...),
        (..., None),
        ([[1, 4]],),
    ],
    ids=_id,
)
def test_scalar_field_keys_index_as_numpy(traj: snapsink.Trajectory, key: Any) -> None:
    _same(traj["s"][key], SCALARS[key])


@pytest.mark.parametrize(
    ("key", "match"),
    [
        (N, f"index {N} is out of bounds .* field 'x', which holds {N} frames"),
        (-N - 1, f"field 'x', which holds {N} frames"),
        ([0, N], f"index {N} is out of bounds .* field 'x', which holds {N} frames"),
        (np.array([[-N - 1]]), f"field 'x', which holds {N} frames"),
        ((None, N), f"holds {N} frames"),
        ((..., N, 0, 0), f"holds {N} frames"),
        ((0, 4), "field 'x'.*out of bounds"),
        ((_, _, 3), "field 'x'.*out of bounds"),
        ((_, [0, 9]), "field 'x'.*out of bounds"),
        (MASK[:-1], f"boolean index did not match field 'x'.*{N} frames"),
        ((0, 0, 0, 0), "too many indices"),
        ((..., ...), "single ellipsis"),
        (1.5, "only integers"),
        ("a", "only integers"),
        (np.array([1.0]), "integer"),
        (np.array([]), "integer"),  # numpy takes only an empty *list* for no frames
        (np.array([1, 2], dtype=object), "integer"),
        (([0, 1], [0, 1, 2]), "broadcast"),
        (([1, 2], []), "broadcast"),
    ],
    ids=_id,
)
def test_keys_numpy_refuses_are_refused(traj: snapsink.Trajectory, key: Any, match: str) -> None:
    with pytest.raises(IndexError):
        REF[key]
    with pytest.raises(IndexError, match=match):
        traj["x"][key]


def test_bad_slices_and_ragged_lists_refused_as_numpy(traj: snapsink.Trajectory) -> None:
    for key, match in [([[0, 1], [2]], "inhomogeneous"), (slice(None, None, 0), "zero")]:
        with pytest.raises(ValueError, match=match):
            REF[key]
        with pytest.raises(ValueError, match=match):
            traj["x"][key]
    with pytest.raises(TypeError, match="slice indices"):
        traj["x"][slice(0.5, None)]


@pytest.mark.parametrize("key", [True, False, np.True_, np.array(True), (True, 0), (None, True)])
def test_a_bool_is_no_frame_number(traj: snapsink.Trajectory, key: Any) -> None:
    """Deliberately refused where a frame index goes (numpy would add an axis)."""
    with pytest.raises(IndexError, match="frame index: expected int"):
        traj["x"][key]


def test_reads_only_the_frames_the_key_selects(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    n = 200
    with SyncSink(snapsink.NpyDirectory(tmp_path / "run")) as sink:
        for i in range(n):
            sink.write({"x": np.full((4, 3), float(i))}, step=i)
    traj = snapsink.open(tmp_path / "run")
    source = traj._source
    reads: list[tuple[int, int]] = []
    real = source.read

    def counting(name: str, start: int, stop: int) -> np.ndarray[Any, Any]:
        reads.append((start, stop))
        return real(name, start, stop)

    monkeypatch.setattr(source, "read", counting)
    x = traj["x"]
    full = np.broadcast_to(np.arange(n, dtype=np.float64)[:, None, None], (n, 4, 3))
    for key, frames in [
        (([150, 3, 150], [1, 2, 1]), {3, 150}),
        ((np.array([[150], [3]]), _, [0, 2]), {3, 150}),
        ((None, -50, ..., 1), {150}),
        ((..., 3, 1), set(range(n))),  # the Ellipsis spans the frame axis: all frames
        (slice(10, 12), {10, 11}),
        (slice(190, 0, -90), {10, 100, 190}),
        (np.isin(np.arange(n), [7, 9]), {7, 9}),
        ([], set()),
    ]:
        reads.clear()
        _same(x[key], full[key])
        got = [f for start, stop in reads for f in range(start, stop)]
        assert sorted(got) == sorted(frames), key  # each frame read once, no other
        assert len(reads) <= max(len(frames), 1)


def test_ragged_fields_keep_their_rules() -> None:
    store = HostMemory()
    with SyncSink(store, schema={"r": Field("int16", (None, 2))}) as sink:
        for i in range(4):
            sink.write({"r": np.full((i, 2), i, np.int16)}, step=i)
    r = store.trajectory()["r"]
    assert r[2].tolist() == [[2, 2], [2, 2]]
    assert [a.shape for a in r[[3, 1]]] == [(3, 2), (1, 2)]
    assert [len(a) for a in r[::-2]] == [3, 1]
    # what means every frame (or frame i) to numpy means it here too
    every: list[Any] = [(), ..., (...,), (_,), (_, ...)]
    for key in every:
        assert [len(a) for a in r[key]] == [0, 1, 2, 3], key
    assert r[(2,)].tolist() == r[2, ...].tolist() == [[2, 2], [2, 2]]
    for key, match in [
        ((0, 1), "ragged: index its frames only .*int, slice, 1-d int array or boolean mask"),
        ((..., ...), "single ellipsis"),
        (None, "expected int, slice, 1-d int array or boolean mask, got None"),
    ]:
        with pytest.raises(IndexError, match=match):
            r[key]


@pytest.mark.parametrize("dtype", [np.int8, np.uint8])
def test_small_int_index_arrays_past_their_dtype(dtype: type) -> None:
    """More frames than the index's dtype holds: negatives are made frame numbers
    in intp, not in the index's dtype (where ``+ n`` overflows)."""
    n = 300
    store = HostMemory()
    with SyncSink(store, schema={"x": "float64", "r": Field("float64", (None,))}) as sink:
        for i in range(n):
            sink.write({"x": float(i), "r": np.full(1, float(i))}, step=i)
    traj = store.trajectory()
    signed = np.dtype(dtype).kind == "i"
    idx: np.ndarray[Any, Any] = np.array([-1, 5] if signed else [5, 7], dtype)
    want = [n - 1.0, 5.0] if signed else [5.0, 7.0]
    assert traj["x"][idx].tolist() == np.arange(n, dtype=np.float64)[idx].tolist() == want
    assert traj["x"][(idx,)].tolist() == want
    assert [a.tolist() for a in traj["r"][idx]] == [[w] for w in want]
