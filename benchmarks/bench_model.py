"""Full AFF-Mask2Former forward time and peak RSS (fp32, CPU), beside the official-code anchor.

    $ python benchmarks/bench_model.py                      # aff_mini, aff_tiny at 512 and 1024
    $ python benchmarks/bench_model.py --backbones aff_mini --sizes 512 --threads 2

Each (backbone, size) runs in its own subprocess so its peak RSS (ru_maxrss) is its own.
Workers run with OMP_WAIT_POLICY=PASSIVE (``--omp-wait active`` to compare): on a shared machine
spinning OpenMP threads wait on descheduled peers and inflate wall time several-fold.
Model: backbone + ADE20K head (150 classes, 100 queries, official widths), random weights
(timings do not depend on weight values; token counts are fixed by the input size).
Anchor (issue 5, official code with torch gathers, AFF-Mini + ADE20K head, 2 threads):
512^2 -> 16.5-23 s, 2.1 GB; 1024^2 -> 152 s, 18.2 GB.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

ANCHOR = {512: (16.5, 23.0, 2.1), 1024: (152.0, 152.0, 18.2)}


def worker(backbone: str, size: int, threads: int, repeats: int) -> dict:
    import resource

    import torch

    from tilesegcli.nn.aff_m2f import build_aff_m2f_preset

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = build_aff_m2f_preset(backbone, "ade20k_semantic").eval()
    x = torch.randn(1, 3, size, size)
    best: dict | None = None
    with torch.no_grad():
        for _ in range(repeats):
            c0 = time.process_time()
            t0 = time.perf_counter()
            feats = model.backbone(x)
            t1 = time.perf_counter()
            out = model.sem_seg_head(feats)
            t2 = time.perf_counter()
            c2 = time.process_time()
            model.sem_seg_head(feats, with_aux=False)
            t3 = time.perf_counter()
            run = {"total_s": t2 - t0, "cpu_s": c2 - c0, "backbone_s": t1 - t0,
                   "head_s": t2 - t1,
                   "head_no_aux_s": t3 - t2}
            if best is None or run["total_s"] < best["total_s"]:
                best = run
    assert best is not None
    tokens = {k: int(v.feat.shape[1]) for k, v in feats.items()} if isinstance(feats, dict) else {
        k: int(v.feat.shape[1]) for k, v in feats.levels.items()}
    peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2
    return {"backbone": backbone, "size": size, "threads": threads, **best,
            "peak_rss_gb": peak_gb, "tokens": tokens,
            "pred_masks": list(out["pred_masks"].shape)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backbones", nargs="+", default=["aff_mini", "aff_tiny"])
    ap.add_argument("--sizes", nargs="+", type=int, default=[512, 1024])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=2, help="runs per config at 512 (1 at 1024)")
    ap.add_argument("--omp-wait", choices=["passive", "active"], default="passive",
                    help="OMP_WAIT_POLICY of the workers (default passive)")
    ap.add_argument("--worker", nargs=2, metavar=("BACKBONE", "SIZE"), help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.worker:
        res = worker(a.worker[0], int(a.worker[1]), a.threads,
                     a.repeats if int(a.worker[1]) <= 512 else 1)
        print(json.dumps(res))
        return
    import os

    env = {**os.environ, "OMP_WAIT_POLICY": a.omp_wait.upper()}
    print(f"threads {a.threads}, OMP_WAIT_POLICY={a.omp_wait.upper()}; load average at start {os.getloadavg()[0]:.1f} on "
          f"{os.cpu_count()} cores (timings inflate when the machine is shared)")
    rows = []
    for bb in a.backbones:
        for s in a.sizes:
            cmd = [sys.executable, __file__, "--worker", bb, str(s), "--threads", str(a.threads),
                   "--repeats", str(a.repeats)]
            p = subprocess.run(cmd, capture_output=True, text=True, check=False, env=env)
            if p.returncode != 0:
                print(f"{bb} {s}: FAILED\n{p.stderr[-2000:]}", file=sys.stderr)
                continue
            r = json.loads(p.stdout.strip().splitlines()[-1])
            rows.append(r)
            line = (f"{bb:10s} {s:5d}^2  total {r['total_s']:7.2f} s, cpu {r['cpu_s']:7.2f} s  "
                    f"(backbone "
                    f"{r['backbone_s']:6.2f}, head {r['head_s']:6.2f}; head without aux "
                    f"masks {r['head_no_aux_s']:6.2f})  peak RSS "
                    f"{r['peak_rss_gb']:5.2f} GB")
            if bb == "aff_mini" and s in ANCHOR:
                lo, hi, gb = ANCHOR[s]
                line += (f"  | anchor {lo:g}-{hi:g} s, {gb:g} GB -> speed-up "
                         f"{lo / r['total_s']:.1f}-{hi / r['total_s']:.1f}x, memory "
                         f"{gb / r['peak_rss_gb']:.1f}x less")
            print(line, flush=True)
    for bb in a.backbones:
        t = {r["size"]: r["total_s"] for r in rows if r["backbone"] == bb}
        if 512 in t and 1024 in t:
            print(f"{bb}: 1024^2 / 512^2 time ratio {t[1024] / t[512]:.2f} (4.0 = linear in pixels)")


if __name__ == "__main__":
    main()
