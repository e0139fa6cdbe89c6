"""Bad input, fuzzed: every malformed frame, step, time, argument or name gives a
clear SnapsinkError (also a ValueError or TypeError), writes nothing, and the
same sink then accepts a good frame, which reads back exactly.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import snapsink
from snapsink import ConfigError, Field, HostMemory, Schema, SnapsinkError, SyncSink

pytestmark = pytest.mark.timeout(120)

SCHEMA = Schema(
    {"x": Field("float32", (3, 2)), "n": Field("int64"), "r": Field("float64", (None, 3))}
)
TRIED: dict[str, int] = {}


class Harness:
    """One SyncSink shared by every example of a test: over HostMemory (the
    thread writer) or over an NpyDirectory at ``path`` (the writer process)."""

    def __init__(self, times: bool = True, path: Path | None = None):
        self.path = path
        self.store: Any = HostMemory() if path is None else snapsink.NpyDirectory(path)
        self.sink = SyncSink(self.store, capacity=4, schema=SCHEMA)
        assert self.sink.writer == ("thread" if path is None else "process")
        self.step = -1
        self.times = times
        self.good = 0

    def good_frame(self) -> dict[str, Any]:
        k = self.step + 1
        return {
            "x": np.full((3, 2), k, np.float32),
            "n": k,
            "r": np.arange(3 * (k % 3), dtype=np.float64).reshape(-1, 3) + k,
        }

    def check_rejected(self, call: Any, kind: str) -> None:
        before = self.sink.statistics()
        with pytest.raises(SnapsinkError) as info:
            call()
        err = info.value
        assert isinstance(err, ValueError | TypeError), repr(err)
        assert len(str(err)) > 15, "the message must say what was expected"
        after = self.sink.statistics()
        assert (after.written + after.queued, after.dropped) == (
            before.written + before.queued,
            before.dropped,
        ), "a rejected frame must write nothing"
        TRIED[kind] = TRIED.get(kind, 0) + 1
        self.write_good()

    def trajectory(self) -> snapsink.Trajectory:
        return self.store.trajectory() if self.path is None else snapsink.open(self.path)

    def write_good(self) -> None:
        frame = self.good_frame()
        step = self.step + 1
        self.sink.write(frame, step=step, time=float(step) if self.times else None)
        self.sink.flush()
        self.step = step
        self.good += 1
        traj = self.trajectory()
        assert len(traj) == self.good
        assert int(traj.steps[-1]) == step
        got = traj.frame(-1)
        for name, want in frame.items():
            np.testing.assert_array_equal(got[name], want)
            assert got[name].dtype == SCHEMA[name].dtype


@pytest.fixture(scope="module", params=["thread", "process"])
def harness(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Harness]:
    path = None if request.param == "thread" else tmp_path_factory.mktemp("fuzz") / "run"
    h = Harness(path=path)
    yield h
    h.sink.close()
    assert len(h.trajectory()) == h.good


FUZZ = settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

bad_shapes = st.lists(st.integers(0, 4), min_size=0, max_size=3).map(tuple).filter(
    lambda s: s != (3, 2)
)
lossy_dtypes = st.sampled_from(["float64", "complex64", "complex128", "int64", "uint64"])
hostile_values = st.sampled_from(
    [
        None,
        "text",
        b"bytes",
        object(),
        [1, "a"],
        {"a": 1},
        np.array(["a", "b"]),
        np.zeros(2, dtype=[("a", "f4")]),
        np.array([object(), object()]),
        np.datetime64("2020-01-01"),
    ]
)


@FUZZ
@given(shape=bad_shapes)
def test_wrong_shape(harness: Harness, shape: tuple[int, ...]) -> None:
    frame = harness.good_frame()
    frame["x"] = np.zeros(shape, np.float32)
    harness.check_rejected(lambda: harness.sink.write(frame, step=harness.step + 1), "shape")


@FUZZ
@given(dtype=lossy_dtypes, field=st.sampled_from(["x", "n"]))
def test_lossy_dtype(harness: Harness, dtype: str, field: str) -> None:
    frame = harness.good_frame()
    shape = (3, 2) if field == "x" else ()
    if field == "n" and dtype in ("int64",):
        dtype = "float32"  # int64 into int64 is fine; a float into an int is not
    frame[field] = np.ones(shape, dtype)
    harness.check_rejected(
        lambda: harness.sink.write(frame, step=harness.step + 1, time=harness.step + 1.0),
        "dtype",
    )


@FUZZ
@given(value=hostile_values, field=st.sampled_from(["x", "n", "r"]))
def test_hostile_values(harness: Harness, value: Any, field: str) -> None:
    frame = harness.good_frame()
    frame[field] = value
    harness.check_rejected(
        lambda: harness.sink.write(frame, step=harness.step + 1, time=harness.step + 1.0),
        "value",
    )


@FUZZ
@given(
    drop=st.sets(st.sampled_from(["x", "n", "r"]), max_size=3),
    extra=st.sets(st.text(min_size=1, max_size=8), max_size=2),
)
def test_missing_or_extra_fields(harness: Harness, drop: set[str], extra: set[str]) -> None:
    frame = harness.good_frame()
    for name in drop:
        del frame[name]
    for name in extra - {"x", "n", "r"}:
        frame[name] = 1.0
    if set(frame) == {"x", "n", "r"}:
        frame.pop("x")
    harness.check_rejected(
        lambda: harness.sink.write(frame, step=harness.step + 1, time=harness.step + 1.0),
        "fields",
    )


@FUZZ
@given(
    time=st.sampled_from([math.nan, math.inf, -math.inf, "1.0", None, True, 1j]),
)
def test_bad_times(harness: Harness, time: Any) -> None:
    frame = harness.good_frame()
    harness.check_rejected(
        lambda: harness.sink.write(frame, step=harness.step + 1, time=time), "time"
    )


@FUZZ
@given(
    step=st.one_of(
        st.integers(max_value=0),  # never above the last step (offset below)
        st.integers(min_value=2**63, max_value=2**200),
        st.integers(max_value=-(2**63) - 1),
        st.sampled_from([1.5, "3", True, None, np.float64(3.0)]),
    )
)
def test_bad_steps(harness: Harness, step: Any) -> None:
    frame = harness.good_frame()
    if isinstance(step, int) and not isinstance(step, bool) and -(2**63) <= step <= 0:
        step = harness.step + step  # not increasing
    if step is None:
        step = harness.step  # equal to the last one
    harness.check_rejected(
        lambda: harness.sink.write(frame, step=step, time=harness.step + 1.0), "step"
    )


def test_earlier_time_is_rejected(harness: Harness) -> None:
    frame = harness.good_frame()
    harness.check_rejected(
        lambda: harness.sink.write(frame, step=harness.step + 1, time=harness.step - 0.5), "time"
    )


def test_good_unusual_inputs_are_stored_exactly(tmp_path: Path) -> None:
    """Not errors: non-native byte order, non-contiguous views, empty ragged
    frames, int32 into int64; each is stored as the value it holds."""
    for store in (HostMemory(), snapsink.NpyDirectory(tmp_path / "n")):
        base = np.arange(12, dtype=">f4").reshape(6, 2)
        frames = [
            {"x": base[::2], "n": np.int32(7), "r": np.zeros((0, 3))},
            {"x": np.asfortranarray(np.ones((3, 2), "<f4")), "n": 8, "r": np.ones((2, 3), ">f8")},
            {"x": np.ones((2, 3), "f4").T, "n": np.int64(-1), "r": np.ones((4, 6))[:, ::2]},
        ]
        with SyncSink(store, schema=SCHEMA) as sink:
            for i, f in enumerate(frames):
                sink.write(f, step=i)
        traj = snapsink.open(store if isinstance(store, HostMemory) else tmp_path / "n")
        for i, f in enumerate(frames):
            got = traj.frame(i)
            for name, want in f.items():
                np.testing.assert_array_equal(got[name], want)
                assert got[name].dtype == SCHEMA[name].dtype
                assert got[name].dtype.isnative


IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}")
RESERVED = {"steps", "times", "metadata", "static"}
#: a nested field name (pytrees): identifiers or indices joined by "."
NESTED = re.compile(r"(?:[A-Za-z_]\w*|[0-9]+)(?:\.(?:[A-Za-z_]\w*|[0-9]+))+", re.ASCII)


def field_name_ok(name: str) -> bool:
    """The field-name rule: an identifier, or a nested name whose first part is
    not reserved and that does not end in ``.offsets`` (a ragged field's offsets)."""
    if IDENT.fullmatch(name):
        return name not in RESERVED
    return (
        len(name) <= 128
        and NESTED.fullmatch(name) is not None
        and name.split(".")[0] not in RESERVED
        and not name.endswith(".offsets")
    )

names = st.one_of(
    st.sampled_from(
        ["a/b", "..", "../x", "/etc/passwd", "x\x00", "a\nb", "a b", "", "steps", "times",
         "metadata", "static", "1x", "é", "a.b", "x" * 129, "C:\\x", "\x7f", "a..b", "a.",
         ".a", "steps.x", "a.offsets", "0.weight", "a.b/c"]
    ),
    st.text(min_size=1, max_size=20).filter(
        lambda s: not (s.isidentifier() and s.isascii() and s not in
                       {"steps", "times", "metadata", "static"} and len(s) <= 128)
    ),
)


@FUZZ
@given(name=names)
def test_unsafe_names_are_refused_everywhere(tmp_path_factory: pytest.TempPathFactory,
                                             name: str) -> None:
    TRIED["name"] = TRIED.get("name", 0) + 1
    ident = IDENT.fullmatch(name) is not None
    root = tmp_path_factory.mktemp("names")
    if not field_name_ok(name):
        with pytest.raises(ConfigError):
            Schema({name: "f8"})
    else:
        assert list(Schema({name: "f8"})) == [name]
    if not ident:
        with pytest.raises(ConfigError):
            snapsink.HostMemory(static={name: np.zeros(2)})
        with pytest.raises(ConfigError):
            snapsink.NpyDirectory(root / "s", static={name: np.zeros(2)})
    parts = name.split("/")
    if name and (not all(IDENT.fullmatch(p) for p in parts) or parts[-1] == "static"):
        with pytest.raises(ConfigError):
            snapsink.ZarrStore(root / "z", group=name)
    # inferred from a first frame: refused before anything is written
    store = HostMemory()
    if field_name_ok(name):
        return
    with SyncSink(store) as sink:
        with pytest.raises(ConfigError):
            sink.write({name: 1.0})
        sink.write({"ok": 2.0})
    assert store.trajectory()["ok"][:].tolist() == [2.0]
    assert sorted(p.name for p in root.iterdir()) == []  # nothing created


@FUZZ
@given(
    capacity=st.one_of(
        st.integers(max_value=0), st.sampled_from([1.5, "8", None, True, float("nan")])
    ),
    policy=st.one_of(
        st.text(max_size=12).filter(lambda s: s not in ("block", "drop_newest", "drop_oldest")),
        st.sampled_from([None, 3, Path("spill"), ["block"]]),
    ),
    max_bytes=st.sampled_from([0, -1, 1.5, "1", True]),
)
def test_invalid_sink_arguments(capacity: Any, policy: Any, max_bytes: Any) -> None:
    TRIED["argument"] = TRIED.get("argument", 0) + 3
    with pytest.raises(ConfigError, match="capacity"):
        snapsink.Sink(HostMemory(), capacity=capacity)
    with pytest.raises(ConfigError, match="policy"):
        snapsink.Sink(HostMemory(), policy=policy)
    with pytest.raises(ConfigError, match="max_bytes"):
        snapsink.Sink(HostMemory(), max_bytes=max_bytes)
    with pytest.raises(ConfigError, match="capacity"):
        SyncSink(HostMemory(), capacity=capacity)
    with pytest.raises(ConfigError):
        snapsink.Spill("d", max_bytes=max_bytes)


def test_inputs_were_tried() -> None:
    """The figure for the report (runs after the tests above in file order)."""
    if TRIED:
        print(f"\nbad inputs tried: {sum(TRIED.values())} {TRIED}")
