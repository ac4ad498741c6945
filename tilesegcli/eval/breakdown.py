"""Why an instance score is what it is: the errors of one image sorted into classes, and the
score's sensitivity to where the outlines are drawn.

:func:`error_breakdown` sorts every annotated nucleus the prediction does not match (IoU <= 0.5,
as PQ matches) and every unmatched prediction into one class each, so a diagnosis can say
"fragments" or "missed" instead of "low PQ". :func:`offset_scores` scores the prediction with
every outline moved out (or in) by k pixels: when one image's score rises with k and another's
falls, their annotators drew the boundary at different places, and no single model fits both.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from tilesegcli.eval.metrics import instance_stats, overlap_matrix

#: a nucleus less covered than this by predictions is missed; a prediction less inside
#: nuclei than this is on background
NOTHING = 0.2
#: a prediction this much inside one nucleus is a piece of it
INSIDE = 0.8
#: the share of its area a nucleus must give one prediction for that prediction to hold it
HOLDS = 0.3


def error_breakdown(gt: np.ndarray, pred: np.ndarray) -> dict[str, int]:
    """Counts for (H, W) label images. Annotated nuclei: ``matched`` (IoU > 0.5 with a
    prediction) or, unmatched, ``missed`` (under 20% covered), ``split`` (two or more
    predictions each at least 80% inside it), ``merged`` (the prediction overlapping it most
    also holds at least 30% of another nucleus) or ``poor_fit`` (the rest: one prediction of the
    wrong size or shape). Unmatched predictions: ``fp_background`` (under 20% inside nuclei),
    ``fp_piece`` (at least 80% inside one nucleus: a fragment or a mask too small),
    ``fp_merge`` (holding 30% or more of each of two or more nuclei) or ``fp_other``."""
    inter, ga, pa = overlap_matrix(gt, pred)
    i = inter[1:, 1:].astype(np.float64)
    ng, npred = len(ga), len(pa)
    out = dict.fromkeys(("n_gt", "n_pred", "matched", "missed", "split", "merged", "poor_fit",
                         "fp_background", "fp_piece", "fp_merge", "fp_other"), 0)
    out["n_gt"], out["n_pred"] = ng, npred
    if not ng or not npred:
        out["missed"], out["fp_background"] = ng, npred
        return out
    union = ga[:, None] + pa[None, :] - i
    iou = np.where(union > 0, i / np.maximum(union, 1), 0.0)
    gt_hit, pred_hit = (iou > 0.5).any(1), (iou > 0.5).any(0)
    in_gt = i / np.maximum(pa[None, :], 1)  # share of each prediction inside each nucleus
    held = i / np.maximum(ga[:, None], 1) >= HOLDS  # nucleus g gives prediction p >= 30%
    holds = held.sum(0)  # nuclei each prediction holds
    covered = i.sum(1) / np.maximum(ga, 1)
    pieces = (in_gt >= INSIDE).sum(1)
    top = i.argmax(1)
    out["matched"] = int(gt_hit.sum())
    miss = ~gt_hit & (covered < NOTHING)
    split = ~gt_hit & ~miss & (pieces >= 2)
    merged = ~gt_hit & ~miss & ~split & (holds[top] >= 2)
    out["missed"], out["split"], out["merged"] = int(miss.sum()), int(split.sum()), int(merged.sum())
    out["poor_fit"] = int((~gt_hit).sum()) - out["missed"] - out["split"] - out["merged"]
    fp = ~pred_hit
    bg = fp & (in_gt.sum(0) < NOTHING)
    piece = fp & ~bg & (in_gt.max(0) >= INSIDE)
    fmerge = fp & ~bg & ~piece & (holds >= 2)
    out["fp_background"], out["fp_piece"] = int(bg.sum()), int(piece.sum())
    out["fp_merge"] = int(fmerge.sum())
    out["fp_other"] = int(fp.sum()) - out["fp_background"] - out["fp_piece"] - out["fp_merge"]
    return out


def move_outlines(labels: np.ndarray, px: int) -> np.ndarray:
    """Every instance grown by ``px`` pixels (``px`` > 0; into free pixels only, neighbours
    meeting half-way) or shrunk by ``-px`` pixels (``px`` < 0)."""
    from skimage.segmentation import expand_labels, find_boundaries

    labels = np.asarray(labels)
    if px > 0:
        return expand_labels(labels, px)
    out = labels.copy()
    for _ in range(-px):
        out[find_boundaries(out, mode="inner")] = 0
    return out


def offset_scores(gt: np.ndarray, pred: np.ndarray, offsets: Iterable[int] = (-2, -1, 0, 1, 2, 3)
                  ) -> dict[int, dict[str, float]]:
    """PQ / SQ / AJI of ``pred`` with its outlines moved by each offset (px, :func:`move_outlines`)."""
    out = {}
    for k in offsets:
        s = instance_stats(gt, move_outlines(pred, k) if k else pred).summary()
        out[int(k)] = {m: float(s[m]) for m in ("pq", "sq", "aji")}
    return out
