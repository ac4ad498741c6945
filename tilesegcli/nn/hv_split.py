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

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class HVSplit:
    split: bool = True  # cut instances holding several markers
    edge: float = 0.3  # energy (map change per pixel) above which a pixel is a boundary
    fg: float = 0.5  # nucleus probability above which a pixel can be part of a marker
    min_marker: int = 10  # px: smaller marker parts are noise
    trim: float = 0.0  # > 0: instance pixels with nucleus probability below it are dropped
    gate: float = 0.0  # > 0: instances whose mean nucleus probability is below it are dropped
    add: float = 0.0  # > 0: HoVer instances less covered than this by instances are added

    @classmethod
    def from_postprocess(cls, post: Any) -> HVSplit:
        """The settings of a card's ``postprocess`` (keys ``hv_`` + a field name, e.g.
        ``hv_edge``; missing ones take the defaults above)."""
        d = asdict(cls())
        return cls(**{k: type(v)(post.get(f"hv_{k}", v)) for k, v in d.items()})


    def maps(self, hv: torch.Tensor, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
        """(3, h, w) stride-2 maps -> (nucleus probability, energy), each (H, W) on the tile."""
        import torch.nn.functional as F
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
        from tilesegcli.segmenter import drop_small_labels

        lab, n = drop_small_labels(*label(core), self.min_marker)
        return lab.astype(np.int32), n

    def apply(self, labels: np.ndarray, classes: np.ndarray, scores: np.ndarray,
              hv: torch.Tensor, new_class: int = 1
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Instances (labels 1..n, per-instance classes and scores) -> the same after, in turn:
        the split of every instance holding several markers (``split``; pieces numbered n+1..
        with their parent's class and score; pixels no marker reaches are dropped), the gate
        (``gate``: instances whose mean nucleus probability is below it lose their pixels), the
        trim, and the addition (``add`` > 0) of the HoVer instances (watershed from all markers
        inside ``nucleus probability > fg``) less than ``add`` covered by instances, as
        ``new_class`` with their mean nucleus probability as score. Instances left without
        pixels keep their entries; the segmenter drops them with its ``min_area``."""
        labels = np.asarray(labels, np.int32)
        prob, energy = self.maps(hv, labels.shape)
        mlab, nm = self.markers(prob, energy)
        out = labels.copy()
        cls, sc = list(np.asarray(classes)), list(np.asarray(scores, np.float32))
        n = len(sc)
        if self.split and n and nm >= 2:
            self._split(labels, out, cls, sc, mlab, nm, energy)
        if self.gate > 0 and len(sc):
            from tilesegcli.segmenter import label_means

            low = np.concatenate([[False], label_means(out, prob, len(sc)) < self.gate])
            out[low[out]] = 0
        if self.trim > 0:
            out[prob < self.trim] = 0
        if self.add > 0 and nm:
            from skimage.segmentation import watershed

            hover = watershed(energy, markers=mlab, mask=prob > self.fg)
            area = np.bincount(hover.ravel(), minlength=nm + 1)
            covered = np.bincount(hover.ravel(), weights=(out > 0).ravel(), minlength=nm + 1)
            psum = np.bincount(hover.ravel(), weights=prob.ravel(), minlength=nm + 1)
            for h in np.nonzero(covered < self.add * area)[0]:
                if h == 0:
                    continue
                cls.append(new_class)
                sc.append(float(psum[h] / max(area[h], 1)))
                out[(hover == h) & (out == 0)] = len(sc)
        return (out, np.asarray(cls, np.int64).reshape(-1), np.asarray(sc, np.float32).reshape(-1))

    def _split(self, labels: np.ndarray, out: np.ndarray, cls: list, sc: list, mlab: np.ndarray,
               nm: int, energy: np.ndarray) -> None:
        """Split, in ``out``, every instance of ``labels`` holding two or more markers."""
        from scipy.ndimage import find_objects
        from skimage.segmentation import watershed

        n = len(sc)
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
                    cls.append(cls[k - 1])
                    sc.append(sc[k - 1])
                    region[ws == m] = len(sc)


def postprocess_defaults() -> dict[str, Any]:
    """The card ``postprocess`` keys of this stage and their defaults (``hv_post``: the stage,
    off by default; ``hv_views``: the flip views whose maps the segmenter computes, 0 = all)."""
    return {"hv_post": False, "hv_views": 0,
            **{f"hv_{k}": v for k, v in asdict(HVSplit()).items()}}
