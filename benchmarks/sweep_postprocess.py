"""Post-processing settings of an instance card swept with one network pass per image.

Every image of the list runs through the network once (``arrays.forward_tiles``: the shipped grid,
white padding, flip views and dense maps); then each setting (card ``postprocess`` keys, e.g. the
HoVer split's ``hv_split``/``hv_edge``/``hv_trim`` or ``fg_gate``) post-processes and stitches the
same raw outputs (``arrays.stitch_raw``: the segmenter's post-processing and the pipeline's
stitcher), and is scored against the annotation at the model's resolution. For choosing settings
fast; confirm the chosen one through the whole pipeline with ``benchmarks/tune_nuclei.py``.

    python benchmarks/sweep_postprocess.py --model runs/x.json --list training/tune_list.json \
        --set hv_split=false --set hv_split=true,hv_edge=0.3 --set hv_split=true,hv_trim=0.5
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


def parse_setting(text: str) -> dict:
    """'key=value,key=value' (values JSON, else strings)."""
    out = {}
    for part in text.split(","):
        k, _, v = part.partition("=")
        if not k or not v:
            raise SystemExit(f"--set {text!r}: expected key=value[,key=value...]")
        try:
            out[k] = json.loads(v)
        except json.JSONDecodeError:
            out[k] = v
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="aff-nuclei")
    ap.add_argument("--list", default="training/tune_list.json")
    ap.add_argument("--set", action="append", required=True, dest="settings")
    ap.add_argument("--views", type=int, help="flip views (default: the card's)")
    ap.add_argument("--overlap", type=int, help="tile overlap (default: the card's)")
    ap.add_argument("--hv-views", type=int,
                    help="flip views whose HoVer maps are computed (default: the card's; 0 = all)")
    ap.add_argument("--json", help="write all results here")
    a = ap.parse_args()
    from tilesegcli.arrays import forward_tiles, objects_to_labels, stitch_raw
    from tilesegcli.eval.evaluate import evaluate_arrays
    from tilesegcli.train.data import items_from_json, load_item
    from tilesegcli.zoo import load_segmenter

    seg = load_segmenter(a.model, device="cpu")
    if a.views:
        seg.flip_views = a.views
    if a.hv_views is not None:
        seg.hv_views = a.hv_views
    card = seg.card
    overlap = card.overlap if a.overlap is None else a.overlap
    t0 = time.perf_counter()
    data = [load_item(i, card.mpp) for i in items_from_json(a.list)]
    raw = [(d, *forward_tiles(seg, d.image, card.tile_size, overlap)) for d in data]
    t_forward = time.perf_counter() - t0
    print(f"forward: {len(data)} images, {sum(len(r) for _, _, r in raw)} tiles, "
          f"{seg.flip_views} views (HoVer maps of {seg.hv_views or 'all'}), {t_forward:.1f} s", flush=True)
    rows = []
    for text in a.settings:
        change = parse_setting(text)
        seg.card = card.with_overrides(**change)
        t1 = time.perf_counter()
        pairs = [(d.name, d.ann.labels,
                  objects_to_labels(stitch_raw(seg, grid, r), d.image.shape[:2]))
                 for d, grid, r in raw]
        s = evaluate_arrays(pairs).overall()["mean"]
        dt = time.perf_counter() - t1
        rows.append({"set": change, "scores": s, "post_s": dt})
        print(f"{text:>48}  PQ {s['pq']:.4f}  AJI {s['aji']:.4f}  F1 {s['f1']:.4f}  "
              f"post {dt:5.1f} s", flush=True)
    seg.card = card
    if a.json:
        Path(a.json).write_text(json.dumps({"model": a.model, "list": a.list, "overlap": overlap,
                                            "views": seg.flip_views,
                                            "hv_views": seg.hv_views, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
