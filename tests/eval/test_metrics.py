"""Metrics against small cases computed by hand (the arithmetic is in each test)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from tilesegcli.eval.metrics import confusion, instance_stats, iou_per_class, miou, pool


def _case1() -> tuple[np.ndarray, np.ndarray]:
    gt = np.zeros((4, 6), np.int32)
    gt[0:2, 0:2] = 1  # G1 area 4
    gt[0:2, 3:6] = 2  # G2 area 6
    gt[3, 0:2] = 3  # G3 area 2
    pred = np.zeros((4, 6), np.int32)
    pred[0:2, 0:3] = 7  # A area 6, overlaps G1 by 4 -> IoU 4/6
    pred[0:2, 4:6] = 9  # B area 4, overlaps G2 by 4 -> IoU 4/6
    pred[3, 4:6] = 2  # C area 2, touches nothing
    return gt, pred


def test_pq_aji_dice_hand_case() -> None:
    gt, pred = _case1()
    s = instance_stats(gt, pred)
    # matches: (G1, A) and (G2, B), IoU 2/3 each; C is FP, G3 is FN
    assert (s.tp, s.fp, s.fn) == (2, 1, 1)
    assert s.sq == pytest.approx(2 / 3)  # (2/3 + 2/3) / 2
    assert s.dq == pytest.approx(2 / 3)  # 2 / (2 + 0.5 + 0.5)
    assert s.pq == pytest.approx(4 / 9)
    assert s.f1 == pytest.approx(2 * 2 / (2 * 2 + 1 + 1))
    # AJI: G1->A: C 4, U 6; G2->B: C 4, U 6; G3 no overlap: U += 2; C unused: U += 2 -> 8/16
    assert (s.aji_c, s.aji_u) == (8, 16)
    assert s.aji == pytest.approx(0.5)
    # Dice: |P| = 12, |G| = 12, overlap 8 -> 16/24
    assert s.dice == pytest.approx(2 / 3)


def test_semantic_miou_hand_case() -> None:
    gt, pred = _case1()
    conf = confusion((gt > 0).astype(int), (pred > 0).astype(int), 2)
    # fg: overlap 8, union 12 + 12 - 8 = 16 -> 0.5; bg: 24 px, union of fg 16 -> bg overlap 8,
    # bg union 12 + 12 - 8 = 16 -> 0.5
    assert conf.tolist() == [[8, 4], [4, 8]]
    assert iou_per_class(conf).tolist() == pytest.approx([0.5, 0.5])
    assert miou(conf) == pytest.approx(0.5)


def test_merge_iou_exactly_half_is_no_match_and_aji_reuses_prediction() -> None:
    gt = np.array([[1, 1, 2, 2]])
    pred = np.array([[5, 5, 5, 5]])
    s = instance_stats(gt, pred)
    # IoU(G1, P) = 2/4 = 0.5 is NOT > 0.5 -> no TP; one FP, two FN; PQ 0
    assert (s.tp, s.fp, s.fn) == (0, 1, 2)
    assert s.pq == 0.0 and s.sq == 0.0
    # AJI (Kumar): both GTs pick P: C = 2 + 2, U = 4 + 4 -> 0.5 (P counted in U twice)
    assert s.aji == pytest.approx(0.5)


def test_perfect_and_empty() -> None:
    gt, _ = _case1()
    s = instance_stats(gt, gt * 3)  # ids differ, instances equal
    assert s.pq == 1.0 and s.aji == 1.0 and s.dice == 1.0 and s.f1 == 1.0
    e = instance_stats(np.zeros((3, 3), int), np.zeros((3, 3), int))
    assert math.isnan(e.pq) and math.isnan(e.aji) and math.isnan(e.dice)
    only_pred = instance_stats(np.zeros((2, 2), int), np.ones((2, 2), int))
    assert only_pred.pq == 0.0 and only_pred.aji == 0.0 and only_pred.fp == 1


def test_pool_sums_counts() -> None:
    gt, pred = _case1()
    a = instance_stats(gt, pred)
    b = instance_stats(gt, gt)
    p = pool([a, b])
    # TP 2 + 3, FP 1 + 0, FN 1 + 0; IoU sums 4/3 + 3
    assert (p.tp, p.fp, p.fn) == (5, 1, 1)
    assert p.pq == pytest.approx((4 / 3 + 3) / (5 + 0.5 + 0.5))
    assert p.aji == pytest.approx((8 + 12) / (16 + 12))


def test_shape_mismatch_raises() -> None:
    with pytest.raises(ValueError):
        instance_stats(np.zeros((2, 2), int), np.zeros((2, 3), int))
