"""Where an instance card loses its score, image by image: the error classes of
``tilesegcli.eval.breakdown`` and the scores with every predicted outline moved by k px.

Each image of the list runs through ``arrays.predict_array`` (the code ``tileseg predict`` runs),
scored at the model's resolution against its annotation.

    python benchmarks/diagnose_nuclei.py --list training/heldout_list.json --json diag.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

COLUMNS = ("n_gt", "n_pred", "matched", "missed", "split", "merged", "poor_fit",
           "fp_background", "fp_piece", "fp_merge", "fp_other")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="aff-nuclei")
    ap.add_argument("--list", default="training/heldout_list.json")
    ap.add_argument("--views", type=int, help="flip views (default: the card's)")
    ap.add_argument("--offsets", default="-2,-1,0,1,2,3", help="outline offsets, px")
    ap.add_argument("--json", help="write the results here")
    a = ap.parse_args()
    from tilesegcli.arrays import objects_to_labels, predict_array
    from tilesegcli.eval.breakdown import error_breakdown, offset_scores
    from tilesegcli.eval.metrics import instance_stats
    from tilesegcli.train.data import items_from_json, load_item
    from tilesegcli.zoo import load_segmenter

    seg = load_segmenter(a.model, device="cpu")
    if a.views:
        seg.flip_views = a.views
    offsets = [int(k) for k in a.offsets.split(",")]
    rows = []
    print("image         " + " ".join(f"{c:>8}" for c in ("PQ", "AJI", *COLUMNS)), flush=True)
    for item in items_from_json(a.list):
        t = time.perf_counter()
        d = load_item(item, seg.card.mpp)
        pred = objects_to_labels(predict_array(seg, d.image), d.image.shape[:2])
        s = instance_stats(d.ann.labels, pred).summary()
        b = error_breakdown(d.ann.labels, pred)
        off = offset_scores(d.ann.labels, pred, offsets)
        rows.append({"image": d.name, "pq": s["pq"], "aji": s["aji"], "breakdown": b,
                     "offsets": off, "seconds": time.perf_counter() - t})
        print(f"{d.name[:12]:13} {s['pq']:8.3f} {s['aji']:8.3f} "
              + " ".join(f"{b[c]:8d}" for c in COLUMNS), flush=True)
    print("\nPQ / AJI with every predicted outline moved by k px (k > 0: out)")
    print("image         " + " ".join(f"{k:>13d}" for k in offsets))
    for r in rows:
        print(f"{r['image'][:12]:13} " + " ".join(
            f"{r['offsets'][k]['pq']:.3f}/{r['offsets'][k]['aji']:.3f}".rjust(13) for k in offsets))
    if a.json:
        Path(a.json).write_text(json.dumps({"model": a.model, "list": a.list,
                                            "views": seg.flip_views, "images": rows}, indent=1))


if __name__ == "__main__":
    main()
