"""Split merged nuclei with the HoVer-style maps (``nn/hv.py``): a tile's instances in, more out.

Within one nucleus the predicted horizontal map h rises evenly from -1 to 1 along x (the vertical
map v along y), a slope of about 1 / radius; where two nuclei touch it falls back from 1 to -1 in
a few pixels. So ``energy = max(|dh/dx|, |dv/dy|)`` is low inside nuclei and high on the line
between touching ones. Markers are the connected parts of ``nucleus probability > fg`` and
``energy < edge`` (opened, at least ``min_marker`` px). Every Mask2Former instance holding two or
more markers is split by a watershed on the energy from those markers, inside its own mask: the
instances stay Mask2Former's (their scores, classes and outlines), HoVer's maps only cut the ones
that cover several nuclei. ``trim`` > 0 also drops an instance's pixels whose nucleus probability
is below it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class HVSplit:
    edge: float = 0.3  # energy (map change per pixel) above which a pixel is a boundary
    fg: float = 0.5  # nucleus probability above which a pixel can be part of a marker
    min_marker: int = 10  # px: smaller marker parts are noise
    trim: float = 0.0  # > 0: instance pixels with nucleus probability below it are dropped

    @classmethod
    def from_postprocess(cls, post: dict[str, Any]) -> HVSplit:
        """The settings of a card's ``postprocess`` (keys ``hv_edge``, ``hv_fg``,
        ``hv_min_marker``, ``hv_trim``; missing ones take the defaults above)."""
        d = cls()
        return cls(edge=float(post.get("hv_edge", d.edge)), fg=float(post.get("hv_fg", d.fg)),
                   min_marker=int(post.get("hv_min_marker", d.min_marker)),
                   trim=float(post.get("hv_trim", d.trim)))

    def maps(self, hv: torch.Tensor, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
        """(3, h, w) stride-2 maps -> (nucleus probability, energy), each (H, W) on the tile."""
        from scipy.ndimage import sobel

        h, w = shape
        up = F.interpolate(hv[None].float(), size=(hv.shape[-2] * 2, hv.shape[-1] * 2),
                           mode="bilinear", align_corners=False)[0, :, :h, :w].numpy()
        # a Sobel filter sums 8 x the slope of a linear ramp
        energy = np.maximum(np.abs(sobel(up[1], axis=1)), np.abs(sobel(up[2], axis=0))) / 8.0
        return up[0], energy

    def markers(self, prob: np.ndarray, energy: np.ndarray) -> tuple[np.ndarray, int]:
        """Labelled markers (H, W) int32 and their count."""
        from scipy.ndimage import binary_opening, label

        core = binary_opening((prob > self.fg) & (energy < self.edge), np.ones((3, 3), bool))
        lab, n = label(core)
        if n:
            area = np.bincount(lab.ravel(), minlength=n + 1)
            keep = area >= self.min_marker
            keep[0] = False
            remap = np.zeros(n + 1, np.int32)
            remap[keep] = np.arange(1, int(keep.sum()) + 1, dtype=np.int32)
            lab, n = remap[lab], int(keep.sum())
        return lab.astype(np.int32), n

    def apply(self, labels: np.ndarray, classes: np.ndarray, scores: np.ndarray,
              hv: torch.Tensor) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Instances (labels 1..n, per-instance classes and scores) -> the same with every
        instance that holds several markers split; new pieces numbered n+1.. with their
        parent's class and score. Pixels a split cannot reach from a marker are dropped."""
        from scipy.ndimage import find_objects
        from skimage.segmentation import watershed

        labels = np.asarray(labels, np.int32)
        n = len(scores)
        if n == 0:
            return labels, classes, scores
        prob, energy = self.maps(hv, labels.shape)
        mlab, nm = self.markers(prob, energy)
        out = labels.copy()
        classes, scores = list(np.asarray(classes)), list(np.asarray(scores))
        if nm >= 2:
            pair = labels.astype(np.int64) * (nm + 1) + mlab
            cnt = np.bincount(pair.ravel(), minlength=(n + 1) * (nm + 1)).reshape(n + 1, nm + 1)
            cnt[0], cnt[:, 0] = 0, 0
            held = cnt >= self.min_marker
            boxes = find_objects(labels, max_label=n)
            for k in np.nonzero(held.sum(1) >= 2)[0]:
                sl = boxes[k - 1]
                inside = labels[sl] == k
                seeds = np.where(inside & held[k][mlab[sl]], mlab[sl], 0)
                ws = watershed(energy[sl], markers=seeds, mask=inside)
                region = out[sl]
                region[inside] = 0
                for j, m in enumerate(np.unique(ws[ws > 0])):
                    if j == 0:
                        region[ws == m] = k
                    else:
                        classes.append(classes[k - 1])
                        scores.append(scores[k - 1])
                        region[ws == m] = len(scores)
        if self.trim > 0:
            out[prob < self.trim] = 0
        return (out, np.asarray(classes, np.int64).reshape(-1),
                np.asarray(scores, np.float32).reshape(-1))
