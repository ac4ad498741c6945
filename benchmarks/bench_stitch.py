"""Benchmark: vectorize + stitch + write N small objects (default 1,000,000), streaming.

Objects are ellipses (radius 1.5-6 px) on a 17 px lattice, so many straddle tile seams (the
lattice does not align with the 448 px stride). Tiles are generated on the fly from per-cell
parameters (no full-size label image), run through ``stitch_instances`` and written as
GeoJSONSeq (or QuPath GeoJSON with --format qupath). Prints objects/s (stitch+vectorize+write,
tile generation excluded), RSS after 10% of the objects and at the end, and peak RSS: in streaming
mode RSS must not grow with the object count.

    python benchmarks/bench_stitch.py [--objects 1000000] [--format geojsonseq]

``--vs-model`` measures, in one run, stitch + vectorize + write time per tile against the forward
time per tile of the realistic model (the aff-nuclei card: its AFF + Mask2Former, tile size and
overlap, random weights, 1 thread) on dense synthetic nuclei (jittered lattice at MoNuSeg's
densest spacing, radii 3-8 px), and prints the ratio (issue 3: stitching <= 10 % of model time).

``--semantic`` instead measures (1) the choice core crops vs. linear blending on a synthetic model
whose probabilities get noisier towards the tile border (missing context), as pixel error against
the truth, and (2) ``stitch_semantic`` throughput (megapixels/s) and RSS on a large class map.
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


def semantic(size: int, tile: int, overlap: int) -> None:
    from scipy import ndimage

    from tilesegcli.segmenter import ClassInfo, TileResult
    from tilesegcli.stitching import StitchStats, stitch_semantic
    from tilesegcli.tiling import iter_tiles, make_grid

    rng = np.random.default_rng(0)
    n_cls = 4
    # (1) core crops vs linear blending, small image with full canvases
    h = w = 1536
    field = ndimage.gaussian_filter(rng.standard_normal((h, w)), 20)
    truth = np.digitize(field, np.quantile(field, [0.4, 0.7, 0.9])).astype(np.int64)
    onehot = np.eye(n_cls, dtype=np.float32)[truth].transpose(2, 0, 1)
    grid = make_grid(w, h, tile, overlap)
    yy, xx = np.mgrid[:tile, :tile]
    border = np.minimum(np.minimum(yy, xx), np.minimum(tile - 1 - yy, tile - 1 - xx)).astype(np.float32)
    sigma = 0.35 + 1.2 * np.exp(-border / (overlap / 4 + 1))  # context deficit near the border
    tent = np.minimum(border + 1, overlap + 1).astype(np.float32)  # linear ramp over the overlap
    crop = np.zeros((h, w), np.int64)
    acc = np.zeros((n_cls, h, w), np.float32)
    wsum = np.zeros((h, w), np.float32)
    for spec in iter_tiles(grid):
        y1, x1 = min(spec.y + tile, h), min(spec.x + tile, w)
        th, tw = y1 - spec.y, x1 - spec.x
        logits = onehot[:, spec.y : y1, spec.x : x1] * 2.0 + rng.standard_normal((n_cls, th, tw)) * sigma[:th, :tw]
        p = np.exp(logits - logits.max(0))
        p /= p.sum(0)
        cx0, cy0, cx1, cy1 = spec.core
        crop[cy0:cy1, cx0:cx1] = p[:, cy0 - spec.y : cy1 - spec.y, cx0 - spec.x : cx1 - spec.x].argmax(0)
        acc[:, spec.y : y1, spec.x : x1] += p * tent[:th, :tw]
        wsum[spec.y : y1, spec.x : x1] += tent[:th, :tw]
    blend = (acc / wsum).argmax(0)
    err_c, err_b = (crop != truth).mean(), (blend != truth).mean()
    print(f"semantic choice on {h}x{w}, tile {tile}/{overlap}: pixel error core-crop {100 * err_c:.2f}% "
          f"vs linear blend {100 * err_b:.2f}% (blend/crop = {err_b / err_c:.2f}); state per row band: "
          f"crop 2 B/px, blend {4 * n_cls + 4} B/px over the window height")
    # (2) throughput / memory of stitch_semantic on large maps generated tile by tile; the same
    # width at 1/3 and full height: traced memory must not grow with the number of rows
    import tracemalloc

    classes = [ClassInfo(f"c{i}", (40 * i, 0, 0)) for i in range(n_cls)]
    period = 97.0
    for height in (size // 3, size):
        grid = make_grid(size, height, tile, overlap)

        def tiles(grid=grid):
            for spec in iter_tiles(grid):
                ys = np.arange(spec.y, spec.y + tile)[:, None]
                xs = np.arange(spec.x, spec.x + tile)[None, :]
                v = np.sin(ys / period) * np.cos(xs / (1.3 * period)) + 0.4 * np.sin((xs + ys) / 23.0)
                cls = np.digitize(v, [-0.6, 0.2, 0.9])
                yield spec, TileResult(semantic=np.eye(n_cls, dtype=np.float32)[cls].transpose(2, 0, 1))

        st = StitchStats()
        tracemalloc.start()
        t0, c0 = time.perf_counter(), time.process_time()
        n = 0
        for _ in stitch_semantic(grid, tiles(), classes=classes, stats=st):
            n += 1
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        traced = tracemalloc.get_traced_memory()[1] / 2**20
        tracemalloc.stop()
        mpx = size * height / 1e6
        print(f"stitch_semantic {size}x{height} ({grid.rows}x{grid.cols} tiles, synthesis included): {n} regions, "
              f"{mpx / cpu:.1f} Mpx/s per core (CPU {cpu:.1f} s, wall {wall:.1f} s); pending peak "
              f"{st.pending_peak}; traced peak {traced:.0f} MiB; process peak RSS "
              f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")


def renumber(gid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Global ids (0 = none, k + 1 = object k) -> tile labels 1..n and the object index of each."""
    ids, inv = np.unique(gid, return_inverse=True)
    labels = inv.reshape(gid.shape).astype(np.int32)
    if ids[0] != 0:
        labels += 1
        ids = np.concatenate([[0], ids])
    return labels, ids[1:] - 1


