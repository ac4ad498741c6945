"""Instance and semantic segmentation metrics on label images (pure numpy/scipy, no torch).

Owns the definitions used by ``tileseg eval`` and by validation during training:

* PQ = DQ x SQ (Kirillov et al. 2019): a prediction and a ground-truth instance match when their
  IoU > 0.5 (such matches are unique); DQ = TP / (TP + FP/2 + FN/2), SQ = mean IoU of matches.
* Object F1 at IoU 0.5: 2TP / (2TP + FP + FN) over the same matches (numerically equal to DQ).
* AJI (Kumar et al. 2017, TMI): every GT instance G_i is paired with the prediction S_j of largest
  IoU; C += |G_i ∩ S_j|, U += |G_i ∪ S_j| (U += |G_i| when nothing overlaps); finally every
  prediction never chosen adds |S_k| to U. AJI = C / U. Predictions may be chosen more than once.
* Dice: binary foreground Dice 2|P ∩ G| / (|P| + |G|).
* Semantic IoU per class from a confusion matrix; mIoU over classes present in GT or prediction.

Per-image results are :class:`InstanceStats` (counts kept so datasets can be pooled). Undefined
values (e.g. PQ of two empty images) are NaN and skipped by means.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass

import numpy as np


@dataclass
class InstanceStats:
    """One image's instance statistics and the counts needed to pool them."""

    tp: int
    fp: int
    fn: int
    iou_sum: float  # sum of IoU over the TP matches
    aji_c: int  # AJI numerator
    aji_u: int  # AJI denominator
    inter_fg: int  # |P_fg ∩ G_fg|
    sum_fg: int  # |P_fg| + |G_fg|

    @property
    def dq(self) -> float:
        d = self.tp + 0.5 * self.fp + 0.5 * self.fn
        return self.tp / d if d else math.nan

    @property
    def sq(self) -> float:
        return self.iou_sum / self.tp if self.tp else (math.nan if self.fp + self.fn == 0 else 0.0)

    @property
    def pq(self) -> float:
        d = self.tp + 0.5 * self.fp + 0.5 * self.fn
        return self.iou_sum / d if d else math.nan

    @property
    def f1(self) -> float:
        d = 2 * self.tp + self.fp + self.fn
        return 2 * self.tp / d if d else math.nan

    @property
    def precision(self) -> float:
        d = self.tp + self.fp
        return self.tp / d if d else math.nan

    @property
    def recall(self) -> float:
        d = self.tp + self.fn
        return self.tp / d if d else math.nan

    @property
    def aji(self) -> float:
        return self.aji_c / self.aji_u if self.aji_u else math.nan

    @property
    def dice(self) -> float:
        return 2 * self.inter_fg / self.sum_fg if self.sum_fg else math.nan

    def summary(self) -> dict[str, float]:
        return {
            "pq": self.pq, "dq": self.dq, "sq": self.sq, "aji": self.aji, "f1": self.f1,
            "precision": self.precision, "recall": self.recall, "dice": self.dice,
            "n_gt": self.tp + self.fn, "n_pred": self.tp + self.fp,
        }

    def to_dict(self) -> dict:
        return {**asdict(self), **self.summary()}


def _compact(labels: np.ndarray) -> tuple[np.ndarray, int]:
    """Renumber ids to 0..n (0 stays background)."""
    labels = np.asarray(labels)
    ids, inv = np.unique(labels, return_inverse=True)
    inv = inv.reshape(labels.shape)
    if ids[0] == 0:
        return inv.astype(np.int64), len(ids) - 1
    return inv.astype(np.int64) + 1, len(ids)


