"""Whole-slide throughput of the default model: this tree vs an earlier revision, one run.

Runs ``tileseg predict`` on the bundled slide (or ``--slide``) twice in subprocesses, with the
same threads and the same ROI window: once with the code of ``--baseline-rev`` (checked out into
a temporary git worktree, its own bundled card) and once with this tree. Prints wall time,
summed forward time, objects and the ratio old / new. Then counts the FLOPs of one forward of the
current card (``torch.utils.flop_counter``: machine-independent), reports GFLOP per mm² of
processed tissue at the card's settings, and the achieved GFLOP/s of the run as a fraction of a
2048² fp32 matmul measured in the same process.

    python benchmarks/bench_throughput.py                     # ROI window, 2 threads
    python benchmarks/bench_throughput.py --full --threads 2  # the whole bundled slide
    python benchmarks/bench_throughput.py --variant "mt2=--model-threads 2"  # + this tree with
                                                              # these options, same run
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SLIDE = ROOT / "examples" / "cmu-1-small-region.svs"
WINDOW = (700, 1200, 1500, 2000)  # level-0 px of the bundled slide: 800 x 800 of dense tissue
SMALL = (1000, 1600, 1200, 1800)  # 200 x 200 (--small: a quick check of the script)


def run_cli(src: Path, slide: Path, out: Path, roi: Path | None, threads: int,
            extra: list[str]) -> dict[str, Any]:
    """``tileseg predict`` with the package from ``src``; wall time and the run summary."""
    env = {**os.environ, "PYTHONPATH": str(src), "OMP_NUM_THREADS": str(threads),
           "MKL_NUM_THREADS": str(threads)}
    summary = out.with_suffix(".summary.json")
    cmd = [sys.executable, "-m", "tilesegcli", "predict", str(slide), "-o", str(out), "--quiet",
           "--summary", str(summary), *(["--roi", str(roi)] if roi else []), *extra]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, cwd=src, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{src}: tileseg predict failed ({proc.returncode}): {proc.stderr[-2000:]}")
    doc = json.loads(summary.read_text())
    res = doc["slides"][0]
    n = len(json.loads(out.read_text())["features"])
    return {"wall_s": wall, "forward_s": float(res.get("timings", {}).get("forward_s", float("nan"))),
            "tiles": int(res.get("tiles_computed") or res.get("tiles_selected") or 0), "objects": n}


def flops_per_tile(model: str) -> tuple[float, Any]:
    """GFLOP of one flip view of one tile as the card runs it, counted on a batch of 8
    real-size tiles: with ``hv_views`` k of V views, the HoVer head's share counts k / V."""
    import numpy as np
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from tilesegcli.zoo import load_segmenter

    seg = load_segmenter(model, device="cpu")
    t = seg.tile_size
    x = seg._prepare(np.random.default_rng(0).integers(0, 255, (8, t, t, 3), dtype=np.uint8))

    def count(hv_rows: int | None) -> float:
        with torch.inference_mode(), FlopCounterMode(display=False) as fc:
            seg._call(x, hv_rows)
        return fc.get_total_flops() / 8 / 1e9

    full = count(None)
    if getattr(seg, "hv_views", 0) <= 0 or seg.hv_views >= seg.flip_views:
        return full, seg
    base = count(0)
    return base + (full - base) * seg.hv_views / seg.flip_views, seg


def matmul_gflops(threads: int) -> float:
    import torch

    torch.set_num_threads(threads)
    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    a @ b
    t0 = time.perf_counter()
    for _ in range(5):
        a @ b
    return 5 * 2 * 2048**3 / (time.perf_counter() - t0) / 1e9


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--slide", type=Path, default=SLIDE)
    ap.add_argument("--baseline-rev", default="dc1fefb", help="git revision of the old code")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--full", action="store_true", help="whole slide, not the ROI window")
    ap.add_argument("--small", action="store_true", help="a 200 x 200 px window (script check)")
    ap.add_argument("--model", default="aff-nuclei")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--variant", action="append", default=[], metavar="NAME=OPTIONS",
                    help="also run this tree with these predict options (repeatable)")
    ap.add_argument("--no-baseline", action="store_true", help="skip the old revision")
    a = ap.parse_args()
    variants = []
    for v in a.variant:
        name, sep, opts = v.partition("=")
        if not sep:
            raise SystemExit(f"--variant {v!r}: expected NAME=OPTIONS")
        variants.append((name, opts.split()))
    report: dict[str, Any] = {"slide": str(a.slide), "threads": a.threads, "full": a.full}
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        roi = None
        if not a.full:
            x0, y0, x1, y1 = SMALL if a.small else WINDOW
            roi = tmp / "roi.geojson"
            roi.write_text(json.dumps({"type": "FeatureCollection", "features": [{
                "type": "Feature", "properties": {"objectType": "annotation"},
                "geometry": {"type": "Polygon", "coordinates": [[[x0, y0], [x1, y0], [x1, y1],
                                                                 [x0, y1], [x0, y0]]]}}]}))
        old = tmp / "old"
        if not a.no_baseline:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(old),
                            a.baseline_rev], check=True, capture_output=True)
        try:
            if not a.no_baseline:
                report["old"] = run_cli(old, a.slide, tmp / "old.geojson", roi, a.threads, [])
                print(f"old ({a.baseline_rev}): {report['old']}", flush=True)
            report["new"] = run_cli(ROOT, a.slide, tmp / "new.geojson", roi, a.threads, [])
            print(f"new (this tree): {report['new']}", flush=True)
            for name, opts in variants:
                report[name] = run_cli(ROOT, a.slide, tmp / f"{name}.geojson", roi, a.threads,
                                       opts)
                print(f"{name} (this tree, {' '.join(opts)}): {report[name]}", flush=True)
        finally:
            if not a.no_baseline:
                subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force",
                                str(old)], capture_output=True)
    base = "old" if "old" in report else "new"
    for name in ["new", *(n for n, _ in variants)]:
        if name == base:
            continue
        w = report[base]["wall_s"] / report[name]["wall_s"]
        f = report[base]["forward_s"] / report[name]["forward_s"]
        report[f"speedup_wall_{name}"], report[f"speedup_forward_{name}"] = w, f
        print(f"speed-up {base}/{name}: wall {w:.2f}x, forward {f:.2f}x", flush=True)

    gf, seg = flops_per_tile(a.model)
    views = int(seg.flip_views)
    stride_um = (seg.tile_size - seg.overlap) * seg.mpp  # a tile's core edge in µm
    per_mm2 = gf * views / (stride_um**2 / 1e6)
    n = report["new"]["tiles"]
    achieved = gf * views * n / report["new"]["forward_s"]
    mm = matmul_gflops(a.threads)
    report.update({"gflop_per_tile_view": gf, "views": views, "gflop_per_mm2": per_mm2,
                   "achieved_gflops": achieved, "matmul_gflops": mm,
                   "fraction_of_matmul": achieved / mm})
    print(f"{a.model}: {gf:.2f} GFLOP per tile and view, {views} views, tile {seg.tile_size} / "
          f"overlap {seg.overlap} at {seg.mpp} µm/px -> {per_mm2:.0f} GFLOP per mm² of tissue; "
          f"achieved {achieved:.1f} GFLOP/s in the forward = {achieved / mm:.2f} of a 2048² "
          f"matmul ({mm:.1f} GFLOP/s, {a.threads} threads)")
    if a.json:
        a.json.write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
