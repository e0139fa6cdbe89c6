"""Render the recorded benchmark results into docs/benchmarks.md.

Every figure in the documentation's results section comes from a JSON file in
``benchmarks/results/`` written by a benchmark run; this script only formats
them (nothing is typed in by hand). It replaces the text between the markers
``<!-- results:start -->`` and ``<!-- results:end -->``.

    python benchmarks/report.py [--results DIR] [--doc PATH] [--check]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
START, END = "<!-- results:start -->", "<!-- results:end -->"


def _load(results: Path, name: str) -> dict[str, Any] | None:
    path = results / name
    return json.loads(path.read_text()) if path.exists() else None


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return [*out, ""]


_STORE = {"memory": "HostMemory", "npy": "NpyDirectory", "zarr": "ZarrStore"}
_API = {"async": "Sink", "sync": "SyncSink"}


def small_frames(d: dict[str, Any]) -> list[str]:
    if "rows" in d:
        return _small_frames_rows(d)
    lines = [
        "### Small frames (`small_frames-cpu.json`)",
        "",
        f"Frames of three float64 scalars into HostMemory, capacity {d['capacity']}, "
        f"{d['frames']:,} frames, on {d['machine']} (Python {d['python']}).",
        "",
    ]
    rows = [
        ["Sink (async)", f"{d['async_frames_per_s']:,.0f}", ">= 100,000"],
        ["SyncSink", f"{d['sync_frames_per_s']:,.0f}", ">= 30,000"],
        ["list.append (the floor)", f"{d['list_append_frames_per_s']:,.0f}", ""],
    ]
    return lines + _table(["API", "frames/s", "target"], rows)


def _small_frames_rows(d: dict[str, Any]) -> list[str]:
    lines = [
        "### Small frames (`small_frames-cpu.json`)",
        "",
        f"Frames of three float64 scalars, capacity {d['capacity']}, {d['frames']:,} frames, "
        f"through the writer named (`--writer {d.get('writer_option', 'auto')}`), on "
        f"{d['machine']} (Python {d['python']}); from the first write to the return of "
        "`flush()`.",
        "",
    ]
    rows = [
        [
            _STORE[x["store"]],
            "Sink (async)" if x["api"] == "async" else "SyncSink",
            x["writer"],
            f"{x['frames_per_s']:,.0f}",
            f">= {x['target']:,}",
        ]
        for x in d["rows"]
    ]
    rows.append(["", "list.append (the floor)", "", f"{d['list_append_frames_per_s']:,.0f}", ""])
    return lines + _table(["store", "API", "writer", "frames/s", "target"], rows)


def throughput(d: dict[str, Any]) -> list[str]:
    """The rates are each case's ``rate``, the figure its ``stat`` picked (best or
    median of the runs), the one its ratios were computed from."""
    stats = {c.get("stat", "best") for c in d["cases"].values()} or {"best"}
    lines = [
        "### Disk throughput (`throughput-cpu.json`)",
        "",
        f"{d.get('filesystem', '')}, {d.get('cpus', '?')} CPUs; {' / '.join(sorted(stats))} of "
        f"{d.get('repeats', '?')} interleaved runs (the machine is shared and noisy: "
        "interference only slows a run down). Raw is `os.write` + one `fsync`; raw "
        "direct the same with `O_DIRECT` (no page-cache copy), where the stores' large "
        "aligned writes go.",
        "",
    ]
    for c in d["cases"].values():
        rate = c.get("rate", c["best_mb_per_s"])
        raw = rate["raw"]
        direct = rate.get("raw direct")
        naive = rate.get("naive zarr")
        rows = []
        for variant, mbs in rate.items():
            vs_naive = ""
            if variant.startswith("zarr") and naive:
                key = "naive " + variant
                vs_naive = f"{mbs / rate[key]:.2f}" if key in rate else ""
            row = [variant, f"{mbs:,.0f}", f"{mbs / raw:.2f}"]
            if direct:
                row.append(f"{mbs / direct:.2f}")
            rows.append([*row, vs_naive])
        size = c["frame_bytes"] / 1024
        unit = f"{size / 1024:g} MiB" if size >= 1024 else f"{size:g} KiB"
        lines += [f"**{c['frames']} frames of {unit}** (sink capacity {c['capacity']})", ""]
        header = ["variant", "MB/s", "/ raw", *(["/ raw direct"] if direct else []),
                  "/ naive zarr (same codec)"]
        lines += _table(header, rows)
        lines += _zstd_lines(c)
    lines += [
        "Targets: NpyDirectory >= 0.9x raw; ZarrStore uncompressed >= 0.8x raw at 2 and "
        "16 MiB, >= 0.6x at 64 KiB; ZarrStore with zstd level 1 >= 0.8x the zstd "
        "ceiling (numcodecs' one-core rate times the writer's cores); ZarrStore at or "
        "above tensorstore on the same array; ZarrStore >= 2x the naive loop.",
        "",
    ]
    return lines


def _zstd_lines(c: dict[str, Any]) -> list[str]:
    """The compressed rates against the codec's ceilings and tensorstore."""
    z = c.get("zstd") or {}
    ratios = c.get("ratios") or {}
    if "ceiling_mb_per_s" not in z:
        return []
    parts = [
        f"zstd level 1 ceiling (numcodecs, {z['one_core_mb_per_s']:,.0f} MB/s on one core "
        f"x {z['cores']}): {z['ceiling_mb_per_s']:,.0f} MB/s"
    ]
    if "encoder_ceiling_mb_per_s" in z:
        parts.append(
            f"ZarrStore's encoder ({z['encoder']}, {z['encoder_one_core_mb_per_s']:,.0f} MB/s "
            f"on one core): {z['encoder_ceiling_mb_per_s']:,.0f} MB/s"
        )
    if "disk_bound_mb_per_s" in z:
        parts.append(
            f"the raw disk allows a compressed store {z['disk_bound_mb_per_s']:,.0f} MB/s "
            f"of input (zstd's output is {z['compressed_over_raw']:.2f} of it)"
        )
    shown = [
        f"{k} {v:.2f}"
        for k, v in ratios.items()
        if "zstd1" in k and ("ceiling" in k or "tensorstore" in k or "numcodecs" in k)
    ]
    out = ["; ".join(parts) + "."]
    if shown:
        out.append("Ratios: " + ", ".join(shown) + ".")
    return [*out, ""]


