"""The training loop: optimiser, schedule, checkpoints with exact resume, validation, logging.

``train(cfg)`` runs until ``cfg.steps`` (or ``max_minutes``) and can be stopped at any time:
every ``checkpoint_minutes`` it atomically writes ``last.pt`` holding model, optimiser, scheduler,
sampler RNG, torch RNG and step, so ``train(cfg, resume=...)`` continues the identical sequence of
batches. Validation (PQ, AJI, F1, Dice on whole images, tiled like ``tileseg predict``) runs every
``val_every`` steps; the best PQ is kept as ``best.pt``. One JSON line per event goes to
``train_log.jsonl``; progress goes to stderr.
"""

from __future__ import annotations

import json
import math
import random
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from tilesegcli.device import select_device
from tilesegcli.errors import UsageError
from tilesegcli.train.checkpoint import (
    BEST,
    LAST,
    load_training_state,
    run_checkpoint,
    save_training_state,
)
from tilesegcli.train.config import TrainConfig


def lr_lambda(step: int, warmup: int, total: int, min_ratio: float) -> float:
    """Linear warm-up from 0 to 1 over ``warmup`` steps, then cosine decay to ``min_ratio``."""
    if step < warmup:
        return (step + 1) / max(1, warmup)
    t = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * t))


def _log(path: Path, rec: dict[str, Any]) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(rec) + "\n")


def _rng_state() -> dict[str, Any]:
    import torch

    return {"torch": torch.get_rng_state(), "python": list(random.getstate()[1]),
            "python_version": random.getstate()[0], "python_gauss": random.getstate()[2]}


def _set_rng_state(s: dict[str, Any]) -> None:
    import torch

    torch.set_rng_state(s["torch"])
    random.setstate((s["python_version"], tuple(s["python"]), s["python_gauss"]))


