"""Validation and export: whole-image tiled inference through the shipped Segmenter, metrics,
and turning a checkpoint into a zoo card + fp16 safetensors.

Validation runs the exact inference path of ``tileseg predict`` for this card (``AFFSegmenter``:
normalisation, padding, Mask2Former instance post-processing, min_area) on tiles of the card's
size and overlap; an instance is kept by the tile whose core contains its centroid and painted
where no earlier instance is. Images are scored with :mod:`tilesegcli.eval.metrics`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from tilesegcli.errors import UsageError
from tilesegcli.eval.evaluate import evaluate_arrays
from tilesegcli.tiling import iter_tiles, make_grid

if TYPE_CHECKING:
    from tilesegcli.segmenter import Segmenter
    from tilesegcli.train.config import TrainConfig
    from tilesegcli.train.data import Loaded
    from tilesegcli.train.net import TrainNet


def tile_windows(image: np.ndarray, tile: int, overlap: int) -> tuple[list, np.ndarray]:
    """Grid tiles of ``image`` and their (N, tile, tile, 3) windows (reflect-padded at edges)."""
    h, w = image.shape[:2]
    specs = iter_tiles(make_grid(w, h, tile, overlap))
    arr = np.zeros((len(specs), tile, tile, 3), np.uint8)
    for i, t in enumerate(specs):
        win = image[t.y:t.y + tile, t.x:t.x + tile]
        arr[i] = np.pad(win, ((0, tile - win.shape[0]), (0, tile - win.shape[1]), (0, 0)),
                        mode="reflect" if min(win.shape[:2]) > 1 else "edge")
    return specs, arr


def stitch(shape: tuple[int, int], specs: list, tile_labels: list[np.ndarray]) -> np.ndarray:
    """Paste per-tile instance labels into one (H, W) image: an instance belongs to the tile whose
    core holds its centroid and takes the pixels no earlier instance took."""
    h, w = shape
    out = np.zeros((h, w), np.int32)
    n = 0
    for t, lab in zip(specs, tile_labels, strict=True):
        lab = lab[: min(lab.shape[0], h - t.y), : min(lab.shape[1], w - t.x)]
        x0, y0, x1, y1 = t.core
        for k in range(1, int(lab.max(initial=0)) + 1):
            ys, xs = np.nonzero(lab == k)
            if len(ys) == 0:
                continue
            cy, cx = ys.mean() + t.y, xs.mean() + t.x
            if not (x0 <= cx < x1 and y0 <= cy < y1):
                continue
            gy, gx = ys + t.y, xs + t.x
            free = out[gy, gx] == 0
            if free.any():
                n += 1
                out[gy[free], gx[free]] = n
    return out


def predict_image(seg: Segmenter, image: np.ndarray, tile: int, overlap: int, batch: int = 8
                  ) -> np.ndarray:
    """(H, W) int32 instance labels of a whole image through ``seg.predict_batch``."""
    specs, arr = tile_windows(image, tile, overlap)
    labs = []
    for s in range(0, len(arr), batch):
        for res in seg.predict_batch(arr[s:s + batch]):
            labs.append(res.labels if res.labels is not None else np.zeros(arr.shape[1:3], np.int32))
    return stitch(image.shape[:2], specs, labs)


def sweep_thresholds(seg: Any, data: list[Loaded], tile: int, overlap: int,
                     thresholds: list[float], batch: int = 8) -> dict[float, dict]:
    """Mean PQ/AJI/F1/Dice over ``data`` for several instance score thresholds, running the
    network once per tile (``seg.forward`` raw outputs, then ``seg.tile_result``: the card's
    post-processing with each threshold in turn)."""
    raw = []
    for d in data:
        specs, arr = tile_windows(d.image, tile, overlap)
        outs = []
        for s in range(0, len(arr), batch):
            lg, mk = seg.forward(arr[s:s + batch])
            outs += [(lg[i], mk[i]) for i in range(len(lg))]
        raw.append((d, specs, outs))
    res = {}
    for thr in thresholds:
        pairs = []
        for d, specs, outs in raw:
            labs = [seg.tile_result(lg, mk, (tile, tile), score_threshold=thr).labels
                    for lg, mk in outs]
            pairs.append((d.name, d.ann.labels, stitch(d.image.shape[:2], specs, labs)))
        res[thr] = evaluate_arrays(pairs).overall()["mean"]
    return res


def segmenter_for(net: TrainNet, cfg: TrainConfig, device: str = "cpu") -> Segmenter:
    """The shipped Segmenter around the (live) training model."""
    from tilesegcli.nn.segmenter import AFFSegmenter
    from tilesegcli.train.net import card_dict
    from tilesegcli.zoo import card_from_dict

    card = card_from_dict(card_dict(cfg, "validation", weights_file="none.safetensors", sha256=None,
                                    size=None, description="", licence=""))
    return AFFSegmenter(card, net.model, device=device, amp=False)


def validate(net: TrainNet, data: list[Loaded], cfg: TrainConfig, device: Any = "cpu",
             keep_predictions: bool = False) -> dict[str, Any]:
    """Mean-over-images and pooled PQ/DQ/SQ/AJI/F1/Dice of the model on ``data``."""
    import torch

    was_training = net.training
    seg = segmenter_for(net, cfg, "cuda" if str(device).startswith("cuda") else "cpu")
    try:
        pairs = []
        with torch.no_grad():
            for d in data:
                pred = predict_image(seg, d.image, cfg.tile, cfg.overlap)
                pairs.append((d.name, d.ann.labels, pred))
    finally:
        net.train(was_training)
    rep = evaluate_arrays(pairs)
    ov = rep.overall()
    res = {"mean": {k: v for k, v in ov["mean"].items()},
           "pooled": {k: v for k, v in ov["pooled"].items() if not isinstance(v, dict)},
           "per_image": {r.name: {k: r.stats.summary()[k] for k in ("pq", "aji", "f1", "dice")}
                         for r in rep.images}}
    if keep_predictions:
        res["predictions"] = {name: p for name, _, p in pairs}
    return res


def export(checkpoint: str | Path, card_path: str | Path, *, name: str, description: str,
           licence: str, metrics: dict[str, Any] | None = None, extra: dict[str, Any] | None = None,
           half: bool = True, overrides: dict[str, Any] | None = None) -> Path:
    """Checkpoint -> ``card_path`` (JSON) + weights (safetensors, fp16 if ``half``) beside it.
    ``overrides`` change inference fields of the saved configuration (e.g. score_threshold)."""
    from tilesegcli.train.config import TrainConfig
    from tilesegcli.train.loop import load_checkpoint
    from tilesegcli.train.net import card_dict
    from tilesegcli.weights import save_safetensors
    from tilesegcli.zoo import write_card

    state = load_checkpoint(checkpoint)
    cfg = TrainConfig.from_dict(state["config"]).with_updates(**(overrides or {}))
    sd = {k[len("model."):]: v for k, v in state["model"].items() if k.startswith("model.")}
    if cfg.fg_gate > 0:  # the gate needs the dense head: shipped as the head's fg_head
        dense = {k: v for k, v in state["model"].items() if k.startswith("dense.")}
        if not dense:
            raise UsageError(f"{checkpoint}: fg_gate needs the auxiliary dense head, which this "
                             "checkpoint lacks (aux_dense_weight 0)")
        sd.update({f"sem_seg_head.fg_head.{k[len('dense.'):]}": v for k, v in dense.items()})
        arch = dict(cfg.architecture)
        arch["head_kwargs"] = {**arch["head_kwargs"], "fg_head": True}
        cfg = cfg.with_updates(architecture=arch)
    card_path = Path(card_path)
    try:
        card_path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UsageError(f"cannot create {card_path.parent}: {e.strerror or e}") from None
    wfile = card_path.with_suffix(".safetensors")
    sha = save_safetensors(sd, wfile, half=half)
    info = {"trained_steps": int(state["step"]), "training": extra or {}}
    card = card_dict(cfg, name, weights_file=wfile.name, sha256=sha, size=os.path.getsize(wfile),
                     description=description, licence=licence, metrics=metrics,
                     extra={"training_run": info})
    write_card(card, card_path)
    return card_path


def write_json(path: str | Path, obj: Any) -> None:
    p = Path(path)
    tmp = p.with_name(f".{p.name}.tmp{os.getpid()}")
    tmp.write_text(json.dumps(obj, indent=2, default=float) + "\n")
    os.replace(tmp, p)
