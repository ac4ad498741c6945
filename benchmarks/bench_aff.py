"""AFF backbone (SEG variant) forward time, peak RSS and tokens per stage (fp32, CPU).

    $ python benchmarks/bench_aff.py                          # aff_mini, aff_tiny at 512 and 1024
    $ python benchmarks/bench_aff.py --models aff_mini --sizes 512 2048 --threads 2

Each (model, size) runs in its own subprocess so its peak RSS (ru_maxrss) is its own. Random
weights (time does not depend on weight values; token counts depend only on the input size).
Reports wall time (best of --repeats after one warm-up), the process CPU time of that run (the
machine may be shared), the time spent in the discrete part (clustering, knn, centre choice), peak
RSS, and the ratio 1024^2 / 512^2 (4x the pixels: linear cost gives ~4).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time


def worker(name: str, size: int, threads: int, repeats: int) -> dict:
    import resource

    import torch

    import tilesegcli.nn.aff as aff

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    discrete = [0.0]
    for fn in ("space_filling_cluster", "nearest_clusters", "plan_clusters", "plan_global",
               "choose_centres"):
        orig = getattr(aff, fn)

        def timed(*a, _orig=orig, **k):
            t = time.perf_counter()
            r = _orig(*a, **k)
            discrete[0] += time.perf_counter() - t
            return r

        setattr(aff, fn, timed)
    model = aff.build_aff(name, variant="seg").eval()
    x = torch.randn(1, 3, size, size)
    best = None
    with torch.no_grad():
        model(x)  # warm-up
        for _ in range(repeats):
            discrete[0] = 0.0
            c0, t0 = time.process_time(), time.perf_counter()
            out = model(x)
            wall, cpu = time.perf_counter() - t0, time.process_time() - c0
            if best is None or wall < best["wall_s"]:
                best = {"wall_s": wall, "cpu_s": cpu, "discrete_s": discrete[0]}
    rss_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2
    tokens = [int(lvl.feat.shape[1]) for lvl in out.levels.values()]
    return {"model": name, "size": size, **best, "peak_rss_gb": rss_gb, "tokens": tokens}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["aff_mini", "aff_tiny"])
    ap.add_argument("--sizes", nargs="+", type=int, default=[512, 1024])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--worker", nargs=2, metavar=("MODEL", "SIZE"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker[0], int(args.worker[1]), args.threads, args.repeats)))
        return
    rows = []
    for name in args.models:
        for size in args.sizes:
            cmd = [sys.executable, __file__, "--worker", name, str(size),
                   "--threads", str(args.threads), "--repeats", str(args.repeats)]
            res = subprocess.run(cmd, capture_output=True, text=True)
            if res.returncode != 0:
                sys.exit(f"worker {name} {size} failed:\n{res.stderr[-2000:]}")
            rows.append(json.loads(res.stdout.strip().splitlines()[-1]))
            r = rows[-1]
            print(f"  done {name} {size}: {r['wall_s']:.2f} s", file=sys.stderr)
    print(f"AFF backbone, SEG variant, fp32, {args.threads} threads, batch 1")
    print(f"{'model':<10} {'size':>5} {'wall s':>7} {'cpu s':>7} {'discrete s':>10} {'peak RSS GB':>11}  "
          "tokens res2/res3/res4/res5")
    for r in rows:
        print(f"{r['model']:<10} {r['size']:>5} {r['wall_s']:>7.2f} {r['cpu_s']:>7.2f} "
              f"{r['discrete_s']:>10.2f} {r['peak_rss_gb']:>11.2f}  {'/'.join(map(str, r['tokens']))}")
    by = {(r["model"], r["size"]): r for r in rows}
    for name in args.models:
        if (name, 512) in by and (name, 1024) in by:
            ratio = by[(name, 1024)]["wall_s"] / by[(name, 512)]["wall_s"]
            print(f"{name}: time(1024^2) / time(512^2) = {ratio:.2f}")


if __name__ == "__main__":
    main()
