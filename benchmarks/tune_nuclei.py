"""Inference settings of a nuclei card scored through the shipped path, on a list of images.

Each configuration (tile size, overlap, flip views, score threshold, position-embedding extent) runs
``tilesegcli.predict`` (tissue mask, tiles, store, stitching, GeoJSON: what ``tileseg predict``
does) on every image of the list, then ``tileseg eval`` against its annotation; prints PQ/AJI/F1
and the forward seconds per configuration, all measured in one run.

    python benchmarks/tune_nuclei.py --list training/tune_list.json \
        --config tile=128,overlap=32,views=4 --config tile=128,overlap=16,views=2,thr=0.6

The default list is the tuning list (4 MoNuSeg *training* images): choose settings there, and
score the chosen one on the validation images once (``training/eval_nuclei_val.sh``).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

KEYS = {"tile": int, "overlap": int, "views": int, "thr": float, "gate": float, "pe": float,
        "agree": float}


def parse_config(text: str) -> dict:
    """'tile=128,overlap=16,views=2[,thr=0.6][,gate=0.5][,pe=31][,agree=0.9]' (thr: score
    threshold, gate: foreground gate, pe: fixed position-embedding extent, agree: the views'
    early-stop agreement; all default to the card's)."""
    cfg: dict = {"thr": None, "gate": None, "pe": None, "agree": None}
    for part in text.split(","):
        k, _, v = part.partition("=")
        if k not in KEYS or not v:
            raise SystemExit(f"--config {text!r}: expected key=value with keys {', '.join(KEYS)}")
        cfg[k] = KEYS[k](v)
    if not {"tile", "overlap", "views"} <= set(cfg):
        raise SystemExit(f"--config {text!r}: tile, overlap and views are required")
    return cfg


def run_config(seg, cfg: dict, items: list[dict], work: Path) -> dict:
    from tilesegcli import predict

    head = seg.model.sem_seg_head
    post = seg.card.postprocess
    saved = head.pixel_decoder.pe_extent, seg.flip_views, dict(post)
    if cfg["pe"] is not None:
        head.pixel_decoder.pe_extent = head.predictor.pe_extent = cfg["pe"]
    changed = {k: cfg[c] for c, k in (("thr", "score_threshold"), ("gate", "fg_gate"),
                                      ("agree", "view_agreement")) if cfg[c] is not None}
    object.__setattr__(seg.card, "postprocess", {**post, **changed})
    seg.flip_views = cfg["views"]
    name = "_".join(f"{k}{v}" for k, v in sorted(cfg.items()))
    pred, gt = work / name / "pred", work / name / "gt"
    pred.mkdir(parents=True)
    gt.mkdir(parents=True)
    forward = total = 0.0
    tiles = 0
    seg.views_run = 0
    try:
        for it in items:
            t0 = time.perf_counter()
            out = pred / f"{it['name']}.geojson"
            (res,) = predict([it["image"]], segmenter=seg, output=out, mpp=it["mpp"],
                             tile_size=cfg["tile"], overlap=cfg["overlap"], overwrite=True,
                             quiet=True, raise_errors=True)
            total += time.perf_counter() - t0
            forward += float(res.timings.get("forward_s", 0.0))
            tiles += res.tiles_computed
            ann = Path(it["annotation"])
            (gt / f"{it['name']}{ann.suffix}").symlink_to(ann.resolve())
    finally:
        head.pixel_decoder.pe_extent = head.predictor.pe_extent = saved[0]
        seg.flip_views = saved[1]
        object.__setattr__(seg.card, "postprocess", saved[2])
    from tilesegcli.eval.evaluate import evaluate

    scores = evaluate(pred, gt, size=(1000, 1000)).overall()["mean"]
    views = seg.views_run / tiles if seg.views_run else float(cfg["views"])
    return {**cfg, "scores": scores, "forward_s": forward, "total_s": total,
            "views_per_tile": views}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--list", default="training/tune_list.json")
    ap.add_argument("--model", default="aff-nuclei")
    ap.add_argument("--config", action="append", required=True)
    ap.add_argument("--json", help="write all results here")
    a = ap.parse_args()
    from tilesegcli.train.data import items_from_json
    from tilesegcli.zoo import load_segmenter

    items = [{"image": i.image, "annotation": i.annotation, "mpp": i.mpp, "name": i.name}
             for i in items_from_json(a.list)]
    seg = load_segmenter(a.model, device="cpu")
    rows = []
    with tempfile.TemporaryDirectory() as d:
        for text in a.config:
            row = run_config(seg, parse_config(text), items, Path(d))
            rows.append(row)
            s = row["scores"]
            print(f"{text:>36}  PQ {s.get('pq', float('nan')):.4f}  AJI {s.get('aji', float('nan')):.4f}"
                  f"  F1 {s.get('f1', float('nan')):.4f}  forward {row['forward_s']:6.1f} s"
                  f"  total {row['total_s']:6.1f} s  views/tile {row['views_per_tile']:.2f}",
                  flush=True)
    if a.json:
        Path(a.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
