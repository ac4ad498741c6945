"""Regenerate the bundled cards of the official AFF + Mask2Former checkpoints.

Run ``python -m tilesegcli.models._make_cards`` (it writes next to itself). Facts come from the official
apple/ml-autofocusformer-segmentation configs and README (see docs: AFF-REFERENCE.md sections 3.4,
4 and 5); sha256 and sizes of the official files are unknown here (they could not be downloaded),
so they are null and the weights are verified by strict loading instead.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from tilesegcli.specs import IMAGENET_MEAN, IMAGENET_STD

HERE = Path(__file__).resolve().parent
URL = "https://docs-assets.developer.apple.com/ml-research/models/aff"

SEG_FILE = {"mini": "aff_mini", "tiny": "aff_tiny", "small": "aff_small",
            "base": "aff_base_22kto1k_384"}
CLS_FILE = SEG_FILE  # both official repositories name the files alike


def _backbone_kwargs(config: str) -> dict:
    """A card's ``backbone_kwargs`` of a registered AFF configuration (SEG neighbourhoods): the
    sizes live once, in ``tilesegcli.nn.aff.AFF_CONFIGS``."""
    from tilesegcli.nn.aff import AFF_CONFIGS

    c = AFF_CONFIGS[config]
    return dict(embed_dim=list(c["embed_dim"]), depths=list(c["depths"]),
                num_heads=list(c["num_heads"]), mlp_ratio=c["mlp_ratio"],
                cluster_size=c["cluster_size"], nbhd_size=list(c["nbhd_seg"]),
                layer_scale=c["layer_scale"])


# Backbone sizes (SEG configs: NBHD_SIZE 48 x4; base is the 22k->1k 384 model with clusters of 24).
SIZES = {size: _backbone_kwargs(config) for size, config in SEG_FILE.items()}

# dataset tag -> (folder, task, class set, num classes, alpha, shepard (power, learnable),
#                 train resolution (h, w), tile, overlap, published metric per size)
DATASETS = {
    "ade20k": dict(folder="ade_sem", task="semantic", classes="ade20k", num_classes=150,
                   alpha=4.0, shepard=(6.0, True), train=[512, 512], tile=512, overlap=64,
                   data="ADE20K (SceneParsing, 150 classes)", metric="mIoU (val)",
                   scores={"mini": 46.5, "mini-1-5th": 46.0, "tiny": 50.2, "tiny-1-5th": 50.0,
                           "small": 51.2, "small-1-5th": 51.9},
                   licence_data="ADE20K terms of use (research, non-commercial)"),
    "cityscapes-instance": dict(folder="city_ins", task="instance", classes="cityscapes-thing",
                                num_classes=8, alpha=8.0, shepard=(6.0, True), train=[512, 1024],
                                tile=1024, overlap=128, data="Cityscapes fine (8 thing classes)",
                                metric="AP (val)",
                                scores={"mini": 40.0, "tiny": 42.7, "small": 44.0, "base": 46.2},
                                licence_data="Cityscapes licence (non-commercial)"),
    "cityscapes-panoptic": dict(folder="city_pan", task="panoptic", classes="cityscapes",
                                num_classes=19, alpha=8.0, shepard=(6.0, True), train=[512, 1024],
                                tile=1024, overlap=128, data="Cityscapes fine (19 classes)",
                                metric="PQ (val, single scale)",
                                scores={"mini": 62.7, "tiny": 65.7, "small": 66.9, "base": 67.7},
                                licence_data="Cityscapes licence (non-commercial)"),
    "coco-instance": dict(folder="coco_ins", task="instance", classes="coco", num_classes=80,
                          alpha=4.0, shepard=(4.0, False), train=[1024, 1024], tile=1024,
                          overlap=128, data="COCO 2017 (80 thing classes, LSJ 1024, 50 epochs)",
                          metric="mask AP (val)",
                          scores={"mini": 42.3, "mini-1-5th": 42.3, "tiny": 45.3,
                                  "tiny-1-5th": 44.5, "small": 46.4, "small-1-5th": 45.7},
                          licence_data="COCO annotations CC BY 4.0; images under Flickr terms"),
}
CHECKPOINTS = {  # which (size, ds variant) exist per dataset (official README)
    "ade20k": ["mini", "mini-1-5th", "tiny", "tiny-1-5th", "small", "small-1-5th"],
    "cityscapes-instance": ["mini", "tiny", "small", "base"],
    "cityscapes-panoptic": ["mini", "tiny", "small", "base"],
    "coco-instance": ["mini", "mini-1-5th", "tiny", "tiny-1-5th", "small", "small-1-5th"],
}
DEFAULT_TAG = {"mini": "coco-instance", "tiny": "coco-instance", "small": "coco-instance",
               "base": "cityscapes-panoptic"}
NOMINAL = ("Natural-image model: it has no physical pixel size; mpp 1.0 um/px is a nominal "
           "working resolution (override it to suit your images).")
LICENCE = ("Apple Sample Code License (apple/ml-autofocusformer-segmentation, code and "
           "weights); training data: {}")


def seg_card(variant: str, tag: str) -> dict:
    size, _, fifth = variant.partition("-")
    d = DATASETS[tag]
    queries = 250 if size == "base" else 100
    tagname = tag + ("-1-5th" if fifth else "")
    name = f"aff-{size}.{tagname}"
    fname = SEG_FILE[size] + ("_1_5th" if fifth else "")
    folder = d["folder"]
    note = ""
    task = d["task"]
    head_classes = d["num_classes"]
    classes = d["classes"]
    if size == "base" and tag == "cityscapes-instance":
        # The official README links the panoptic file for Base instance segmentation; that file
        # has a 19-class head, so this card runs it in instance mode, keeping thing classes.
        folder, head_classes, classes = "city_pan", 19, "cityscapes"
        note = (" The official README links the Cityscapes *panoptic* Base file for instance "
                "segmentation too (possibly a README error); this card runs that 19-class "
                "panoptic model in instance mode and keeps only the 8 thing classes.")
    ds_rate = 0.2 if fifth else 0.25  # fname doubles as the backbone's registry name
    score = d["scores"].get(variant)
    card = {
        "format": 1,
        "name": name,
        "description": (
            f"AFF-{size.capitalize()}{'-1/5' if fifth else ''} + Mask2Former, official "
            f"{d['data']} checkpoint, {task} segmentation"
            + (f"; published {d['metric']} {score}" if score is not None else "")
            + f". {NOMINAL}{note}"),
        "task": task,
        "architecture": {
            "backbone": fname,
            "backbone_kwargs": {**SIZES[size], "alpha": d["alpha"], "ds_rate": ds_rate},
            "head": "mask2former",
            "head_kwargs": {
                "num_classes": head_classes, "num_queries": queries, "hidden_dim": 256,
                "nheads": 8, "dim_feedforward": 2048, "dec_layers": 10, "enc_layers": 6,
                "conv_dim": 256, "mask_dim": 256, "shepard_power": d["shepard"][0],
                "shepard_power_learnable": d["shepard"][1]},
        },
        "classes": classes,
        "background": "implicit",
        "input": {"mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD), "size_divisibility": 32},
        "train_resolution": d["train"],
        "mpp": 1.0, "mpp_unit": "um", "mpp_nominal": True,
        "tile_size": d["tile"], "overlap": d["overlap"], "min_area": 64,
        "postprocess": {"top_k": queries, "score_threshold": 0.5,
                        "object_mask_threshold": 0.8, "overlap_threshold": 0.8},
        "weights": {
            "url": f"{URL}/segmentation/{folder}/{fname}.pth", "sha256": None, "size": None,
            "filename": f"aff-{folder}-{fname}.pth", "bundled": False, "format": "detectron2",
            "ignore_keys": ["criterion.empty_weight"],
            "note": "sha256 unknown (not downloadable when this card was written): the file is "
                    "verified by loading it strictly into the architecture above."},
        "licence": LICENCE.format(d["licence_data"]),
        "metrics": {d["metric"]: score} if score is not None else {},
    }
    if task == "instance" and classes == "cityscapes":
        card["instance_classes"] = "thing"
    return card


def base_card(size: str) -> dict:
    default = f"aff-{size}.{DEFAULT_TAG[size]}"
    return {
        "format": 1,
        "extends": default,
        "name": f"aff-{size}",
        "description": (f"AFF-{size.capitalize()} + Mask2Former: the default checkpoint of this "
                        f"size ({default}). backbone_weights are the official ImageNet "
                        "classification weights, the starting point for fine-tuning. " + NOMINAL),
        "backbone_weights": {
            "url": f"{URL}/classification/{CLS_FILE[size]}.pth", "sha256": None, "size": None,
            "filename": f"aff-{size}.imagenet.pth", "bundled": False, "format": "state_dict",
            "ignore_keys": ["norm.weight", "norm.bias", "head.weight", "head.bias"]},
    }


def dumps(card: dict) -> str:
    """Indented JSON with short lists of numbers kept on one line (readable diffs)."""
    text = json.dumps(card, indent=2)
    text = re.sub(r"\[\s+([-0-9.e,\s]+?)\s+\]",
                  lambda m: "[" + ", ".join(x.strip() for x in m.group(1).split(",")) + "]", text)
    return text + "\n"


def main() -> None:
    cards = [seg_card(v, t) for t, vs in CHECKPOINTS.items() for v in vs]
    cards += [base_card(s) for s in SIZES]
    for c in cards:
        (HERE / f"{c['name']}.json").write_text(dumps(c))
    print(f"wrote {len(cards)} cards")


if __name__ == "__main__":
    main()