def nuclei_tiles(grid, spacing: float, seed: int) -> tuple[list, np.ndarray]:  # noqa: ANN001
    """Instance label tiles of a dense jittered lattice of non-overlapping ellipses (one id per
    nucleus, global ids renumbered per tile) and the matching RGB tiles (purple on pink)."""
    from tilesegcli.segmenter import TileResult
    from tilesegcli.tiling import iter_tiles

    rng = np.random.default_rng(seed)
    ny, nx = int(np.ceil(grid.height / spacing)), int(np.ceil(grid.width / spacing))
    r_max = spacing / 2 - 2.5
    ra = rng.uniform(3.0, r_max, (ny, nx))
    rb = rng.uniform(3.0, r_max, (ny, nx))
    jx, jy = rng.uniform(-2, 2, (ny, nx)), rng.uniform(-2, 2, (ny, nx))
    score = rng.uniform(0.5, 1.0, ny * nx).astype(np.float32)
    out, rgb = [], []
    for spec in iter_tiles(grid):
        ys = spec.y + np.arange(spec.h) + 0.5
        xs = spec.x + np.arange(spec.w) + 0.5
        gy, gx = np.minimum(ys // spacing, ny - 1).astype(int), np.minimum(xs // spacing, nx - 1).astype(int)
        cy = (gy[:, None] + 0.5) * spacing + jy[gy[:, None], gx[None, :]]
        cx = (gx[None, :] + 0.5) * spacing + jx[gy[:, None], gx[None, :]]
        inside = ((xs[None, :] - cx) / ra[gy[:, None], gx[None, :]]) ** 2 + \
            ((ys[:, None] - cy) / rb[gy[:, None], gx[None, :]]) ** 2 <= 1.0
        inside &= (ys < grid.height)[:, None] & (xs < grid.width)[None, :]
        labels, fg = renumber(np.where(inside, gy[:, None] * nx + gx[None, :] + 1, 0))
        out.append((spec, TileResult(labels=labels, instance_classes=np.ones(len(fg), np.int64),
                                     instance_scores=score[fg])))
        img = np.empty((spec.h, spec.w, 3), np.uint8)
        img[:] = (230, 150, 190)
        img[inside] = (110, 60, 160)
        rgb.append(img)
    return out, np.stack(rgb)


def vs_model(n_side: int, batch: int, reps: int) -> None:
    import torch

    from tilesegcli.segmenters.aff_m2f import AFFSegmenter, build_model
    from tilesegcli.specs import LevelInfo, SlideInfo
    from tilesegcli.stitching import StitchStats, stitch_instances
    from tilesegcli.tiling import make_grid
    from tilesegcli.writers import open_writer
    from tilesegcli.zoo import load_card

    torch.set_num_threads(1)
    card = load_card("aff-nuclei")
    tile, overlap = card.tile_size, card.overlap
    stride = tile - overlap
    size = n_side * stride + overlap
    grid = make_grid(size, size, tile, overlap)
    spacing = 96.0 / np.sqrt(98)  # densest 96 um window of the card's density note, in 0.5 um px
    spacing /= card.mpp
    tiles, rgb = nuclei_tiles(grid, spacing, seed=0)
    n_tiles = len(tiles)
    n_obj_tile = np.mean([len(r.instance_scores) for _, r in tiles])
    info = SlideInfo("bench", "synthetic", size, size, (LevelInfo(size, size, 1.0),), mpp=card.mpp)
    out = Path(tempfile.mkdtemp()) / "o.geojson"
    # stitching + vectorization + QuPath GeoJSON writing (tiles pre-generated: excluded); a first
    # pass over the first tile row pays the one-off imports (shapely, rasterio) outside the timing
    with open_writer(out, "qupath", classes=card.classes, info=info, grid=grid) as w:
        for obj in stitch_instances(grid, iter(tiles[: grid.cols])):
            w.write(obj)
    st = StitchStats()
    t0, c0 = time.perf_counter(), time.process_time()
    with open_writer(out, "qupath", classes=card.classes, info=info, grid=grid) as w:
        n = sum(1 for obj in stitch_instances(grid, iter(tiles), stats=st) if w.write(obj))
    stitch_wall, stitch_cpu = time.perf_counter() - t0, time.process_time() - c0
    os.remove(out)
    # model forward on the same tiles' RGB, batches of `batch`, after one warm-up batch
    torch.manual_seed(0)
    seg = AFFSegmenter(card, build_model(card), device="cpu")
    seg.forward(rgb[:batch])
    fw_cpu = fw_wall = pred_cpu = 0.0
    n_fw = 0
    for i in range(reps):
        x = rgb[(i * batch) % (n_tiles - batch) :][:batch]
        t0, c0 = time.perf_counter(), time.process_time()
        seg.forward(x)
        fw_wall += time.perf_counter() - t0
        fw_cpu += time.process_time() - c0
        c0 = time.process_time()
        seg.predict_batch(x)
        pred_cpu += time.process_time() - c0
        n_fw += len(x)
    ms = 1000.0
    s_tile, f_tile, p_tile = stitch_cpu / n_tiles, fw_cpu / n_fw, pred_cpu / n_fw
    print(f"card {card.name}: tile {tile}, overlap {overlap}, {n_tiles} tiles ({grid.rows}x{grid.cols}), "
          f"nuclei spacing {spacing:.1f} px, {n_obj_tile:.0f} objects per tile window; "
          f"{n} objects written ({st.merged} merged across seams, {st.owned} owned)")
    print(f"stitch+vectorize+write (QuPath GeoJSON): {ms * s_tile:.1f} ms CPU per tile "
          f"(wall {ms * stitch_wall / n_tiles:.1f} ms)")
    print(f"model forward (1 thread, batch {batch}, {n_fw} tiles): {ms * f_tile:.0f} ms CPU per tile "
          f"(wall {ms * fw_wall / n_fw:.0f} ms); forward + postprocess (predict_batch): "
          f"{ms * p_tile:.0f} ms CPU per tile")
    print(f"ratio stitching / forward = {s_tile / f_tile:.3f} (target <= 0.10); "
          f"stitching / (forward + postprocess) = {s_tile / p_tile:.3f}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--objects", type=int, default=1_000_000)
    ap.add_argument("--tile", type=int, default=512)
    ap.add_argument("--overlap", type=int, default=64)
    ap.add_argument("--format", default="geojsonseq", choices=["geojsonseq", "qupath", "geojson.gz"])
    ap.add_argument("--semantic", action="store_true")
    ap.add_argument("--vs-model", action="store_true", help="stitching time vs aff-nuclei forward time")
    ap.add_argument("--side", type=int, default=12, help="--vs-model: tiles per side")
    ap.add_argument("--batch", type=int, default=4, help="--vs-model: forward batch size")
    ap.add_argument("--reps", type=int, default=3, help="--vs-model: timed forward batches")
    ap.add_argument("--size", type=int, default=12288, help="class map edge for --semantic")
    args = ap.parse_args()
    if args.vs_model:
        vs_model(args.side, args.batch, args.reps)
        return
    if args.semantic:
        semantic(args.size, args.tile, args.overlap)
        return

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
            labels, fg = renumber(np.where(inside, cell + 1, 0))
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
