"""Validation: whole-image tiled inference through the shipped Segmenter, and metrics, for a
network in training or a saved training checkpoint (``tileseg train --resume CKPT --validate``).

Validation runs the inference path of ``tileseg predict`` for this card through
:func:`tilesegcli.arrays.predict_array` (the pipeline's grid and white padding, ``AFFSegmenter``
post-processing with flip views and foreground gate, the exactly-once stitcher with its
OverlapResolver); the stitched polygons are burnt back into a label image and scored with
:mod:`tilesegcli.eval.metrics`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from tilesegcli.atomic import atomic_path
from tilesegcli.errors import UsageError
from tilesegcli.eval.evaluate import evaluate_arrays

if TYPE_CHECKING:
    from tilesegcli.segmenter import Segmenter
    from tilesegcli.train.config import TrainConfig
    from tilesegcli.train.data import Loaded
    from tilesegcli.train.net import TrainNet


def predict_image(seg: Segmenter, image: np.ndarray, tile: int, overlap: int, batch: int = 8
                  ) -> np.ndarray:
    """(H, W) int32 instance labels of a whole image through the shipped path
    (``arrays.predict_array``: the pipeline's tiling, segmenter calls and stitcher)."""
    from tilesegcli.arrays import objects_to_labels, predict_array

    objs = predict_array(seg, image, tile_size=tile, overlap=overlap, batch_size=batch)
    return objects_to_labels(objs, image.shape[:2])


def sweep_thresholds(seg: Any, data: list[Loaded], tile: int, overlap: int,
                     thresholds: list[float], batch: int = 8) -> dict[float, dict]:
    """Mean PQ/AJI/F1/Dice over ``data`` for several instance score thresholds, running the
    network once per tile (``arrays.forward_tiles``), then the shipped post-processing and
    stitcher with each threshold in turn (``arrays.stitch_raw``)."""
    from tilesegcli.arrays import forward_tiles, objects_to_labels, stitch_raw

    raw = [(d, *forward_tiles(seg, d.image, tile, overlap, batch)) for d in data]
    res = {}
    for thr in thresholds:
        pairs = [(d.name, d.ann.labels,
                  objects_to_labels(stitch_raw(seg, grid, r, score_threshold=thr),
                                    d.image.shape[:2]))
                 for d, grid, r in raw]
        res[thr] = evaluate_arrays(pairs).overall()["mean"]
    return res


def segmenter_for(net: TrainNet, cfg: TrainConfig, device: str = "cpu") -> Segmenter:
    """The shipped Segmenter around the (live) training model."""
    from tilesegcli.segmenters.aff_m2f import AFFSegmenter
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


def validate_checkpoint(checkpoint: str | Path, overrides: dict[str, Any] | None = None,
                        thresholds: list[float] | None = None) -> dict[str, Any]:
    """Score a training checkpoint on its configuration's validation images (``overrides``
    change configuration fields, e.g. ``val_list`` or post-processing). Returns
    :func:`validate`'s result, or with ``thresholds`` ``{"thresholds": {t: mean metrics}}``
    (one network pass for all), both with the ``checkpoint`` and its ``step``."""
    import torch

    from tilesegcli.train.checkpoint import load_training_state
    from tilesegcli.train.config import TrainConfig
    from tilesegcli.train.net import build_net

    state = load_training_state(checkpoint)
    cfg = TrainConfig.from_dict(state["config"]).with_updates(**(overrides or {}))
    torch.set_num_threads(cfg.threads)
    net = build_net(cfg)
    net.load_state_dict(net.shared_state(state["model"]))
    _, val = cfg.load_data(train=False)
    if not val:
        raise UsageError("the configuration has no validation images")
    about = {"checkpoint": str(checkpoint), "step": int(state["step"])}
    if thresholds is not None:
        with torch.no_grad():
            # the card built from cfg carries every post-processing setting (overrides apply)
            seg = segmenter_for(net, cfg)
            sweep = sweep_thresholds(seg, val, cfg.tile, cfg.overlap, thresholds)
        return {**about, "thresholds": sweep}
    return {**validate(net, val, cfg), **about}


def write_json(path: str | Path, obj: Any) -> None:
    p = Path(path)
    with atomic_path(p) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, default=float) + "\n")
