"""Export the aff-nuclei training run as the bundled default model card (tilesegcli/models/aff-nuclei.json).

    python training/export_nuclei.py CHECKPOINT --val-json V.json --e2e-json E.json \
        --throughput "..." [--score-threshold 0.5] [--min-visible 0.5]

V.json: ``tileseg train --resume CKPT --validate --json V.json`` (with the thresholds given here);
E.json: ``training/eval_nuclei_val.sh`` scores (tileseg eval --json); ``--one-view-json``: the
held-out ``--validate`` JSON with ``-O flip_views=1``. Every number in the card
comes from those files; nothing is typed in by hand.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from tilesegcli.train.checkpoint import load_training_state
from tilesegcli.train.config import TrainConfig
from tilesegcli.train.export import export_card

LICENCE = ("Weights: trained by the tileseg project; usable for NON-COMMERCIAL purposes only, "
           "because the training data include MoNuSeg 2018 (CC BY-NC-SA 4.0, non-commercial, "
           "share-alike; TCGA images) and CPM-15 (MICCAI 2015 challenge data, redistribution terms "
           "unstated: research use); NuCLS crops are CC0. Code: Apache-2.0.")


def lineage(checkpoint: str) -> list[tuple[str, int, dict]]:
    """(run name, step, configuration) of ``checkpoint`` and of each run it was initialised from,
    newest first (checkpoints are mapped, not read). A resumed copy (v4 of v3) counts its steps
    from the start of the run it copies."""
    out: list[tuple[str, int, dict]] = []
    path: str | None = checkpoint
    while path and Path(path).suffix == ".pt" and Path(path).is_file():
        state = load_training_state(path, mmap=True)
        out.append((Path(path).parent.name, int(state["step"]), state["config"]))
        path = state["config"].get("init_from")
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("checkpoint")
    ap.add_argument("--val-json", required=True)
    ap.add_argument("--e2e-json", required=True)
    ap.add_argument("--throughput", required=True)
    ap.add_argument("--score-threshold", type=float, required=True)
    ap.add_argument("--min-visible", type=float, required=True)
    ap.add_argument("--cleanup-radius", type=int, required=True)
    ap.add_argument("--min-area", type=int, required=True)
    ap.add_argument("--flip-views", type=int, default=1)
    ap.add_argument("--fg-gate", type=float, default=0.0,
                    help="ship the dense head and drop instances less foreground than this")
    ap.add_argument("--one-view-json", default=None,
                    help="--validate JSON of the same checkpoint with -O flip_views=1")
    ap.add_argument("--out", default="tilesegcli/models/aff-nuclei.json")
    a = ap.parse_args()

    state = load_training_state(a.checkpoint, mmap=True)  # config and step; export_card reads the weights
    cfg = TrainConfig.from_dict(state["config"])
    step = int(state["step"])
    val = json.loads(Path(a.val_json).read_text())
    e2e = json.loads(Path(a.e2e_json).read_text())
    vm, vp = val["mean"], val["pooled"]
    em = e2e["overall"]["mean"] if "overall" in e2e else e2e["mean"]
    arch = cfg.architecture
    bk, hk = arch["backbone_kwargs"], arch["head_kwargs"]
    log = [json.loads(x) for x in (Path(a.checkpoint).parent / "train_log.jsonl").read_text().splitlines()]
    start = next(r for r in log if r["event"] == "start")
    run_dir = Path(a.checkpoint).parent
    if cfg.init_from and Path(cfg.init_from).suffix == ".pt":
        chain = lineage(cfg.init_from)
        _, parent_step, parent_cfg = chain[0]
        pdepths = parent_cfg["architecture"]["backbone_kwargs"]["depths"]
        grown = ("" if list(pdepths) == list(arch["backbone_kwargs"]["depths"]) else
                 f"; AFF deepened from depths {'/'.join(map(str, pdepths))} (added blocks "
                 "started as the identity)")
        init_note = (f"{cfg.init_from} (step {parent_step} of its run, "
                     f"{parent_cfg['mpp']} um/px); tensors that fit loaded, fresh optimiser"
                     + grown)
        trained = f"{step} steps continuing " + ", which continued ".join(
            f"{s} steps of {name}" for name, s, _ in chain)
    else:
        init_note, trained = str(cfg.init_from or "random"), f"{step} steps"
    description = (
        f"Nuclei instance segmentation on H&E at {cfg.mpp} um/px (40x): AutoFocusFormer (widths "
        f"{'/'.join(map(str, bk['embed_dim']))}, depths {'/'.join(map(str, bk['depths']))}) + "
        f"Mask2Former ({hk['num_queries']} queries, {hk['dec_layers'] - 1} masked-attention layers, "
        f"stride-2 mask features) trained by tileseg on 2 CPU cores: {trained}, batches of "
        f"{cfg.batch_size} x {cfg.tile} px patches. 20x slides are upsampled to 0.25 um/px. "
        f"Under-trained: validation PQ {vm['pq']:.3f} / AJI {vm['aji']:.3f}, far below the "
        f"PQ 0.60 / AJI 0.62 target (see metrics).")
    metrics = {
        "val PQ": round(vm["pq"], 4), "val DQ": round(vm["dq"], 4), "val SQ": round(vm["sq"], 4),
        "val AJI": round(vm["aji"], 4), "val F1@0.5": round(vm["f1"], 4),
        "val Dice": round(vm["dice"], 4), "val pooled PQ": round(vp["pq"], 4),
        "val pooled AJI": round(vp["aji"], 4),
        "how": ("mean over 4 held-out MoNuSeg 2018 training images (TCGA-50-5931 lung, "
                "TCGA-E2-A1B5 breast, TCGA-B0-5710 kidney, TCGA-G9-6362 prostate; 4 patients "
                "never trained on), GT = official ImageScope XML rasterised and resampled "
                f"0.2527 -> {cfg.mpp} um/px, prediction through the shipped AFFSegmenter on "
                f"{cfg.tile} px tiles (overlap {cfg.overlap}) with centroid-in-core stitching; "
                "PQ/F1 match at IoU > 0.5, AJI per Kumar et al. 2017, Dice = binary. "
                f"post-processing (score_threshold {a.score_threshold}, min_visible_fraction "
                f"{a.min_visible}, cleanup_radius {a.cleanup_radius}, min_area {a.min_area} px, "
                f"flip_views {a.flip_views}) "
                "chosen on 4 MoNuSeg training images (training/tune_list.json), not on these"),
        "step": step,
        "val PQ (tileseg predict+eval, full res)": round(em["pq"], 4),
        "val AJI (tileseg predict+eval, full res)": round(em["aji"], 4),
        "val F1@0.5 (tileseg predict+eval, full res)": round(em["f1"], 4),
        "val Dice (tileseg predict+eval, full res)": round(em["dice"], 4),
        "how (full res)": ("training/eval_nuclei_val.sh: tileseg predict IMAGE.tif --mpp 0.2527 "
                           "(tissue mask, pipeline stitching, polygons) then tileseg eval "
                           "PRED_DIR GT_XML_DIR --size 1000 1000 (mean over images, native "
                           "0.2527 um/px)"),
        "throughput": a.throughput,
    }
    if a.one_view_json:
        one = json.loads(Path(a.one_view_json).read_text())["mean"]
        metrics["val PQ / AJI with --flips 1"] = [round(one["pq"], 4), round(one["aji"], 4)]
    extra = {
        "data": {
            "train": start["train_images"], "validation": start["val_images"],
            "sources": [
                "MoNuSeg 2018 train, 13 images with ImageScope XML (9 train / 4 val)",
                "MoNuSeg 2018 train, the 17 images with only the author's binary mask: touching "
                "nuclei split by distance-transform watershed (PQ 0.85 of that split vs the XML "
                "on the 4 validation images); no validation patient",
                "CPM-15 train (15 tiles; image04/05 masks swapped back)",
                "NuCLS train crops (10, CC0; both classes merged to 'nucleus')",
            ],
        },
        "resolution_um_per_px": cfg.mpp,
        "patch_px": cfg.tile,
        "batch_size": cfg.batch_size,
        "initialised_from": init_note,
        "optimizer": (f"AdamW lr {cfg.lr} (backbone x{cfg.backbone_lr_mult}), wd "
                      f"{cfg.weight_decay}, warm-up {cfg.warmup_steps} + cosine to step "
                      f"{cfg.steps}, clip {cfg.clip_grad}"
                      + (f"; exported step {step}" if step < cfg.steps else "")),
        "losses": ("Mask2Former set loss (CE 2, BCE 5, dice 5; no-object 0.1) on all decoder "
                   "layers + auxiliary dense foreground/boundary loss on the pixel decoder "
                   + ("(exported as fg_head: the foreground gate)" if a.fg_gate > 0
                      else "(not exported)")),
        "augmentation": ("dihedral flips/rotations, HED stain jitter, colour jitter, scale "
                         f"{cfg.scale_range[0]}-{cfg.scale_range[1]}"),
        "resume": f"tileseg train --resume training/{run_dir.name}",
    }
    p = export_card(a.checkpoint, a.out, name="aff-nuclei", description=description, licence=LICENCE,
                    metrics=metrics, extra=extra,
                    overrides={"score_threshold": a.score_threshold,
                               "min_visible_fraction": a.min_visible,
                               "cleanup_radius": a.cleanup_radius, "min_area": a.min_area,
                               "flip_views": a.flip_views, "fg_gate": a.fg_gate})
    print(p)


if __name__ == "__main__":
    main()
