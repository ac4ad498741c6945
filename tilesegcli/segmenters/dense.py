"""Turn a dense semantic network (SeaFormer, Focal+FPN) into a tileseg ``Segmenter``.

This module owns ``SemanticSegmenter``: uint8 RGB tiles -> normalised float tensors on the chosen
device -> logits -> bilinear resize to the tile -> softmax -> ``TileResult.semantic`` (C, h, w)
float32 with index 0 = background. It also owns ``build_semantic_net`` (card architecture ->
network), ``load_semantic_weights`` (file -> verified, renamed, strictly loaded state dict),
which ``SemanticSegmenter.from_card`` combines for the zoo, and ``load_backbone_weights``
(official ImageNet checkpoints -> backbone init for fine-tuning).

Zoo hook: ``architecture["head"]`` "seaformer" / "focal_fpn" ->
``tilesegcli.segmenters.dense:SemanticSegmenter`` (``from_card(card, weights=, device=)``).

Card architecture (``head`` "seaformer" or "focal_fpn")::

    {"backbone": "seaformer_tiny", "head": "seaformer", "head_kwargs": {"num_classes": 150}}
    {"backbone": "focal_tiny", "backbone_kwargs": {}, "head": "focal_fpn",
     "head_kwargs": {"num_classes": 150, "head_dim": 256}}
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from tilesegcli.device import resolve_device
from tilesegcli.errors import UsageError, WeightsError
from tilesegcli.segmenter import ClassInfo, TileResult
from tilesegcli.specs import IMAGENET_MEAN, IMAGENET_STD

if TYPE_CHECKING:
    import torch
    from torch import nn

    from tilesegcli.zoo import ModelCard


def _family(backbone: str) -> str:
    if backbone.startswith("seaformer_"):
        return "seaformer"
    if backbone.startswith("focal_"):
        return "focal"
    raise UsageError(f"unknown semantic backbone {backbone!r} (seaformer_* or focal_*)")


def build_semantic_net(architecture: Mapping[str, Any]) -> nn.Module:
    """Card ``architecture`` -> SeaFormerSeg / FocalSeg (random init)."""
    name = str(architecture.get("backbone", ""))
    head_kw = dict(architecture.get("head_kwargs", {}))
    bb_kw = dict(architecture.get("backbone_kwargs", {}))
    if _family(name) == "seaformer":
        from tilesegcli.nn.seaformer import MODEL_BUILDERS as sea

        if name not in sea:
            raise UsageError(f"unknown SeaFormer builder {name!r} (known: {', '.join(sea)})")
        return sea[name](**bb_kw, **head_kw)
    from tilesegcli.nn.focal import MODEL_BUILDERS as foc

    if name not in foc:
        raise UsageError(f"unknown Focal builder {name!r} (known: {', '.join(foc)})")
    return foc[name](**bb_kw, **head_kw)


def load_semantic_state(net: nn.Module, state_dict: Mapping[str, torch.Tensor], *, family: str,
                        source: str = "checkpoint", ignore_keys: Sequence[str] = ()) -> None:
    """Load our own or official (renamed by the family's ``checkpoint_filter_fn``) tensors
    strictly: every parameter must come from the file."""
    from tilesegcli.weights import load_state_dict_strict

    ignore = set(ignore_keys)
    sd = {k: v for k, v in state_dict.items() if k not in ignore}
    ours = net.state_dict()
    if not set(sd) <= set(ours):  # foreign (official) key names: rename them
        if family == "seaformer":
            from tilesegcli.nn.seaformer import checkpoint_filter_fn
        else:
            from tilesegcli.nn.focal import checkpoint_filter_fn
        try:
            sd = checkpoint_filter_fn(sd, net)
        except ValueError as e:
            raise WeightsError(f"{source}: {e}") from None
    for k in ours:  # BN step counters carry no information; tolerate their absence
        if k.endswith("num_batches_tracked") and k not in sd:
            sd[k] = ours[k]
    load_state_dict_strict(net, sd, source=source)


def load_semantic_weights(net: nn.Module, path: str | Path, *, family: str,
                          sha256: str | None = None) -> None:
    """Read a weights file without executing code (safetensors / ``weights_only``), verify its
    sha256 when given, and load it strictly into ``net``."""
    from tilesegcli.weights import extract_state_dict, load_weights_file, sha256_file

    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"weights file not found: {path}")
    if sha256 is not None and sha256_file(path) != sha256.lower():
        raise WeightsError(f"{path}: sha256 mismatch (corrupt or wrong file)")
    sd = extract_state_dict(load_weights_file(path), source=path.name)
    load_semantic_state(net, sd, family=family, source=path.name)


# ImageNet checkpoints carry one final norm only: the per-stage output norms of our Focal
# backbone (LayerNorm, identity at init) may stay at their initial values
_BACKBONE_MAY_MISS = ("backbone.out_norms.0.", "backbone.out_norms.1.", "backbone.out_norms.2.")
# official Focal ImageNet models (224 px) have a 7x7 last stage = one window, so no expanded
# neighbourhood there: those bias tables start at zero (no bias) when fine-tuning larger tiles
_ZERO_IF_MISSING = ".attn.rpb_neighbors"


def load_backbone_weights(net: nn.Module, path: str | Path, *, family: str) -> list[str]:
    """Initialise ``net.backbone`` from an ImageNet (classification) or segmentation checkpoint,
    official or ours; the head keeps its random init. Returns the backbone keys not in the file:
    Focal per-stage output norms (left at init) and last-stage neighbour bias tables (zeroed);
    anything else missing is a WeightsError."""
    import torch

    from tilesegcli.weights import extract_state_dict, load_weights_file

    path = Path(path)
    obj = load_weights_file(path)
    if isinstance(obj.get("state_dict_ema"), Mapping):  # timm EMA weights (official SeaFormer)
        obj = obj["state_dict_ema"]
    sd = extract_state_dict(obj, source=path.name)
    if family == "seaformer":
        from tilesegcli.nn.seaformer import checkpoint_filter_fn

        heads = ("backbone.", "decode_head.", "auxiliary_head.", "head.")
        sd = {(k if k.startswith(heads) else "backbone." + k): v for k, v in sd.items()}
    else:
        from tilesegcli.nn.focal import checkpoint_filter_fn
    ours = net.state_dict()
    if not set(sd) <= set(ours):  # official names
        try:
            sd = checkpoint_filter_fn(sd, net)
        except ValueError as e:
            raise WeightsError(f"{path.name}: {e}") from None
    sd = {k: v for k, v in sd.items() if k.startswith("backbone.") and k in ours}
    left = [k for k in ours if k.startswith("backbone.") and k not in sd
            and not k.endswith("num_batches_tracked")]
    for k in left:
        if k.endswith(_ZERO_IF_MISSING):
            sd[k] = torch.zeros_like(ours[k])
    bad = [k for k in left if not (k.startswith(_BACKBONE_MAY_MISS)
                                   or k.endswith(_ZERO_IF_MISSING))]
    if bad:
        raise WeightsError(f"{path.name}: {len(bad)} backbone parameters missing (e.g. {bad[0]}); "
                           f"is this a {family} checkpoint of this size?")
    for k, v in sd.items():
        if ours[k].shape != v.shape:
            raise WeightsError(f"{path.name}: {k} has shape {tuple(v.shape)}, "
                               f"model {tuple(ours[k].shape)}")
    net.load_state_dict(sd, strict=False)
    return left


class SemanticSegmenter:
    """``Segmenter`` around a dense semantic net returning (B, K, h, w) logits at any stride.

    ``class_offset`` = 1 when the net has no background class (tileseg class 0 then gets
    probability 0 and model class k becomes class k+1); 0 when model class 0 is background.
    """

    task = "semantic"

    def __init__(self, net: nn.Module, *, name: str, classes: Sequence[ClassInfo],
                 class_offset: int = 0, mean: Sequence[float] = IMAGENET_MEAN,
                 std: Sequence[float] = IMAGENET_STD, mpp: float | None = None,
                 mpp_unit: str = "um", tile_size: int = 512, overlap: int = 64,
                 size_divisibility: int = 1, device: str = "auto") -> None:
        from tilesegcli.nn.inputs import channel_stats

        num = getattr(net, "num_classes", None)
        if num is not None and num + class_offset != len(classes):
            raise UsageError(f"model {name}: {num} network classes + {class_offset} "
                             f"!= {len(classes)} classes")
        self.name, self.classes = name, tuple(classes)
        self.class_offset = class_offset
        self.mpp, self.mpp_unit = mpp, mpp_unit
        self.tile_size, self.overlap = tile_size, overlap
        self.size_divisibility = max(1, int(size_divisibility))
        self.device = resolve_device(device)
        self.net = net.to(self.device).eval()
        self._mean, self._std = channel_stats(mean, std, self.device)

    @classmethod
    def from_card(cls, card: ModelCard, *, weights: str | Path | None = None,
                  device: str = "auto") -> SemanticSegmenter:
        arch = card.architecture
        family = _family(str(arch.get("backbone", "")))
        net = build_semantic_net(arch)
        from tilesegcli.weights import extract_state_dict, load_weights_file, resolve_weights

        path = resolve_weights(card, weights)  # explicit > bundled > cache > download; sha256
        sd = extract_state_dict(load_weights_file(path), source=path.name)
        load_semantic_state(net, sd, family=family, source=path.name,
                            ignore_keys=card.weights.ignore_keys)
        return cls(net, name=card.name, classes=card.classes, class_offset=card.class_offset,
                   mean=card.mean, std=card.std, mpp=card.mpp, mpp_unit=card.mpp_unit,
                   tile_size=card.tile_size, overlap=card.overlap,
                   size_divisibility=card.size_divisibility, device=device)

    def forward(self, tiles: np.ndarray) -> torch.Tensor:
        """(B, H, W, 3) uint8 -> (B, C, H, W) float32 probabilities on the device."""
        import torch

        from tilesegcli.nn.inputs import tiles_to_input

        if not (isinstance(tiles, np.ndarray) and tiles.ndim == 4 and tiles.shape[-1] == 3
                and tiles.dtype == np.uint8):
            shape = getattr(tiles, "shape", None)
            raise UsageError(f"expected (B, H, W, 3) uint8 tiles, got {shape} "
                             f"{getattr(tiles, 'dtype', type(tiles).__name__)}")
        _, h, w, _ = tiles.shape
        x = tiles_to_input(tiles, self._mean, self._std, self.size_divisibility, self.device)
        with torch.inference_mode():
            logits = self.net(x, upsample=True)[..., :h, :w].float()
            prob = logits.softmax(dim=1)
            if self.class_offset:
                prob = torch.cat([prob.new_zeros(prob.shape[0], self.class_offset, h, w), prob], 1)
        return prob

    def predict_batch(self, tiles: np.ndarray) -> list[TileResult]:
        prob = self.forward(tiles).cpu().numpy().astype(np.float32, copy=False)
        return [TileResult(semantic=np.ascontiguousarray(p)) for p in prob]