def memory(d: dict[str, Any]) -> list[str]:
    lines = [
        "### Peak memory, 1x vs 10x frames (`memory-cpu.json`)",
        "",
        f"{d['frames_1x']:,} vs {d['frames_10x']:,} frames of "
        f"{d['frame_bytes'] // 1024} KiB, each run in a fresh process; {d['bound']}. "
        + (
            "The writer rows are the disk stores' writer processes (where their blocks "
            "and chunk buffers live), read after the last frame's commit."
            if any("writer_peak_rss_mib_1x" in s for s in d["stores"].values())
            else "The peak is the producer process's only (the one calling `Sink.write`): "
            "a disk store's writer process, where its blocks and chunk buffers live, was "
            "not counted in this recording."
        ),
        "",
    ]
    rows = []
    for name, s in d["stores"].items():
        for who, key in (("producer", ""), ("writer", "writer_")):
            if f"{key}peak_rss_mib_1x" in s:
                rows.append([
                    name if who == "producer" else "",
                    who,
                    f"{s[key + 'peak_rss_mib_1x']:.1f}",
                    f"{s[key + 'peak_rss_mib_10x']:.1f}",
                    f"{s[key + 'ratio_10x_1x']:.3f}",
                ])
    lines += _table(["store", "process", "peak MiB (1x)", "peak MiB (10x)", "10x / 1x"], rows)
    for kind, note in d.get("notes", {}).items():
        lines += [f"{kind}: {note}", ""]
    return lines


