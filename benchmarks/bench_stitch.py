"""Benchmark: vectorize + stitch + write N small objects (default 1,000,000), streaming.

Objects are ellipses (radius 1.5-6 px) on a 17 px lattice, so many straddle tile seams (the
lattice does not align with the 448 px stride). Tiles are generated on the fly from per-cell
parameters (no full-size label image), run through ``stitch_instances`` and written as
GeoJSONSeq (or QuPath GeoJSON with --format qupath). Prints objects/s (stitch+vectorize+write,
tile generation excluded), RSS after 10% of the objects and at the end, and peak RSS: in streaming
mode RSS must not grow with the object count.

    /work/venv/bin/python benchmarks/bench_stitch.py [--objects 1000000] [--format geojsonseq]
"""

from __future__ import annotations

import argparse
import os
import resource
import tempfile
import time
from pathlib import Path

import numpy as np

CELL = 17


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--objects", type=int, default=1_000_000)
    ap.add_argument("--tile", type=int, default=512)
    ap.add_argument("--overlap", type=int, default=64)
    ap.add_argument("--format", default="geojsonseq", choices=["geojsonseq", "qupath", "geojson.gz"])
    args = ap.parse_args()

    import psutil

    from tilesegcli.segmenter import ClassInfo, TileResult
    from tilesegcli.specs import LevelInfo, SlideInfo
    from tilesegcli.stitching import StitchStats, stitch_instances
    from tilesegcli.tiling import iter_tiles, make_grid
    from tilesegcli.writers import open_writer

    side = int(np.ceil(np.sqrt(args.objects)))
    n_rows = int(np.ceil(args.objects / side))
    width, height = side * CELL, n_rows * CELL
    rng = np.random.default_rng(0)
    n_cells = side * n_rows
    a = rng.uniform(1.5, 6.0, n_cells).astype(np.float32)
    b = rng.uniform(1.5, 6.0, n_cells).astype(np.float32)
    cls = rng.integers(1, 3, n_cells)
    score = rng.uniform(0.3, 1.0, n_cells).astype(np.float32)
    centre = (CELL - 1) / 2.0
    alive = np.arange(n_cells) < args.objects  # exactly N objects

    grid = make_grid(width, height, args.tile, args.overlap)
    classes = [ClassInfo("background", (0, 0, 0)), ClassInfo("A", (255, 0, 0)), ClassInfo("B", (0, 0, 255))]
    info = SlideInfo("bench", "synthetic", width, height, (LevelInfo(width, height, 1.0),), mpp=0.5)
    gen_time = gen_cpu = 0.0

    def tiles():
        nonlocal gen_time, gen_cpu
        for spec in iter_tiles(grid):
            t0 = time.perf_counter()
            c0 = time.process_time()
            ys = np.arange(spec.y, spec.y + spec.h)
            xs = np.arange(spec.x, spec.x + spec.w)
            cy, cx = ys // CELL, xs // CELL
            cell = np.clip(cy, 0, n_rows - 1)[:, None] * side + np.clip(cx, 0, side - 1)[None, :]
            dy = (ys % CELL - centre)[:, None]
            dx = (xs % CELL - centre)[None, :]
            inside = (dx / a[cell]) ** 2 + (dy / b[cell]) ** 2 <= 1.0
            inside &= (ys < height)[:, None] & (xs < width)[None, :] & alive[cell]
            lab_global = np.where(inside, cell + 1, 0)
            ids, inv = np.unique(lab_global, return_inverse=True)
            labels = inv.reshape(lab_global.shape).astype(np.int32)
            if ids[0] != 0:
                labels += 1
                ids = np.concatenate([[0], ids])
            fg = ids[1:] - 1
            res = TileResult(labels=labels, instance_classes=cls[fg], instance_scores=score[fg])
            gen_time += time.perf_counter() - t0
            gen_cpu += time.process_time() - c0
            yield spec, res

    proc = psutil.Process()
    out = Path(tempfile.mkdtemp()) / {"geojsonseq": "o.geojsons", "qupath": "o.json", "geojson.gz": "o.geojson.gz"}[args.format]
    st = StitchStats()
    marks: dict[str, float] = {}
    t0, c0 = time.perf_counter(), time.process_time()
    n = 0
    with open_writer(out, args.format, classes=classes, info=info, grid=grid) as w:
        for obj in stitch_instances(grid, tiles(), stats=st):
            w.write(obj)
            n += 1
            if n == max(1, args.objects // 10):
                marks["rss_10pct_mb"] = proc.memory_info().rss / 2**20
    total, cpu = time.perf_counter() - t0, time.process_time() - c0
    work, work_cpu = total - gen_time, cpu - gen_cpu
    rss_end = proc.memory_info().rss / 2**20
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    size = out.stat().st_size / 2**20
    os.remove(out)
    print(f"image {width}x{height} working px, {grid.rows}x{grid.cols} tiles of {args.tile} (overlap {args.overlap})")
    print(f"objects written: {n} (expected {args.objects}); merged across seams: {st.merged}; "
          f"resolved at seams: {st.seam_groups}; pending peak: {st.pending_peak}")
    print(f"tile generation (excluded): {gen_time:.1f} s; stitch+vectorize+write: {work:.1f} s "
          f"-> {n / work:,.0f} objects/s wall; CPU {work_cpu:.1f} s -> {n / work_cpu:,.0f} objects/s per core; "
          f"{1000 * work_cpu / (grid.rows * grid.cols):.1f} ms CPU per tile")
    print(f"RSS after {args.objects // 10:,} objects: {marks.get('rss_10pct_mb', float('nan')):.0f} MiB; "
          f"after {n:,}: {rss_end:.0f} MiB; peak RSS {peak:.0f} MiB; output {size:.0f} MiB ({args.format})")
    if n != args.objects:
        raise SystemExit("object count mismatch")


if __name__ == "__main__":
    main()
