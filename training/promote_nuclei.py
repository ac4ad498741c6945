"""Make an exported nuclei run the bundled default card (tilesegcli/models/aff-nuclei.json).

    python training/promote_nuclei.py RUN_CARD.json --heldout-json H.json --tune-json T.json \
        --run training/aff-nuclei-v13 --init-from "..." --description "..."

RUN_CARD.json: ``tileseg train --resume last.pt --export`` of the run (its post-processing becomes
the card's); H.json: ``training/eval_nuclei_val.sh`` scores (``tileseg eval --json``);
T.json: ``benchmarks/tune_nuclei.py --json`` of the same card on the tuning list. The previous
card's held-out and tuning numbers are kept as the "previous card" entries. Every number in the
card comes from those files; the weights are copied next to the card and their sha256 recorded.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

from tilesegcli.atomic import atomic_path
from tilesegcli.weights import sha256_file

CARD = Path(__file__).resolve().parents[1] / "tilesegcli" / "models" / "aff-nuclei.json"
KEEP = ("name", "task", "classes", "background", "licence")


def held_out_metrics(scores: dict) -> dict:
    """The card's ``val`` metrics: means over the held-out images, rounded to 4 places."""
    m = scores["overall"]["mean"]
    return {"val PQ": round(m["pq"], 4), "val DQ": round(m["dq"], 4), "val SQ": round(m["sq"], 4),
            "val AJI": round(m["aji"], 4), "val F1@0.5": round(m["f1"], 4),
            "val Dice": round(m["dice"], 4)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("run_card", type=Path)
    ap.add_argument("--heldout-json", type=Path, required=True)
    ap.add_argument("--tune-json", type=Path, required=True)
    ap.add_argument("--run", required=True, help="the run's folder, e.g. training/aff-nuclei-v13")
    ap.add_argument("--init-from", required=True, help="what the run started from, in words")
    ap.add_argument("--description", required=True)
    ap.add_argument("--out", type=Path, default=CARD)
    a = ap.parse_args()

    old = json.loads(a.out.read_text())
    new = json.loads(a.run_card.read_text())
    card = dict(new)
    for k in KEEP:
        card[k] = old[k]
    card["description"] = a.description
    tune = json.loads(a.tune_json.read_text())[0]["scores"]
    metrics = held_out_metrics(json.loads(a.heldout_json.read_text()))
    metrics["how"] = old["metrics"]["how"]
    metrics["step"] = new["training_run"]["trained_steps"]
    metrics["tuning list PQ / AJI, shipped path"] = [round(tune["pq"], 4), round(tune["aji"], 4)]
    metrics["previous card held-out PQ / AJI, same path"] = [old["metrics"]["val PQ"],
                                                            old["metrics"]["val AJI"]]
    prev_tune = [v for k, v in old["metrics"].items() if k.startswith("tuning list")]
    if prev_tune:
        last = prev_tune[0]
        metrics["previous card tuning list PQ / AJI, shipped path"] = (
            last[-1] if isinstance(last[0], list) else last)
    card["metrics"] = metrics
    card["training_run"] = {"trained_steps": new["training_run"]["trained_steps"],
                            "training": {"run": a.run, "init_from": a.init_from}}

    src = a.run_card.parent / new["weights"]["filename"]
    dst = a.out.parent / old["weights"]["filename"]
    with atomic_path(dst) as tmp:
        shutil.copyfile(src, tmp)
    card["weights"] = dict(old["weights"], sha256=sha256_file(dst), size=dst.stat().st_size)
    with atomic_path(a.out) as tmp:
        tmp.write_text(json.dumps(card, indent=2) + "\n")
    print(f"wrote {a.out} and {dst} (sha256 {card['weights']['sha256']})")


if __name__ == "__main__":
    main()