def overlap(d: dict[str, Any], name: str = "overlap-cpu.json") -> list[str]:
    if d.get("version") == 2:
        return _overlap_v2(d, name)
    lines = [
        "### Overlap (`overlap-cpu.json`)",
        "",
        f"{d['grid']}x{d['grid']} float32 frames, capacity {d['capacity']}, NumPy stencil "
        "(and a `sleep` variant); eta over the whole run and before the final close (the "
        "last frames' write and commit cannot overlap anything in a short run). In "
        "parentheses: frames were dropped, so less was written.",
        "",
    ]
    rows = []
    for r in d["rows"]:
        lost = r["dropped"] > 0
        fmt = "({:.2f})" if lost else "{:.2f}"
        rows.append(
            [
                r["config"],
                r["store"],
                r["policy"],
                "Sink" if r["api"] == "async" else "SyncSink",
                fmt.format(r["eta"]),
                fmt.format(r["eta_before_close"]),
                f"{(r['compute_slowdown'] - 1) * 100:.1f}%",
                f"{r['dropped']}/{r['spilled']}",
            ]
        )
    header = [
        "loop",
        "store",
        "policy",
        "API",
        "eta",
        "eta before close",
        "slowdown",
        "dropped/spilled",
    ]
    lines += _table(header, rows)
    lines += ["Target: eta >= 0.8 for NpyDirectory, compute-bound, NumPy kernel.", ""]
    return lines


def _overlap_v2(d: dict[str, Any], name: str) -> list[str]:
    cal = d["calibration"]
    preempt = all("preempted_per_s" in r for r in d["rows"])
    io = ", ".join(
        f"{_STORE[k]} {v * 1e3:.2f} ms ({cal['frames'][k]} frames)"
        for k, v in cal["t_io_frame"].items()
    )
    where = f", stores on {d['filesystem']}" if "filesystem" in d else ""
    lines = [
        f"### Overlap (`{name}`{where})",
        "",
        f"Frames of {d['frame_bytes'] / 2**20:.0f} MiB ({d['frame']}), capacity "
        f"{d['capacity']}, policy block, commit every {d['commit_every']} frames (each an "
        f"fsync); one compute step per frame, calibrated to the synchronous write of one "
        f"frame ({io}). Each variant in a fresh process (malloc thresholds pinned), "
        f"interleaved, best of {d['repeats']}. eta = (T_compute + T_io - T_total) / T_io; "
        "floor: 1 - capture / T_io, where capture is a bare `np.copyto` of every frame; "
        "eta without open/close leaves out the sink's start and final commit; loop / memmap: "
        "T_total over the same loop writing into an `open_memmap` file flushed at the same "
        "cadence.",
        "",
    ]
    rows = [
        [
            r["kind"],
            _STORE[r["store"]],
            _API[r["api"]],
            r["writer"],
            f"{r['compute_over_io']:.2f}",
            f"{r['eta']:.2f}",
            f"{r['eta_floor']:.2f}",
            f"{r['eta_loop']:.2f}",
            f"{r['loop_vs_memmap']:.2f}",
            f"{(r['compute_slowdown'] - 1) * 100:.1f}%",
            *(
                [f"{(r['compute_cpu_slowdown'] - 1) * 100:.1f}%", f"{r['preempted_per_s']:,.0f}"]
                if preempt
                else []
            ),
        ]
        for r in d["rows"]
    ]
    header = [
        "compute",
        "store",
        "API",
        "writer",
        "T_compute / T_io",
        "eta",
        "floor",
        "eta without open/close",
        "loop / memmap",
        "slowdown",
        *(["slowdown in CPU time", "preempted / s"] if preempt else []),
    ]
    lines += _table(header, rows)
    if preempt:
        lines += [
            "Slowdown: the compute step with the sink against alone, in wall time and in the "
            "thread's CPU time (preemption taken out); preempted / s: the simulation's thread "
            "preempted per second in that run (another task, or a core's interrupt work, took "
            "its core).",
            "",
        ]
    t = d["targets"]
    lines += [
        f"Targets: eta >= {t['eta']} for every kind of compute; loop time <= "
        f"{t['loop_vs_memmap']}x the synchronous memmap loop.",
        "",
    ]
    return lines


