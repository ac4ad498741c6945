"""Pipeline benchmarks (issue "tileseg predict"), each measured in one run and printed:

(a) overlap   pipeline wall time / summed model forward time on the same tiles of a >= 20k x 20k
              synthetic JPEG SVS, model of realistic cost (target <= 1.10). Reported for the
              inference phase (read + forward + store, what the runner overlaps) and for the
              whole run_slide (+ open/tissue mask + stitch/write).
(b) memory    peak RSS of a run on a 100k x 100k slide / on a 10k x 10k slide, same tissue
              (mostly background), cheap model (target <= 1.2).
(c) crash     kill -9 a run at a random point, rerun: identical final output? tiles whose
              forward finished but were lost (recomputed), in batches (target <= 1 batch).

    python benchmarks/bench_pipeline.py [--only a,b,c] [--workdir DIR] [--size-a 20000]

Slides are painted procedurally (tissue ellipses with a lattice of jittered nuclei) tile by tile
through tilesegcli.testing.synthetic.write_slide_tiff, so even the 100k slide never sits in memory.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

PINK = np.array([230, 150, 190], np.uint8)
PURPLE = np.array([110, 60, 160], np.uint8)


class TissuePainter:
    """Level-0 ellipses of tissue (cx, cy, rx, ry) with nuclei on a jittered lattice."""

    def __init__(self, blobs: list[tuple[float, float, float, float]], spacing: float = 22.0,
                 radius: float = 5.0) -> None:
        self.blobs = blobs
        self.spacing, self.radius = spacing, radius

    def __call__(self, x: int, y: int, w: int, h: int, ds: float) -> np.ndarray:
        out = np.full((h, w, 3), 242, np.uint8)
        X0, Y0, X1, Y1 = x * ds, y * ds, (x + w) * ds, (y + h) * ds
        hits = [b for b in self.blobs
                if b[0] + b[2] >= X0 and b[0] - b[2] <= X1 and b[1] + b[3] >= Y0 and b[1] - b[3] <= Y1]
        if not hits:
            return out
        xs = ((x + np.arange(w) + 0.5) * ds)[None, :]
        ys = ((y + np.arange(h) + 0.5) * ds)[:, None]
        tissue = np.zeros((h, w), bool)
        for cx, cy, rx, ry in hits:
            tissue |= ((xs - cx) / rx) ** 2 + ((ys - cy) / ry) ** 2 <= 1.0
        s = self.spacing
        gx, gy = np.floor(xs / s), np.floor(ys / s)
        jx = np.modf(np.abs(np.sin(gx * 12.9898 + gy * 78.233)) * 43758.5453)[0]
        jy = np.modf(np.abs(np.sin(gx * 39.3468 + gy * 11.135)) * 24634.6345)[0]
        nx, ny = (gx + 0.3 + 0.4 * jx) * s, (gy + 0.3 + 0.4 * jy) * s
        nuc = tissue & ((xs - nx) ** 2 + (ys - ny) ** 2 <= self.radius**2)
        out[tissue] = PINK
        out[nuc] = PURPLE
        return out


def make_slide(path: Path, size: int, blobs: list[tuple[float, float, float, float]],
               mpp: float) -> Path:
    from tilesegcli.testing import synthetic

    if path.exists():
        return path
    t0 = time.perf_counter()
    tmp = path.with_name(path.name + ".part")
    synthetic.write_slide_tiff(tmp, TissuePainter(blobs), width=size, height=size, kind="svs",
                               mpp=mpp, tile=512, quality=85)
    os.replace(tmp, path)
    print(f"  wrote {path.name} ({size}x{size}, {path.stat().st_size / 1e6:.0f} MB) in "
          f"{time.perf_counter() - t0:.0f} s", file=sys.stderr)
    return path


def realistic_model():  # noqa: ANN201
    from tilesegcli.segmenters.simple import SimpleSegmenter

    # Geometry of the aff-nuclei card (instance, 0.5 µm/px, 192 px tiles, 64 px overlap);
    # ~5 GFLOP per tile: the order of a small transformer segmenter on CPU
    return SimpleSegmenter(task="instance", width=48, depth=4, tile_size=192, overlap=64,
                           mpp=0.5, name="bench-conv")


# --------------------------------------------------------------------------- (a)
def bench_a(work: Path, size: int) -> dict:
    import torch

    from tilesegcli.pipeline import predict

    torch.set_num_threads(1)
    c = size / 2
    blobs = [(c * 0.7, c * 0.8, size * 0.12, size * 0.08), (c * 1.3, c * 1.2, size * 0.1, size * 0.12)]
    slide = make_slide(work / f"a_{size}.svs", size, blobs, mpp=0.25)
    out = work / f"a_{size}.geojson"
    rows = {}
    for stream in (False, True):  # stitch after inference / during it (default)
        import shutil

        shutil.rmtree(work / "stores_a", ignore_errors=True)
        [r] = predict(slide, segmenter=realistic_model(), output=out, overwrite=True,
                      batch_size=8, num_workers=2, workdir=work / "stores_a",
                      stream_merge=stream)
        assert r.status == "done", r.error
        t = r.timings
        rows["stream_merge" if stream else "merge_after"] = {
            "slide_px": size, "tiles_total": r.tiles_total, "tiles_run": r.tiles_computed,
            "objects": r.objects, "forward_s": round(t["forward_s"], 2),
            "infer_wall_s": round(t["infer_s"], 2), "total_wall_s": round(t["total_s"], 2),
            "open_s": round(t["open_s"], 2), "merge_tail_s": round(t.get("merge_s", 0.0), 2),
            "ratio_infer_over_forward": round(t["infer_s"] / t["forward_s"], 3),
            "ratio_total_over_forward": round(t["total_s"] / t["forward_s"], 3),
        }
    return rows


# --------------------------------------------------------------------------- (b)
def _rss_child(slide: str, out: str, workdir: str, task: str) -> None:
    import torch

    from tilesegcli.pipeline import predict
    from tilesegcli.segmenters.simple import SimpleSegmenter

    torch.set_num_threads(1)
    [r] = predict(slide, segmenter=SimpleSegmenter(task=task), output=out, overwrite=True,
                  batch_size=8, num_workers=2, workdir=workdir)
    rss_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"status": r.status, "error": r.error, "tiles_total": r.tiles_total,
                      "tiles_run": r.tiles_computed, "objects": r.objects,
                      "peak_rss_mb": round(rss_kb / 1024, 1), "total_s": round(r.timings["total_s"], 1)}))


def bench_b(work: Path, task: str) -> dict:
    res = {}
    for size in (10_000, 100_000):
        # identical tissue (absolute size and content) in both slides
        blobs = [(3000.0, 3000.0, 1500.0, 1000.0), (6500.0, 7000.0, 1200.0, 1400.0)]
        slide = make_slide(work / f"b_{size}.svs", size, blobs, mpp=0.5)
        cmd = [sys.executable, __file__, "--rss-child", str(slide), str(work / f"b_{size}.geojson"),
               str(work / f"stores_b_{task}"), task]
        p = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if p.returncode != 0:
            raise RuntimeError(p.stderr[-2000:])
        res[size] = json.loads(p.stdout.strip().splitlines()[-1])
        if res[size]["status"] != "done":
            raise RuntimeError(f"(b) run on {size} px failed: {res[size]['error']}")
    return {"task": task, "10k": res[10_000], "100k": res[100_000],
            "rss_ratio_100k_over_10k": round(res[100_000]["peak_rss_mb"] / res[10_000]["peak_rss_mb"], 3)}


# --------------------------------------------------------------------------- (c)
class CountingSegmenter:
    """Wraps a segmenter; appends each finished forward's batch size to a file (fsync'd)."""

    def __init__(self, inner, log_path: str) -> None:  # noqa: ANN001
        self.inner = inner
        self.log = open(log_path, "a")  # noqa: SIM115
        for k in ("name", "task", "classes", "mpp", "mpp_unit", "tile_size", "overlap", "weights_sha256"):
            setattr(self, k, getattr(inner, k))

    def predict_batch(self, tiles):  # noqa: ANN001, ANN201
        res = self.inner.predict_batch(tiles)
        self.log.write(f"{len(tiles)}\n")
        self.log.flush()
        os.fsync(self.log.fileno())
        return res


def _crash_child(slide: str, out: str, log: str, summary: str) -> None:
    import torch

    from tilesegcli.pipeline import predict

    torch.set_num_threads(1)
    [r] = predict(slide, segmenter=CountingSegmenter(realistic_model(), log), output=out,
                  batch_size=8, num_workers=2)
    Path(summary).write_text(json.dumps({"status": r.status, "computed": r.tiles_computed,
                                         "selected": r.tiles_selected}))


def _features(path: Path) -> list:
    import shapely

    data = json.loads(path.read_text())
    return sorted((f["properties"]["objectType"], shapely.normalize(
        shapely.from_geojson(json.dumps(f["geometry"]))).wkt) for f in data["features"])


def bench_c(work: Path, seed: int) -> dict:
    size = 8000
    blobs = [(3000.0, 3500.0, 1800.0, 1500.0), (5500.0, 5000.0, 1500.0, 1800.0)]
    slide = make_slide(work / "c.svs", size, blobs, mpp=0.25)
    d = work / "c_run"
    if d.exists():
        import shutil

        shutil.rmtree(d)
    d.mkdir()

    def child(name: str) -> subprocess.Popen:
        return subprocess.Popen([sys.executable, __file__, "--crash-child", str(slide),
                                 str(d / f"{name}.geojson"), str(d / f"{name}.log"),
                                 str(d / f"{name}.json")], stderr=subprocess.PIPE)

    ref = child("ref")
    assert ref.wait() == 0, ref.stderr.read()[-2000:]
    selected = json.loads((d / "ref.json").read_text())["selected"]
    store = d / "run.geojson.tiles.zarr"

    def done() -> int:
        root = store / "done" / "c"
        return sum(1 for r in root.iterdir() for f in r.iterdir() if f.name.isdigit()) if root.is_dir() else 0

    target = random.Random(seed).randint(1, selected - 1)
    p = child("run")
    while done() < target and p.poll() is None:
        time.sleep(0.005)
    p.send_signal(signal.SIGKILL)
    p.wait()
    done_at_kill = done()
    forwarded = sum(int(x) for x in (d / "run.log").read_text().split())
    rerun = child("run")
    assert rerun.wait() == 0, rerun.stderr.read()[-2000:]
    second = json.loads((d / "run.json").read_text())
    identical = _features(d / "run.geojson") == _features(d / "ref.geojson")
    lost = forwarded - done_at_kill  # forward finished, result not yet stored when killed
    return {"tiles_selected": selected, "killed_after_done_tiles": done_at_kill,
            "forwarded_before_kill": forwarded, "rerun_computed": second["computed"],
            "finished_tiles_recomputed": second["computed"] - (selected - done_at_kill),
            "forwarded_but_lost_tiles": lost, "lost_batches": round(lost / 8, 2),
            "identical_output": identical}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--only", default="a,b,c")
    ap.add_argument("--workdir", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp")) / "tileseg-bench")
    ap.add_argument("--size-a", type=int, default=20_000)
    ap.add_argument("--seed", type=int, default=int(time.time()))
    ap.add_argument("--b-task", default="instance", help="simple net task for (b)")
    ap.add_argument("--rss-child", nargs=4)
    ap.add_argument("--crash-child", nargs=4)
    a = ap.parse_args()
    if a.rss_child:
        return _rss_child(*a.rss_child)
    if a.crash_child:
        return _crash_child(*a.crash_child)
    a.workdir.mkdir(parents=True, exist_ok=True)
    report = {"cpus": len(os.sched_getaffinity(0)), "load_avg_1m": os.getloadavg()[0]}
    if "a" in a.only:
        report["a_overlap"] = bench_a(a.workdir, a.size_a)
        print(json.dumps({"a_overlap": report["a_overlap"]}), file=sys.stderr)
    if "b" in a.only:
        report["b_memory"] = bench_b(a.workdir, a.b_task)
        print(json.dumps({"b_memory": report["b_memory"]}), file=sys.stderr)
    if "c" in a.only:
        report["c_crash"] = bench_c(a.workdir, a.seed)
    report["load_avg_1m_end"] = os.getloadavg()[0]
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