def train(cfg: TrainConfig | None = None, *, resume: str | Path | None = None,
          overrides: dict[str, Any] | None = None) -> Path:
    """Train a new model from ``cfg``, or continue the run at ``resume`` (a run directory or a
    checkpoint file) with its saved configuration plus ``overrides`` (e.g. steps, max_minutes,
    threads). Returns the run directory."""
    import torch

    from tilesegcli.train.data import PatchSampler
    from tilesegcli.train.net import build_net
    from tilesegcli.train.validate import validate

    state = None
    if resume is not None:
        ckpt = run_checkpoint(resume)
        state = load_training_state(ckpt)
        # the run continues in the checkpoint's directory unless -O out_dir=... says otherwise
        cfg = TrainConfig.from_dict(state["config"]).with_updates(
            **{"out_dir": str(ckpt.parent), **(overrides or {})})
    elif cfg is None:
        raise UsageError("give a configuration or --resume")
    elif overrides:
        cfg = cfg.with_updates(**overrides)
    assert cfg is not None
    torch.set_num_threads(cfg.threads)
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    log_path = out / "train_log.jsonl"
    (out / "config.json").write_text(json.dumps(asdict(cfg), indent=2) + "\n")

    torch.manual_seed(cfg.seed)
    random.seed(cfg.seed)
    train_data, val_data = cfg.load_data()
    sampler = PatchSampler(train_data, cfg.tile, seed=cfg.seed, scale_range=tuple(cfg.scale_range),
                           stain_jitter=cfg.stain_jitter, colour_jitter=cfg.colour_jitter)
    device = select_device(cfg.device)
    net = build_net(cfg).to(device)
    groups = net.param_groups(cfg.lr, cfg.weight_decay, cfg.backbone_lr_mult)
    opt = torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: lr_lambda(s, cfg.warmup_steps, cfg.steps, cfg.min_lr_ratio))
    use_amp = device.type == "cuda" and cfg.amp
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    step, best = 0, {"pq": -1.0}
    if state is not None:
        net.load_state_dict(net.shared_state(state["model"]))
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        if use_amp and "scaler" in state:
            scaler.load_state_dict(state["scaler"])
        sampler.set_state(state["sampler_rng"])
        _set_rng_state(state["rng"])
        step, best = int(state["step"]), dict(state.get("best", best))
        _log(log_path, {"event": "resume", "step": step, "time": time.time()})
    else:
        if cfg.init_from:
            n_loaded, n_total = init_weights(net, cfg.init_from)
            _log(log_path, {"event": "init", "from": cfg.init_from, "loaded": n_loaded,
                            "of": n_total, "time": time.time()})
            print(f"[train] initialised {n_loaded}/{n_total} tensors from {cfg.init_from}",
                  file=sys.stderr, flush=True)
        _log(log_path, {"event": "start", "step": 0, "time": time.time(), "n_params": net.num_params(),
                        "train_images": [d.name for d in train_data],
                        "val_images": [d.name for d in val_data]})

    def save(name: str) -> None:
        save_training_state({"model": net.state_dict(), "optimizer": opt.state_dict(),
                      "scheduler": sched.state_dict(), "scaler": scaler.state_dict(),
                      "sampler_rng": sampler.state(), "rng": _rng_state(), "step": step,
                      "best": best, "config": asdict(cfg)}, out / name)

    t_start = time.time()
    t_ckpt = time.time()
    loss_avg: dict[str, float] = {}
    while step < cfg.steps:
        if cfg.max_minutes and time.time() - t_start > 60 * cfg.max_minutes:
            break
        net.train()
        t0 = time.time()
        batch = sampler.batch(cfg.batch_size)
        with torch.autocast("cuda", enabled=use_amp):
            total, losses = net.losses(batch, device)
        opt.zero_grad(set_to_none=True)
        scaler.scale(total).backward()
        scaler.unscale_(opt)
        gnorm = torch.nn.utils.clip_grad_norm_(net.parameters(), cfg.clip_grad)
        scaler.step(opt)
        scaler.update()
        sched.step()
        step += 1
        for k, v in {"loss": float(total.detach()), **losses}.items():
            loss_avg[k] = v if k not in loss_avg else 0.95 * loss_avg[k] + 0.05 * v
        dt = time.time() - t0
        if step % cfg.log_every == 0 or step == 1:
            rec = {"event": "train", "step": step, "lr": sched.get_last_lr()[-1],
                   "grad_norm": float(gnorm), "sec_per_step": dt, "time": time.time(),
                   **losses, "loss": float(total.detach())}
            _log(log_path, rec)
            print(f"[train] step {step}/{cfg.steps} loss {loss_avg['loss']:.4f} "
                  + " ".join(f"{k} {v:.3f}" for k, v in loss_avg.items() if k != "loss")
                  + f" lr {rec['lr']:.2e} {dt:.1f}s/step", file=sys.stderr, flush=True)
        if val_data and cfg.val_every and step % cfg.val_every == 0:
            res = validate(net, val_data, cfg, device)
            _log(log_path, {"event": "val", "step": step, "time": time.time(), **res})
            print(f"[val] step {step} PQ {res['mean']['pq']:.4f} AJI {res['mean']['aji']:.4f} "
                  f"F1 {res['mean']['f1']:.4f} Dice {res['mean']['dice']:.4f}",
                  file=sys.stderr, flush=True)
            pq = res["mean"]["pq"]
            if not math.isnan(pq) and pq > best["pq"]:
                best = {"pq": pq, "step": step, **{k: res["mean"][k] for k in ("aji", "f1", "dice")}}
                save(BEST)
            save(LAST)
            t_ckpt = time.time()
        if time.time() - t_ckpt > 60 * cfg.checkpoint_minutes:
            save(LAST)
            t_ckpt = time.time()
            _log(log_path, {"event": "checkpoint", "step": step, "time": time.time()})
    save(LAST)
    _log(log_path, {"event": "stop", "step": step, "time": time.time(), "best": best})
    print(f"[train] stopped at step {step}; checkpoint {out / LAST}", file=sys.stderr)
    return out


def init_weights(net: Any, source: str) -> tuple[int, int]:
    """Load matching tensors into ``net`` (a TrainNet) from a training checkpoint (``.pt`` with a
    ``model`` entry of TrainNet keys) or a zoo card (name or path; its weights are the
    ``net.model`` keys). Returns (tensors loaded, tensors in net)."""
    import torch

    from tilesegcli.train.source import read_source

    sd = net.shared_state(read_source(source).state_dict)
    own = net.state_dict()
    take = {k: v.to(own[k].dtype) for k, v in sd.items()
            if k in own and isinstance(v, torch.Tensor) and tuple(v.shape) == tuple(own[k].shape)}
    if not take:
        raise UsageError(f"--init-from {source}: no tensor fits this network")
    net.load_state_dict(take, strict=False)
    read_source.cache_clear()  # the CLI's read is no longer needed: free the source's tensors
    # a deeper network than the source (more blocks per stage): the new blocks start as the
    # identity, so the network begins as the trained one and the added depth is learned from there
    for name, mod in net.named_modules():
        if hasattr(mod, "zero_residual") and not any(k.startswith(name + ".") for k in take):
            mod.zero_residual()
    return len(take), len(own)


def seed_everything(seed: int) -> None:
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
