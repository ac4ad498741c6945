"""Seam audit counters and the one-to-one object matcher."""

from __future__ import annotations

import shapely

from tilesegcli.eval.audit import audit_instances, match_instances


def test_audit_counts_small_multi_and_overlapping() -> None:
    a, b = shapely.box(0, 0, 10, 10), shapely.box(8, 0, 18, 10)
    speck = shapely.MultiPolygon([shapely.box(30, 0, 40, 10), shapely.box(41, 0, 41.5, 0.5)])
    got = audit_instances([a, b, speck, shapely.box(50, 0, 52, 2)], min_area=10)
    assert got["objects"] == 4 and got["below_min_area"] == 1 and got["multipolygons"] == 1
    assert got["multipolygon_specks"] == 1
    assert got["overlapping_pairs"] == 1 and abs(got["max_overlap_fraction"] - 0.2) < 1e-9
    assert audit_instances([], 1)["objects"] == 0


def test_match_instances_one_to_one() -> None:
    ga = [shapely.box(0, 0, 10, 10), shapely.box(20, 0, 30, 10), shapely.box(40, 0, 50, 10)]
    gb = [shapely.box(1, 0, 11, 10), shapely.box(20, 0, 30, 10), shapely.box(45, 0, 60, 10)]
    m = match_instances(ga, gb)
    assert m["matched"] == 2 and abs(m["matched_fraction"] - 2 / 3) < 1e-9
    assert abs(m["mean_iou_matched"] - (90 / 110 + 1) / 2) < 1e-9
