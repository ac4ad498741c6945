"""Training configuration: one flat dataclass saved in every checkpoint (and ``config.json``).

A config file is JSON with any of the fields below; ``--options key=value`` overrides single
fields (values parsed as JSON, else kept as strings). Data comes from ``data_preset: "nuclei"``
(the bundled MoNuSeg/CPM-15/NuCLS data under ``data_root`` with its fixed validation split) or
from ``train_list`` / ``val_list`` JSON files of {"image", "annotation", "mpp"} objects.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tilesegcli.errors import UsageError
from tilesegcli.nn.hv_split import HVSplit
from tilesegcli.specs import IMAGENET_MEAN, IMAGENET_STD


def _default_arch() -> dict[str, Any]:
    # AFF smaller than "mini" and a light Mask2Former: sized for CPU training (see the card).
    return {
        "backbone": "aff_mini",
        "backbone_kwargs": {"embed_dim": [32, 64, 128, 192], "depths": [1, 1, 2, 1],
                            "num_heads": [1, 2, 4, 8], "mlp_ratio": 2.0, "cluster_size": 8,
                            "nbhd_size": [48, 48, 48, 48], "layer_scale": 0.0, "alpha": 4.0,
                            "ds_rate": 0.25},
        "head": "mask2former",
        # keyword arguments of tilesegcli.nn.aff_m2f.build_aff_m2f (dec_layers = 1 + layers)
        "head_kwargs": {"num_classes": 1, "num_queries": 64, "hidden_dim": 96, "nheads": 4,
                        "dim_feedforward": 384, "dec_layers": 7, "enc_layers": 2,
                        "conv_dim": 96, "mask_dim": 96, "shepard_power": 4.0,
                        "shepard_power_learnable": False},
    }


@dataclass
class TrainConfig:
    out_dir: str = "runs/train"
    # data
    data_preset: str | None = "nuclei"
    data_root: str = "../shared/data/nuclei"
    monuseg_binary: bool = False  # nuclei preset: add the MoNuSeg images with binary masks only
    monuseg_color: bool = False  # nuclei preset: add those images from their colour instance masks
    train_list: str | None = None
    val_list: str | None = None
    class_names: list[str] = field(default_factory=lambda: ["nucleus"])
    mpp: float = 0.5
    mpp_unit: str = "um"
    tile: int = 128
    # augmentation
    scale_range: list[float] = field(default_factory=lambda: [0.8, 1.25])
    stain_jitter: float = 0.05
    colour_jitter: float = 0.1
    # model
    architecture: dict[str, Any] = field(default_factory=_default_arch)
    #: start from these weights (a training checkpoint .pt, or a zoo card name/path); tensors
    #: whose name and shape match are loaded, the rest keep their fresh initialisation
    init_from: str | None = None
    mean: list[float] = field(default_factory=lambda: list(IMAGENET_MEAN))
    std: list[float] = field(default_factory=lambda: list(IMAGENET_STD))
    # loss (Mask2Former defaults; points = sampled mask points per instance)
    class_weight: float = 2.0
    mask_weight: float = 5.0
    dice_weight: float = 5.0
    no_object_weight: float = 0.1
    num_points: int = 1024  # loss points per mask (importance-sampled)
    match_points: int = 2048  # uniform points for the Hungarian matching cost (small objects!)
    aux_dense_weight: float = 1.0  # auxiliary foreground/boundary loss on the mask features
    hv_weight: float = 0.0  # > 0: add the HoVer-style head (nn/hv.py) and its loss at this weight
    hv_only: bool = False  # train the HoVer-style head alone on the frozen network (a fast add-on)
    # optimisation
    batch_size: int = 4
    steps: int = 20000
    lr: float = 3e-4
    backbone_lr_mult: float = 0.5
    weight_decay: float = 0.05
    warmup_steps: int = 200
    min_lr_ratio: float = 0.02
    clip_grad: float = 1.0
    amp: bool = True  # only on CUDA
    device: str = "auto"
    threads: int = 2
    seed: int = 0
    # bookkeeping
    log_every: int = 10
    val_every: int = 250
    checkpoint_minutes: float = 5.0
    max_minutes: float = 0.0  # 0 = no time limit
    # inference (validation and the exported card)
    overlap: int = 32
    score_threshold: float = 0.5
    object_mask_threshold: float = 0.5
    overlap_threshold: float = 0.5
    min_visible_fraction: float = 0.0  # instance: drop masks mostly hidden by better ones
    cleanup_radius: int = -1  # instance: >= 0 closes, fills holes, keeps the largest piece
    min_area: int = 4  # instances smaller than this (px at mpp) are dropped at inference
    mask_threshold: float = 0.5  # instance: mask probability above which a pixel is foreground
    flip_views: int = 1  # instance: 1/2/4/8 test-time passes over flipped tiles (mask voting)
    fg_gate: float = 0.0  # instance: drop instances whose mean dense foreground prob is below it
    hv_post: bool = False  # instance, with the HoVer-style head: its stage (nn/hv_split)
    hv_views: int = 0  # flip views whose HoVer maps are computed (0 = all)
    hv_split: bool = HVSplit.split  # the stage's settings (tilesegcli.nn.hv_split.HVSplit)
    hv_edge: float = HVSplit.edge
    hv_fg: float = HVSplit.fg
    hv_min_marker: int = HVSplit.min_marker
    hv_trim: float = HVSplit.trim
    hv_gate: float = HVSplit.gate
    hv_add: float = HVSplit.add

    def __post_init__(self) -> None:
        hk = self.architecture.get("head_kwargs", {})
        if self.hv_weight > 0 and not hk.get("hv_head"):
            # the head is part of the shipped network: its card must say so
            self.architecture = {**self.architecture, "head_kwargs": {**hk, "hv_head": True}}
        if self.hv_only and self.hv_weight <= 0:
            raise UsageError("hv_only needs hv_weight > 0")

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise UsageError(f"unknown training option(s): {', '.join(unknown)}")
        hints = typing.get_type_hints(cls)
        for k, v in d.items():
            if not _fits(v, hints[k]):
                raise UsageError(f"training option {k}={v!r}: expected {_type_name(hints[k])}")
        return cls(**d)

    @classmethod
    def from_file(cls, path: str | Path) -> TrainConfig:
        try:
            d = json.loads(Path(path).read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise UsageError(f"{path}: cannot read config ({e})") from e
        if not isinstance(d, dict):
            raise UsageError(f"{path}: config must be a JSON object")
        return cls.from_dict(d)

    def with_updates(self, **kw: Any) -> TrainConfig:
        d = dataclasses.asdict(self)
        for k, v in kw.items():
            if k not in d:
                raise UsageError(f"unknown training option: {k}")
            d[k] = v
        return TrainConfig.from_dict(d)

    def load_data(self, train: bool = True) -> tuple[list, list]:
        """(train, val) lists of :class:`~tilesegcli.train.data.Loaded` at ``mpp``. ``val_list``
        replaces the preset's validation images; ``train=False`` skips loading training images."""
        from tilesegcli.train.data import items_from_json, load_item, nuclei_manifest

        if self.train_list:
            tr, va = items_from_json(self.train_list), []
        elif self.data_preset == "nuclei":
            tr, va = nuclei_manifest(self.data_root, monuseg_binary=self.monuseg_binary,
                                     monuseg_color=self.monuseg_color)
        else:
            raise UsageError("no training data: set data_preset='nuclei' or train_list")
        if self.val_list:
            va = items_from_json(self.val_list)
        return ([load_item(i, self.mpp) for i in tr] if train else [],
                [load_item(i, self.mpp) for i in va])


def _fits(value: Any, tp: Any) -> bool:
    """Whether a JSON value fits a field type (int is a float; bool is not a number)."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return any(_fits(value, a) for a in typing.get_args(tp))
    if tp is type(None):
        return value is None
    if tp is Any:
        return True
    if origin is not None:
        return isinstance(value, origin)
    if tp is bool:
        return isinstance(value, bool)
    if tp is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, tp)


def _type_name(tp: Any) -> str:
    return str(tp).replace("typing.", "").replace("<class '", "").replace("'>", "")


def parse_options(pairs: list[str]) -> dict[str, Any]:
    """['lr=1e-4', 'tile=160', 'out_dir=runs/x'] -> dict (JSON values, else strings)."""
    out: dict[str, Any] = {}
    for p in pairs:
        if "=" not in p:
            raise UsageError(f"--options expects key=value, got {p!r}")
        k, v = p.split("=", 1)
        try:
            out[k.strip()] = json.loads(v)
        except json.JSONDecodeError:
            out[k.strip()] = v
    return out
