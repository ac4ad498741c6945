"""OracleSegmenter: a Segmenter that returns the ground truth inside each tile's read window.

It is the yardstick of the stitching proofs (tiled == untiled, every object exactly once) and a
way to burn known polygons through the whole pipeline (pipeline tests, GeoTIFF round trips).

Pixels alone do not tell where a tile lies, so the oracle needs the window:

* ``predict_tiles(specs)`` — preferred. The runner calls it instead of ``predict_batch`` when the
  segmenter has it (``hasattr(seg, "predict_tiles")``), passing the batch's ``TileSpec`` list.
* ``predict_batch(tiles, windows=None)`` — the Segmenter protocol; ``windows`` (the batch's
  ``TileSpec`` list) is required for the oracle, or set ``oracle.pending_windows`` before the call.

Windows are in working px; parts of a window past the image are zero (background), the way the
reader pads. Instance ids are renumbered 1..K per tile, as a real model would.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from tilesegcli.errors import UsageError
from tilesegcli.segmenter import ClassInfo, TileResult

if TYPE_CHECKING:
    from tilesegcli.specs import TileSpec


def _crop(arr: np.ndarray, spec: TileSpec) -> np.ndarray:
    """arr[..., y:y+h, x:x+w] zero-padded where the window runs past the array."""
    h, w = arr.shape[-2:]
    out = np.zeros(arr.shape[:-2] + (spec.h, spec.w), dtype=arr.dtype)
    x1, y1 = min(spec.x + spec.w, w), min(spec.y + spec.h, h)
    if x1 > spec.x and y1 > spec.y:
        out[..., : y1 - spec.y, : x1 - spec.x] = arr[..., spec.y : y1, spec.x : x1]
    return out


class OracleSegmenter:
    """Ground-truth segmenter (see module docstring).

    gt_labels: (H, W) int instance ids (0 = none) at working resolution.
    gt_classes: class index per id, indexable as ``gt_classes[id]`` (array of length max_id+1 or a
    dict); None -> class 1 for every instance.
    semantic: optional (H, W) int class map; returned one-hot as (C, h, w) float32 probabilities.
    gt_scores: optional per-id score (same indexing as gt_classes); default 1.0.
    """

    name = "oracle"
    mpp_unit = "um"

    def __init__(
        self,
        gt_labels: np.ndarray | None,
        gt_classes: Sequence[int] | np.ndarray | dict[int, int] | None,
        classes: Sequence[ClassInfo],
        tile_size: int,
        overlap: int,
        semantic: np.ndarray | None = None,
        *,
        gt_scores: Sequence[float] | np.ndarray | dict[int, float] | None = None,
        mpp: float | None = None,
    ) -> None:
        if gt_labels is None and semantic is None:
            raise UsageError("oracle needs gt_labels and/or semantic")
        self.gt_labels = gt_labels
        self.semantic = semantic
        self.classes = list(classes)
        self.tile_size = int(tile_size)
        self.overlap = int(overlap)
        self.mpp = mpp
        self.task = (
            "panoptic" if gt_labels is not None and semantic is not None
            else "instance" if gt_labels is not None else "semantic"
        )
        n = 0 if gt_labels is None else int(gt_labels.max(initial=0)) + 1
        self._cls = self._table(gt_classes, n, 1, np.int64)
        self._score = self._table(gt_scores, n, 1.0, np.float32)
        self.pending_windows: list[TileSpec] | None = None

    @staticmethod
    def _table(values: object, n: int, default: float, dtype: type) -> np.ndarray:
        table = np.full(n, default, dtype=dtype)
        if values is None:
            return table
        if isinstance(values, dict):
            for k, v in values.items():
                if 0 <= int(k) < n:
                    table[int(k)] = v
            return table
        arr = np.asarray(values, dtype=dtype)
        m = min(n, len(arr))
        table[:m] = arr[:m]
        return table

    def predict_tiles(self, specs: Sequence[TileSpec]) -> list[TileResult]:
        return [self._one(s) for s in specs]

    def predict_batch(
        self, tiles: np.ndarray, windows: Sequence[TileSpec] | None = None
    ) -> list[TileResult]:
        specs = windows if windows is not None else self.pending_windows
        if specs is None:
            raise UsageError("OracleSegmenter needs tile windows: call predict_tiles(specs)")
        if len(specs) != len(tiles):
            raise UsageError(f"{len(tiles)} tiles but {len(specs)} windows")
        return self.predict_tiles(specs)

    def _one(self, spec: TileSpec) -> TileResult:
        res = TileResult()
        if self.gt_labels is not None:
            win = _crop(self.gt_labels, spec)
            ids, inv = np.unique(win, return_inverse=True)
            inv = inv.reshape(win.shape)
            if ids[0] != 0:  # no background in the window: shift so label 0 stays "none"
                ids = np.concatenate([[0], ids])
                inv = inv + 1
            res.labels = inv.astype(np.int32)
            fg = ids[1:]
            res.instance_classes = self._cls[fg].astype(np.int64)
            res.instance_scores = self._score[fg].astype(np.float32)
        if self.semantic is not None:
            cmap = _crop(self.semantic, spec)
            probs = np.zeros((len(self.classes), spec.h, spec.w), dtype=np.float32)
            for c in range(len(self.classes)):
                probs[c] = cmap == c
            res.semantic = probs
        return res