def capture(d: dict[str, Any], name: str = "capture-cpu.json") -> list[str]:
    handoff = all("copy_handoff_mean" in r for r in d["rows"])
    where = f" Stores on {d['filesystem']}." if "filesystem" in d else ""
    lines = [
        f"### Capture cost (`{name}`)",
        "",
        f"The producer's time in `write()` against a bare `np.copyto` of the same frame into "
        f"a preallocated buffer (no sink open), each timed between stretches of pure-Python "
        f"compute ({d['gap_ratio']}x one frame's synchronous write); copyto in loop: the same "
        f"copy timed between the writes, the sink running"
        + (
            "; hand-off: the copy into one of two shared buffers that another process reads "
            "after each copy, as the writer reads a slot (no sink open)"
            if handoff
            else ""
        )
        + f". {d['store']}, commit every {d['commit_every']}, capacity {d['capacity']}, "
        f"best of {d['repeats']}.{where}",
        "",
    ]
    rows = [
        [
            r["size"],
            _API[r["api"]],
            r["writer"],
            f"{r['write_mean'] * 1e3:.3f}",
            f"{r['copy_mean'] * 1e3:.3f}",
            f"{r['copy_in_loop_mean'] * 1e3:.3f}",
            *([f"{r['copy_handoff_mean'] * 1e3:.3f}"] if handoff else []),
            f"{r['ratio']:.2f}",
            f"{r['ratio_median']:.2f}",
        ]
        for r in d["rows"]
    ]
    header = [
        "frame",
        "API",
        "writer",
        "write ms",
        "copyto ms",
        "copyto in loop ms",
        *(["hand-off copy ms"] if handoff else []),
        "write / copyto",
        "(medians)",
    ]
    lines += _table(header, rows)
    lines += [f"Target: write <= {d['targets']['write_over_copyto']}x copyto (means).", ""]
    return lines


def _baseline_writers(d: dict[str, Any]) -> str:
    """Which writer the snapsink rows ran (recorded since the throttled store moved
    to a module a writer process imports; older recordings ran a thread)."""
    kinds = {r["sink_writer"] for r in d["rows"] if "sink_writer" in r}
    if not kinds:
        return (
            "The snapsink rows ran the thread writer, not the writer process a plain "
            "NpyDirectory gets: the throttled store class was local to a function, "
            "which a writer process cannot import."
        )
    return f"The snapsink rows ran the {' and '.join(sorted(kinds))} writer."


def baselines(d: dict[str, Any]) -> list[str]:
    lines = [
        "### Against today's writers (`baselines-cpu.json`)",
        "",
        f"The same loop (frames of {d['frame_bytes'] >> 20} MiB) written by (a) a preallocated "
        "memmap called in the loop, (b) an unbounded queue + thread, (c) zarr `append`, and "
        "snapsink (NpyDirectory, block). Each run in a fresh process; "
        f"{d['rss_method']}. "
        + _baseline_writers(d),
        "",
    ]
    rows = [
        [
            r["scenario"],
            r["writer"],
            f"{r['t_loop']:.2f}",
            f"{r['peak_rss'] / 2**20:.0f}",
            f"{r['rss_anon_growth'] / 2**20:.0f}",
            str(r.get("max_queue", "")),
            str(r["frames_lost"]),
        ]
        for r in d["rows"]
    ]
    header = [
        "scenario",
        "writer",
        "loop s",
        "peak RSS MiB",
        "anon growth MiB",
        "max queue",
        "lost",
    ]
    lines += _table(header, rows)
    ratios = [[k, f"{v['ratio']:.2f}", v["target"]] for k, v in d["ratios"].items()]
    lines += _table(["ratio", "value", "target"], ratios)
    return lines


