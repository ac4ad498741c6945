"""The Segmenter interface: what any model (ours or a user's) must provide to the pipeline.

A segmenter takes a batch of RGB uint8 tiles at its working resolution and returns, per tile,
semantic class probabilities and/or an instance label image with per-instance class and score.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np


@dataclass(frozen=True)
class ClassInfo:
    name: str
    color: tuple[int, int, int]


@dataclass
class TileResult:
    """Outputs for one tile, all arrays of the tile's (h, w) size.

    semantic: (C, h, w) float32 probabilities over ``classes`` (index 0 = background), or None.
    labels: (h, w) int32 instance label image (0 = none, k = instance k), or None.
    instance_classes: (K,) int64 class index (into ``classes``) of instance k+1.
    instance_scores: (K,) float32 confidence of instance k+1.
    """

    semantic: np.ndarray | None = None
    labels: np.ndarray | None = None
    instance_classes: np.ndarray | None = None
    instance_scores: np.ndarray | None = None

    @property
    def num_instances(self) -> int:
        return 0 if self.instance_scores is None else int(len(self.instance_scores))


@runtime_checkable
class Segmenter(Protocol):
    """Implement these attributes and ``predict_batch`` to plug any model into tileseg."""

    name: str
    task: str  # "semantic" | "instance" | "panoptic"
    classes: Sequence[ClassInfo]  # index 0 is background
    mpp: float | None  # pixel size the model expects (µm/px; m/px if mpp_unit == "m")
    mpp_unit: str
    tile_size: int  # working-resolution tile edge (px)
    overlap: int  # default overlap (px)

    def predict_batch(self, tiles: np.ndarray) -> list[TileResult]:
        """tiles: (B, H, W, 3) uint8 RGB. Returns B results."""
        ...


def label_means(labels: np.ndarray, values: np.ndarray, n: int) -> np.ndarray:
    """(n,) mean of ``values`` over each label 1..n of ``labels`` (same shape); 0 where a label
    has no pixels."""
    lab = np.asarray(labels).ravel()
    area = np.bincount(lab, minlength=n + 1)[1:n + 1]
    total = np.bincount(lab, weights=np.asarray(values, np.float64).ravel(), minlength=n + 1)
    return total[1:n + 1] / np.maximum(area, 1)


def drop_small_labels(lab: np.ndarray, n: int, min_px: int) -> tuple[np.ndarray, int]:
    """Label image ``lab`` (1..n) without the labels under ``min_px`` pixels, the rest renumbered
    1..K in order (int32), and K."""
    if not n:
        return lab, n
    keep = np.bincount(lab.ravel(), minlength=n + 1) >= min_px
    keep[0] = False
    remap = np.zeros(n + 1, np.int32)
    remap[keep] = np.arange(1, int(keep.sum()) + 1, dtype=np.int32)
    return remap[lab], int(keep.sum())
