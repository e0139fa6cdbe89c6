"""The I/O-free many-rank layout (stores/_zarrparplan.py) and the store's
argument checks that need no communicator: no MPI, no torch."""

from __future__ import annotations

import numpy as np
import pytest

import snapsink
from snapsink.stores._zarrparplan import (
    check_chunks,
    check_region,
    global_schema,
    local_schema,
    plan_layout,
)


def quarters(ny: int = 16, nx: int = 24) -> list[dict[str, tuple[tuple[int, int], ...]]]:
    hy, hx = ny // 2, nx // 2
    return [
        {"rho": ((y, y + hy), (x, x + hx))} for y in (0, hy) for x in (0, hx)
    ]  # fmt: skip


def test_default_chunk_is_the_rank_block_and_each_rank_has_its_own() -> None:
    lay = plan_layout(quarters(), {})["rho"]
    assert lay.shape == (16, 24)
    assert lay.chunk == (8, 12)
    owned = [lay.chunks_of(r) for r in range(4)]
    assert [[g for g, _ in o] for o in owned] == [[(0, 0)], [(0, 1)], [(1, 0)], [(1, 1)]]
    assert owned[3][0][1] == (slice(0, 8), slice(0, 12))


def test_unequal_blocks_chunk_by_the_common_divisor() -> None:
    regions = [{"u": ((0, 6),)}, {"u": ((6, 15),)}]
    lay = plan_layout(regions, {})["u"]
    assert lay.chunk == (3,)
    assert [g for g, _ in lay.chunks_of(1)] == [(2,), (3,), (4,)]
    assert lay.chunks_of(1)[0][1] == (slice(0, 3),)


def test_smaller_aligned_chunks_split_a_rank_block() -> None:
    lay = plan_layout(quarters(), {"rho": (4, 6)})["rho"]
    grids = sorted(g for g, _ in lay.chunks_of(3))
    assert grids == [(2, 2), (2, 3), (3, 2), (3, 3)]
    all_grids = [g for r in range(4) for g, _ in lay.chunks_of(r)]
    assert len(all_grids) == len(set(all_grids)) == 16  # no chunk owned twice


def test_misaligned_chunk_names_field_expected_and_got() -> None:
    with pytest.raises(snapsink.ConfigError, match=r"chunks\['rho'\].*\(8, 12\).*got \(5, 12\)"):
        plan_layout(quarters(), {"rho": (5, 12)})


@pytest.mark.parametrize(
    ("regions", "match"),
    [
        ([{"u": ((0, 8),)}, {"u": ((4, 12),)}], "overlap"),
        ([{"u": ((0, 4),)}, {"u": ((6, 12),)}], "do not cover"),
        ([{"u": ((0, 4),)}, {"v": ((0, 4),)}], "same decomposed fields"),
        ([{"u": ((0, 4),)}, {"u": ((4, 8), (0, 2))}], "same number of dimensions"),
    ],
)
def test_blocks_must_tile_the_field(regions: list[dict[str, object]], match: str) -> None:
    with pytest.raises(snapsink.ConfigError, match=match):
        plan_layout(regions, {})  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "region",
    [
        {"u": (slice(None, 4),)},
        {"u": (slice(0, 4, 2),)},
        {"u": (slice(4, 4),)},
        {"u": "rows"},
        [slice(0, 4)],
    ],
)
def test_bad_region_is_a_config_error(region: object) -> None:
    with pytest.raises(snapsink.ConfigError, match="region"):
        check_region(region)


def test_chunks_only_for_decomposed_fields() -> None:
    region = check_region({"u": (slice(0, 4), slice(0, 4))})
    assert check_chunks({"u": (2, 2)}, region) == {"u": (2, 2)}
    with pytest.raises(snapsink.ConfigError, match="only decomposed fields"):
        check_chunks({"v": (2,)}, region)
    with pytest.raises(snapsink.ConfigError, match="2 positive ints"):
        check_chunks({"u": (2,)}, region)


def test_global_and_local_schemas() -> None:
    layouts = plan_layout(quarters(), {})
    local = snapsink.Schema(
        {
            "rho": snapsink.Field("float32", (8, 12)),
            "e": snapsink.Field("float64", ()),
            "p": snapsink.Field("float64", (None, 3)),
        }
    )
    glob = global_schema(local, layouts, 2)
    assert glob["rho"].shape == (16, 24)
    assert glob["e"] == local["e"] and glob["p"] == local["p"]
    assert local_schema(glob, layouts, 2) == local
    wrong = snapsink.Schema({"rho": snapsink.Field("float32", (8, 11))})
    with pytest.raises(snapsink.SchemaError, match=r"rank 1's region expects frames of shape"):
        global_schema(wrong, layouts, 1)