def gpu(d: dict[str, Any], name: str) -> list[str]:
    lines = [
        f"### GPU capture on {d['device']} (`{name}`)",
        "",
        "A stencil on the simulation's stream; snapshots through `Sink` into a store that "
        "checks each frame, with the sink's writer thread (`thread`) or its writer process "
        "(`process`: the copy lands in page-locked shared memory). `block` is the host time "
        "of one `write`; `/ .get()` divides it by a synchronous `.get()` of the same frame; "
        "bandwidth is over the pinned `cudaMemcpyAsync` peak measured in the same run; eta "
        "at compute = r x I/O, until the sink is closed and, where measured, until its last "
        "`flush` (the frames' cost without the close, which frees the slots: page-locked "
        "shared memory takes about 0.1 s per GiB to release). At 16 MB one stencil step is "
        "shorter than its launch on the host, so that loop is host-bound and the host time "
        "of every `write` shows in full.",
        "",
    ]
    rows = []
    paths = (
        ("sink", "Sink, thread"),
        ("sink_borrow", "Sink copy=False, thread"),
        ("sink_process", "Sink, process"),
        ("sink_borrow_process", "Sink copy=False, process"),
    )
    for s in d["sizes"]:
        for key, label in paths:
            k = s.get(key)
            if not k or "error" in k:
                continue
            rows.extend(
                [
                    f"{s['size_mb']} MB",
                    label,
                    f"{o['ratio']:g}",
                    f"{o['block_ms']:.3f} ms",
                    f"{o['block_over_sync_get'] * 100:.2f}%",
                    f"{k['bw_over_peak']:.2f}",
                    f"{o['eta']:.3f}",
                    f"{o['eta_run']:.3f}" if "eta_run" in o else "",
                    f"{o['slowdown'] * 100:.1f}%",
                ]
                for o in k["overlap"]
            )
    header = [
        "frame", "path", "r", "block", "/ .get()", "bw / peak", "eta", "eta to flush", "slowdown"
    ]
    lines += _table(header, rows)
    lines += [
        "Targets: `write` blocking <= 1% of the synchronous copy for a 64 MB frame; "
        "D2H >= 90% of peak; eta >= 0.95 when compute >= I/O.",
        "",
    ]
    return lines


def render(results: Path) -> str:
    lines = [START, ""]
    for fname, fn in (
        ("small_frames-cpu.json", small_frames),
        ("throughput-cpu.json", throughput),
        ("memory-cpu.json", memory),
        ("overlap-cpu.json", overlap),
        ("overlap-cpu-2.json", lambda d: overlap(d, "overlap-cpu-2.json")),
        ("overlap-cpu-tmpfs.json", lambda d: overlap(d, "overlap-cpu-tmpfs.json")),
        ("capture-cpu.json", capture),
        ("capture-cpu-tmpfs.json", lambda d: capture(d, "capture-cpu-tmpfs.json")),
        ("baselines-cpu.json", baselines),
    ):
        d = _load(results, fname)
        if d is not None:
            lines += fn(d)
    for path in sorted(results.glob("gpu_overlap-*.json")):
        lines += gpu(json.loads(path.read_text()), path.name)
    lines.append(END)
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--results", type=Path, default=ROOT / "benchmarks" / "results")
    p.add_argument("--doc", type=Path, default=ROOT / "docs" / "benchmarks.md")
    p.add_argument("--check", action="store_true", help="fail if the doc is out of date")
    args = p.parse_args(argv)
    text = args.doc.read_text()
    if START not in text or END not in text:
        print(f"{args.doc}: no {START} ... {END} markers", file=sys.stderr)
        return 2
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    new = head + render(args.results) + tail
    if args.check:
        return 0 if new == text else 1
    args.doc.write_text(new)
    return 0


if __name__ == "__main__":
    sys.exit(main())
