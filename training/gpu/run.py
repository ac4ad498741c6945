"""One whole-network nuclei training run sized to a time budget, for a lent GPU machine.

Prepared and run end to end on this project's CPU (small budget); written for the device tool,
whose machine has Python 3.12 with torch, numpy, scipy, scikit-image, Pillow, safetensors and
click, no network and none of ``../shared``. Steps, in one command:

1. a probe: ``--probe-steps`` training steps in a scratch directory, timed from its log;
2. the run: ``tileseg train --init-from aff-nuclei`` on ``.gpu/train_list.json`` (packed by
   ``training/gpu/pack_nuclei.py``) with as many steps as fit ``--minutes`` at the probe's
   pace, so the cosine schedule ends inside the budget (``max_minutes`` stops it regardless);
3. ``tileseg train --resume ... --export`` to ``$OUT/aff-nuclei-gpu.json`` + ``.safetensors``
   (8 MB: what comes back; the 25 MB ``last.pt`` stays there), with the log and config.

On the device tool (from the repo root; pack first, here):

    run(command="python3 training/gpu/run.py --minutes 6", carry=[".gpu"], timeout_s=580)

Then score the card here: ``training/eval_nuclei_val.sh`` and ``benchmarks/tune_nuclei.py``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

#: the run's settings besides steps (``-O`` fields of TrainConfig). fp32 (``amp`` off): the
#: clustering and attention have never run in fp16, and a 4 M-parameter network on 128 px
#: patches is bound by kernel launches and patch sampling, not by matrix throughput; cuBLAS
#: may use TF32 (environment below)
#: the wider scale and stain augmentation is v13's (training/aff-nuclei-v13), which gained held-out
#: AJI where a larger learning rate with the old augmentation (v12) did not
SETTINGS = {"hv_weight": 1.0, "batch_size": 16, "lr": 1e-4, "warmup_steps": 100,
            "val_every": 0, "checkpoint_minutes": 2, "amp": False,
            "scale_range": [0.6, 1.6], "stain_jitter": 0.08}


def train(out_dir: Path, steps: int, minutes: float, extra: list[str], threads: int,
          log_every: int = 10) -> None:
    opts = {**SETTINGS, "train_list": ".gpu/train_list.json", "out_dir": str(out_dir),
            "steps": steps, "max_minutes": minutes, "threads": threads, "log_every": log_every}
    cmd = [sys.executable, "-m", "tilesegcli", "train", "--init-from", "aff-nuclei"]
    for k, v in opts.items():  # values as JSON (true, 0.0001), which -O parses
        cmd += ["-O", f"{k}={v if isinstance(v, str) else json.dumps(v)}"]
    for e in extra:
        cmd += ["-O", e]
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)


def pace(log: Path, skip: int) -> float:
    """Seconds per step over the logged steps after the first ``skip`` (warm-up, allocation)."""
    rows = [json.loads(x) for x in log.read_text().splitlines() if x.strip()]
    steps = [(r["step"], r["time"]) for r in rows if r.get("event") == "train" and r["step"] > skip]
    if len(steps) < 2:
        raise SystemExit(f"{log}: too few timed steps to measure the pace")
    (s0, t0), (s1, t1) = steps[0], steps[-1]
    return (t1 - t0) / (s1 - s0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--minutes", type=float, default=6.0, help="the run's training budget")
    ap.add_argument("--probe-steps", type=int, default=30)
    ap.add_argument("--threads", type=int, default=8)
    ap.add_argument("--work", default="/tmp/tileseg-gpu", help="scratch (checkpoints)")
    ap.add_argument("-O", dest="extra", action="append", default=[],
                    help="more TrainConfig fields, e.g. -O lr=2e-4")
    a = ap.parse_args()
    os.environ["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(Path.cwd()), os.environ.get("PYTHONPATH", "")) if p)
    os.environ["PYTHONUNBUFFERED"] = "1"
    os.environ.setdefault("TORCH_ALLOW_TF32_CUBLAS_OVERRIDE", "1")
    out = Path(os.environ.get("OUT") or "runs/gpu-out")
    out.mkdir(parents=True, exist_ok=True)
    work = Path(a.work)
    shutil.rmtree(work, ignore_errors=True)
    import torch

    print(f"torch {torch.__version__}, cuda {torch.cuda.is_available()}"
          + (f" ({torch.cuda.get_device_name(0)})" if torch.cuda.is_available() else ""), flush=True)
    t0 = time.time()
    train(work / "probe", a.probe_steps, 0, a.extra, a.threads, log_every=1)
    sec = pace(work / "probe" / "train_log.jsonl", skip=5)
    steps = max(a.probe_steps, int(a.minutes * 60 / sec))
    print(f"probe: {sec:.3f} s/step ({time.time() - t0:.0f} s with start-up) -> {steps} steps "
          f"in {a.minutes} min", flush=True)
    train(work / "run", steps, a.minutes + 1.0, a.extra, a.threads)
    card = out / "aff-nuclei-gpu.json"
    subprocess.run([sys.executable, "-m", "tilesegcli", "train", "--resume",
                    str(work / "run" / "last.pt"), "--export", str(card), "--name", "aff-nuclei-gpu",
                    "--description", f"aff-nuclei fine-tuned on a GPU: {steps} steps of "
                    f"{SETTINGS['batch_size']} patches"], check=True)
    for f in ("train_log.jsonl", "config.json"):
        shutil.copy(work / "run" / f, out / f)
    (out / "pace.json").write_text(json.dumps({"probe_sec_per_step": sec, "steps": steps,
                                               "minutes": a.minutes,
                                               "wall_s": time.time() - t0}))
    print(f"done in {time.time() - t0:.0f} s: {sorted(p.name for p in out.iterdir())}", flush=True)


if __name__ == "__main__":
    main()