def test_a_ranks_schema_holds_a_block_of_a_dimension_another_field_holds_whole() -> None:
    """The stored (global) schema names dimension y for the decomposed rho and
    for a profile written whole: one size there, two in a rank's part."""
    layouts = plan_layout(quarters(), {})
    glob = snapsink.Schema(
        {
            "rho": snapsink.Field("float32", (16, 24), dims=("y", "x")),
            "profile": snapsink.Field("float64", (16,), dims=("y",)),
        }
    )
    local = local_schema(glob, layouts, 2)
    assert local["rho"] == snapsink.Field("float32", (8, 12), dims=("y", "x"))
    assert local["profile"] == glob["profile"]


def test_store_arguments_without_a_communicator(tmp_path: object) -> None:
    with pytest.raises(snapsink.ConfigError, match="only with comm"):
        snapsink.ZarrStore(str(tmp_path), region={"u": (slice(0, 4),)})
    with pytest.raises(snapsink.ConfigError, match="object storage"):
        snapsink.ZarrStore("s3://bucket/run.zarr", comm=object())
    with pytest.raises(snapsink.ConfigError, match="commit_seconds"):
        snapsink.ZarrStore(str(tmp_path), comm=object(), commit_seconds=5.0)
    with pytest.raises(snapsink.ConfigError, match="mpi4py communicator"):
        snapsink.ZarrStore(str(tmp_path), comm=object())


@pytest.mark.parametrize("policy", ["drop_newest", "drop_oldest"])
def test_a_sink_refuses_drop_policies_for_a_store_that_needs_every_frame(
    policy: str, tmp_path: object
) -> None:
    """Many-rank stores set needs_every_frame (every rank stores the same steps,
    commits are collectives at the same counts): the sink refuses a policy that
    drops frames when it is built, not at the first drop mid-run."""
    from snapsink.stores._zarrparallel import ParallelZarrStore

    assert ParallelZarrStore.needs_every_frame is True

    class EveryFrame(snapsink.HostMemory):
        needs_every_frame = True

    for make in (snapsink.Sink, snapsink.SyncSink):
        with pytest.raises(snapsink.ConfigError, match=f"policy:.*got '{policy}'"):
            make(EveryFrame(), policy=policy)
    # block and spill keep every frame
    with snapsink.SyncSink(EveryFrame(), policy="block") as sink:
        sink.write({"x": 1.0}, step=0)
    spill = snapsink.Spill(str(tmp_path))
    with snapsink.SyncSink(EveryFrame(), policy=spill) as sink:
        sink.write({"x": 1.0}, step=0)
    assert snapsink.Sink(snapsink.HostMemory(), policy=policy) is not None  # others may drop


def test_region_and_chunks_take_any_integer_and_store_python_ints() -> None:
    """Bounds from np.cumsum of np.array_split lengths are np.int64: refused with
    a message the bounds satisfied (found by a probe)."""
    edges = np.cumsum([0, 5, 5])
    region = check_region({"u": (slice(edges[1], edges[2]),)})
    assert region == {"u": ((5, 10),)}
    assert all(type(b) is int for b in region["u"][0])
    chunks = check_chunks({"u": (np.int32(5),)}, region)
    assert chunks == {"u": (5,)} and type(chunks["u"][0]) is int


@pytest.mark.parametrize(
    ("block", "match"),
    [
        (slice(None, 4), r"expected integer bounds \(start and stop given\), got slice\(None, 4"),
        (slice(0.0, 4), "expected integer bounds"),
        (slice(0, 4, 2), r"expected no step \(or 1\), got slice\(0, 4, 2\)"),
        (slice(4, 4), r"expected bounds 0 <= start < stop, got slice\(4, 4"),
        ((0, 4), r"expected a slice per dimension, got \(0, 4\)"),
    ],
)
def test_a_bad_region_says_what_is_wrong(block: object, match: str) -> None:
    with pytest.raises(snapsink.ConfigError, match=rf"region\['u'\]: {match}"):
        check_region({"u": (block,)})