def overlap_matrix(gt: np.ndarray, pred: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pixel counts for every (gt, pred) pair. Returns (inter (G+1, P+1) int64 with row/col 0 =
    background, gt areas (G,), pred areas (P,)); ids are compacted to 1..G and 1..P."""
    if gt.shape != pred.shape:
        raise ValueError(f"shape mismatch: gt {gt.shape} vs pred {pred.shape}")
    g, ng = _compact(gt)
    p, np_ = _compact(pred)
    inter = np.bincount((g * (np_ + 1) + p).ravel(), minlength=(ng + 1) * (np_ + 1))
    inter = inter.reshape(ng + 1, np_ + 1)
    return inter, inter[1:].sum(axis=1), inter[:, 1:].sum(axis=0)


def instance_stats(gt: np.ndarray, pred: np.ndarray) -> InstanceStats:
    """PQ/AJI/F1/Dice statistics of one image. gt, pred: (H, W) integer label images."""
    inter, ga, pa = overlap_matrix(gt, pred)
    i = inter[1:, 1:].astype(np.float64)
    union = ga[:, None] + pa[None, :] - i
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = np.where(union > 0, i / union, 0.0)
    matched = iou > 0.5  # at most one per row and per column
    tp = int(matched.sum())
    iou_sum = float(iou[matched].sum())
    fp = len(pa) - tp
    fn = len(ga) - tp
    # AJI
    c = u = 0
    used = np.zeros(len(pa), bool)
    if len(ga):
        if len(pa):
            best = iou.argmax(axis=1)
            has = iou[np.arange(len(ga)), best] > 0
        else:
            best = np.zeros(len(ga), np.int64)
            has = np.zeros(len(ga), bool)
        rows = np.nonzero(has)[0]
        c = int(i[rows, best[rows]].sum())
        u = int(union[rows, best[rows]].sum()) + int(ga[~has].sum())
        used[best[rows]] = True
    u += int(pa[~used].sum())
    inter_fg = int(inter[1:, 1:].sum())
    sum_fg = int(ga.sum() + pa.sum())
    return InstanceStats(tp, fp, fn, iou_sum, c, u, inter_fg, sum_fg)


def pool(stats: Iterable[InstanceStats]) -> InstanceStats:
    """Dataset-level statistics from summed counts (pooled PQ, aggregated AJI, global Dice)."""
    s = list(stats)
    return InstanceStats(
        sum(x.tp for x in s), sum(x.fp for x in s), sum(x.fn for x in s),
        float(sum(x.iou_sum for x in s)), sum(x.aji_c for x in s), sum(x.aji_u for x in s),
        sum(x.inter_fg for x in s), sum(x.sum_fg for x in s),
    )


def mean_summary(stats: Iterable[InstanceStats]) -> dict[str, float]:
    """Mean over images of every per-image metric (NaNs skipped), as HoVer-Net reports Kumar."""
    rows = [x.summary() for x in stats]
    if not rows:
        return {}
    out = {}
    for k in rows[0]:
        vals = [r[k] for r in rows if not (isinstance(r[k], float) and math.isnan(r[k]))]
        out[k] = float(np.mean(vals)) if vals else math.nan
    return out


def confusion(gt_sem: np.ndarray, pred_sem: np.ndarray, num_classes: int) -> np.ndarray:
    """(C, C) int64 confusion matrix, rows = GT class, cols = predicted class."""
    if gt_sem.shape != pred_sem.shape:
        raise ValueError(f"shape mismatch: gt {gt_sem.shape} vs pred {pred_sem.shape}")
    g = np.asarray(gt_sem, np.int64).ravel()
    p = np.asarray(pred_sem, np.int64).ravel()
    if g.size and (g.max() >= num_classes or p.max() >= num_classes or min(g.min(), p.min()) < 0):
        raise ValueError("class index out of range")
    return np.bincount(g * num_classes + p, minlength=num_classes**2).reshape(num_classes, num_classes)


def iou_per_class(conf: np.ndarray) -> np.ndarray:
    """IoU of every class (NaN where the class is in neither GT nor prediction)."""
    tp = np.diag(conf).astype(np.float64)
    denom = conf.sum(0) + conf.sum(1) - tp
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(denom > 0, tp / denom, np.nan)


def miou(conf: np.ndarray) -> float:
    v = iou_per_class(conf)
    return float(np.nanmean(v)) if np.any(~np.isnan(v)) else math.nan
