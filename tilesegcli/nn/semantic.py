"""Turn a dense semantic network (SeaFormer, Focal+FPN) into a tileseg ``Segmenter``.

This module owns ``SemanticSegmenter``: uint8 RGB tiles -> normalised float tensors on the chosen
device -> logits -> bilinear resize to the tile -> softmax -> ``TileResult.semantic`` (C, h, w)
float32 with index 0 = background. It also owns ``build_semantic_net`` (card architecture ->
network) and ``load_semantic_weights`` (file -> verified, renamed, strictly loaded state dict),
which ``SemanticSegmenter.from_card`` combines for the zoo.

Card architecture (``head`` "seaformer" or "focal_fpn")::

    {"backbone": "seaformer_tiny", "head": "seaformer", "head_kwargs": {"num_classes": 150}}
    {"backbone": "focal_tiny", "backbone_kwargs": {}, "head": "focal_fpn",
     "head_kwargs": {"num_classes": 150, "head_dim": 256}}
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from tilesegcli.errors import UsageError, WeightsError
from tilesegcli.segmenter import ClassInfo, TileResult

if TYPE_CHECKING:
    import torch
    from torch import nn

    from tilesegcli.zoo import ModelCard

IMAGENET_MEAN = (123.675, 116.28, 103.53)
IMAGENET_STD = (58.395, 57.12, 57.375)


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


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def load_semantic_weights(net: nn.Module, path: str | Path, *, family: str,
                          sha256: str | None = None) -> None:
    """Load official or our own weights strictly (``weights_only`` / safetensors); checksum first."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"weights file not found: {path}")
    if sha256 is not None and _sha256(path) != sha256.lower():
        raise WeightsError(f"weights {path.name}: sha256 mismatch (corrupt or wrong file)")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            sd: dict[str, torch.Tensor] = load_file(str(path))
        else:
            sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unreadable file is one user-facing error
        raise WeightsError(f"cannot read weights {path.name}: {e}") from e
    if not isinstance(sd, dict):
        raise WeightsError(f"weights {path.name}: not a state dict")
    ours = net.state_dict()
    if not set(sd) <= set(ours):  # foreign (official) key names: rename them
        if family == "seaformer":
            from tilesegcli.nn.seaformer import checkpoint_filter_fn
        else:
            from tilesegcli.nn.focal import checkpoint_filter_fn
        try:
            sd = checkpoint_filter_fn(sd, net)
        except ValueError as e:
            raise WeightsError(f"weights {path.name}: {e}") from e
    missing = sorted(k for k in ours if k not in sd and not k.endswith("num_batches_tracked"))
    if missing:
        raise WeightsError(f"weights {path.name}: {len(missing)} parameters missing "
                           f"(e.g. {missing[0]}); is this a {family} checkpoint of this size?")
    try:
        net.load_state_dict(sd, strict=False)
    except RuntimeError as e:
        raise WeightsError(f"weights {path.name}: {str(e).splitlines()[0]}") from e


def resolve_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError(f"device {device!r} requested but CUDA is not available")
    return device


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
        import torch

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
        self._mean = torch.tensor(mean, dtype=torch.float32, device=self.device).view(1, 3, 1, 1)
        self._std = torch.tensor(std, dtype=torch.float32, device=self.device).view(1, 3, 1, 1)

    @classmethod
    def from_card(cls, card: ModelCard, *, weights: str | Path | None = None,
                  device: str = "auto") -> SemanticSegmenter:
        arch = card.architecture
        family = _family(str(arch.get("backbone", "")))
        net = build_semantic_net(arch)
        spec = card.weights
        path: Path | None = Path(weights) if weights is not None else None
        if path is None and spec.bundled and spec.filename and card.base_dir:
            path = Path(card.base_dir) / spec.filename
        if path is None and spec.filename:
            try:  # engineer C's weights cache, when present
                from tilesegcli import weights as wmod

                path = Path(wmod.fetch_weights(card))  # type: ignore[attr-defined]
            except (ImportError, AttributeError):
                path = None
        if path is None:
            raise WeightsError(f"model {card.name}: no weights available; pass a weights file")
        load_semantic_weights(net, path, family=family,
                              sha256=None if weights is not None else spec.sha256)
        return cls(net, name=card.name, classes=card.classes, class_offset=card.class_offset,
                   mean=card.mean, std=card.std, mpp=card.mpp, mpp_unit=card.mpp_unit,
                   tile_size=card.tile_size, overlap=card.overlap,
                   size_divisibility=card.size_divisibility, device=device)

    def forward(self, tiles: np.ndarray) -> torch.Tensor:
        """(B, H, W, 3) uint8 -> (B, C, H, W) float32 probabilities on the device."""
        import torch
        import torch.nn.functional as F

        if not (isinstance(tiles, np.ndarray) and tiles.ndim == 4 and tiles.shape[-1] == 3
                and tiles.dtype == np.uint8):
            shape = getattr(tiles, "shape", None)
            raise UsageError(f"expected (B, H, W, 3) uint8 tiles, got {shape} "
                             f"{getattr(tiles, 'dtype', type(tiles).__name__)}")
        _, h, w, _ = tiles.shape
        x = torch.from_numpy(np.ascontiguousarray(tiles)).to(self.device)
        x = (x.permute(0, 3, 1, 2).float() - self._mean) / self._std
        d = self.size_divisibility
        ph, pw = (-h) % d, (-w) % d
        if ph or pw:  # zero = the mean colour after normalisation
            x = F.pad(x, (0, pw, 0, ph))
        with torch.inference_mode():
            logits = self.net(x, upsample=True)[..., :h, :w].float()
            prob = logits.softmax(dim=1)
            if self.class_offset:
                prob = torch.cat([prob.new_zeros(prob.shape[0], self.class_offset, h, w), prob], 1)
        return prob

    def predict_batch(self, tiles: np.ndarray) -> list[TileResult]:
        prob = self.forward(tiles).cpu().numpy().astype(np.float32, copy=False)
        return [TileResult(semantic=np.ascontiguousarray(p)) for p in prob]
