"""The error classes on a hand-built image (one case per class) and the outline offsets."""

from __future__ import annotations

import numpy as np

from tilesegcli.eval.breakdown import error_breakdown, move_outlines, offset_scores


def _square(a: np.ndarray, y: int, x: int, s: int, v: int) -> None:
    a[y:y + s, x:x + s] = v


def test_every_error_class_is_counted_once() -> None:
    gt = np.zeros((60, 80), np.int32)
    pred = np.zeros_like(gt)
    _square(gt, 0, 0, 10, 1)
    _square(pred, 0, 0, 10, 1)  # matched
    _square(gt, 0, 20, 10, 2)  # missed: nothing on it
    _square(gt, 0, 40, 10, 3)
    pred[0:10, 40:45], pred[0:10, 45:50] = 2, 3  # split in two halves: two fp_piece
    _square(gt, 20, 0, 10, 4)
    _square(gt, 20, 10, 10, 5)
    pred[22:28, 2:18] = 4  # one prediction holding 4 and 5: both merged, one fp_merge
    _square(gt, 20, 40, 12, 6)
    pred[20:32, 40:45] = 5  # 60 of 144 px, all inside: poor fit + fp_piece
    _square(pred, 45, 60, 8, 6)  # on background
    _square(gt, 40, 20, 10, 7)
    pred[44:54, 20:30] = 7  # IoU 60/140 and 40% outside: poor fit + fp_other
    b = error_breakdown(gt, pred)
    assert b == {"n_gt": 7, "n_pred": 7, "matched": 1, "missed": 1, "split": 1, "merged": 2,
                 "poor_fit": 2, "fp_background": 1, "fp_piece": 3, "fp_merge": 1, "fp_other": 1}
    gt_classes = ("matched", "missed", "split", "merged", "poor_fit")
    assert sum(b[k] for k in gt_classes) == b["n_gt"]
    assert sum(b[k] for k in b if k.startswith("fp_")) == b["n_pred"] - b["matched"]


def test_empty_sides() -> None:
    gt = np.zeros((8, 8), np.int32)
    gt[1:3, 1:3] = 1
    none = np.zeros_like(gt)
    assert error_breakdown(gt, none)["missed"] == 1
    assert error_breakdown(none, gt)["fp_background"] == 1


def test_offsets_find_how_far_outside_the_annotator_drew() -> None:
    """Annotations drawn 2 px outside the predicted outlines: growing the prediction by 2 px
    scores best, and shrinking it scores worse."""
    pred = np.zeros((64, 64), np.int32)
    _square(pred, 6, 6, 12, 1)
    _square(pred, 6, 30, 14, 2)
    _square(pred, 36, 10, 10, 3)
    gt = move_outlines(pred, 2)
    assert (gt > 0).sum() > (pred > 0).sum()
    s = offset_scores(gt, pred, (-1, 0, 1, 2, 3))
    assert max(s, key=lambda k: s[k]["pq"]) == 2 and s[2]["pq"] > 0.95
    assert s[-1]["sq"] < s[0]["sq"] < s[1]["sq"]
    shrunk = move_outlines(pred, -1)
    assert (shrunk == 1).sum() == 10 * 10 and (shrunk == 3).sum() == 8 * 8
