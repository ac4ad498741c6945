"""The last instance stage: specks, objects below min_area and overlapping detections."""

from __future__ import annotations

import numpy as np
import shapely

from tilesegcli.segmenter import ClassInfo
from tilesegcli.stitching import StitchStats, stitch_instances
from tilesegcli.stitching.overlaps import OverlapResolver, clean_polygon
from tilesegcli.stitching.types import StitchedObject
from tilesegcli.testing.oracle import OracleSegmenter
from tilesegcli.tiling import iter_tiles, make_grid

CLASSES = [ClassInfo("background", (0, 0, 0)), ClassInfo("nucleus", (200, 0, 0))]


def _obj(geom, score: float = 0.9) -> StitchedObject:
    return StitchedObject(geom, 1, score)


def _resolve(objs: list[StitchedObject], min_area: float = 0.0) -> tuple[list, StitchStats]:
    st = StitchStats()
    r = OverlapResolver(min_area, 32, st)
    for o in objs:
        r.add(o)
    return list(r.finish()), st


def test_clean_polygon_drops_slivers_and_small_parts() -> None:
    body, speck = shapely.box(0, 0, 10, 10), shapely.box(20, 0, 20.5, 0.6)
    assert clean_polygon(shapely.MultiPolygon([body, speck]), 0).equals(body)
    pair = shapely.MultiPolygon([body, shapely.box(30, 0, 31, 1)])  # a real 1-px part stays
    assert clean_polygon(pair, 0).equals(pair)
    assert clean_polygon(pair, 50).equals(body)
    assert clean_polygon(shapely.box(0, 0, 5, 5), 30) is None


def test_twice_counted_object_kept_once_larger_wins() -> None:
    whole, part = shapely.box(0, 0, 12, 12), shapely.box(0, 0, 12, 7)
    out, st = _resolve([_obj(part, 0.99), _obj(whole, 0.5)])
    assert len(out) == 1 and out[0].geometry.equals(whole)
    out, _ = _resolve([_obj(whole, 0.5), _obj(part, 0.99)])
    assert len(out) == 1 and out[0].geometry.equals(whole)
    assert st.extra["duplicates_removed"] == 1


def test_partial_overlap_goes_to_higher_score() -> None:
    a, b = shapely.box(0, 0, 10, 10), shapely.box(8, 0, 18, 10)  # overlap: 20% of either
    out, st = _resolve([_obj(a, 0.6), _obj(b, 0.9)])
    got = {o.score: o.geometry for o in out}
    assert got[0.9].equals(b) and got[0.6].equals(shapely.box(0, 0, 8, 10))
    assert st.extra["overlaps_trimmed"] == 1
    # trimmed below min_area: dropped
    out, st = _resolve([_obj(a, 0.6), _obj(shapely.box(1, 0, 11, 10), 0.9)], min_area=0)
    assert len(out) == 1  # 90% overlap: the same object


def test_release_holds_objects_below_the_line() -> None:
    st = StitchStats()
    r = OverlapResolver(0, 16, st)
    r.add(_obj(shapely.box(0, 0, 10, 10)))
    r.add(_obj(shapely.box(0, 20, 10, 30)))
    assert [o.geometry.bounds[3] for o in r.release(15)] == [10]
    assert [o.geometry.bounds[3] for o in r.finish()] == [30]


class ShiftingOracle(OracleSegmenter):
    """A model that disagrees with itself across seams: each tile sees every object moved by up
    to 3 px (the same for the whole tile), so two tiles' views of a seam object overlap only in
    part, and adds a 2-px speck beside some objects."""

    def _one(self, spec):
        res = super()._one(spec)
        lab = res.labels
        dy, dx = (spec.row * 7 + spec.col * 3) % 7 - 3, (spec.row * 3 + spec.col * 5) % 7 - 3
        out = np.zeros_like(lab)
        ys, xs = np.nonzero(lab)
        ty, tx = np.clip(ys + dy, 0, lab.shape[0] - 1), np.clip(xs + dx, 0, lab.shape[1] - 1)
        out[ty, tx] = lab[ys, xs]
        for k in range(1, res.num_instances + 1, 3):
            yy, xx = np.nonzero(out == k)
            if len(yy):
                y, x = yy.min(), xx.max() + 2
                if x + 1 < out.shape[1] and not out[y, x:x + 2].any():
                    out[y, x:x + 2] = k  # a disconnected speck of the same instance
        res.labels = out
        return res


def test_disagreeing_tiles_leave_no_specks_small_objects_or_overlaps() -> None:
    rng = np.random.default_rng(5)
    gt = np.zeros((400, 500), np.int32)
    n = 0
    yy, xx = np.mgrid[0:400, 0:500]
    for _ in range(600):
        cy, cx, r = rng.uniform(10, 390), rng.uniform(10, 490), rng.uniform(5, 9)
        disc = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
        if not gt[np.pad(disc, 0)].any() and not gt[max(0, int(cy - r - 3)):int(cy + r + 4),
                                                     max(0, int(cx - r - 3)):int(cx + r + 4)].any():
            n += 1
            gt[disc] = n
    assert n > 150
    grid = make_grid(500, 400, 96, 24)
    seg = ShiftingOracle(gt, None, CLASSES, 96, 24)
    st = StitchStats()
    min_area = 40.0
    objs = list(stitch_instances(grid, ((s, seg.predict_tiles([s])[0]) for s in iter_tiles(grid)),
                                 stats=st, min_area_px=min_area))
    geoms = np.array([o.geometry for o in objs], dtype=object)
    assert all(g.geom_type == "Polygon" for g in geoms)
    assert shapely.area(geoms).min() >= min_area
    a, b = shapely.STRtree(geoms).query(geoms, predicate="intersects")
    keep = a < b
    inter = shapely.area(shapely.intersection(geoms[a[keep]], geoms[b[keep]]))
    assert (inter < 1e-6).all(), f"{int((inter >= 1e-6).sum())} overlapping pairs"
    assert st.extra.get("overlaps_trimmed", 0) + st.extra.get("duplicates_removed", 0) > 0
    assert 0.9 * n <= len(objs) <= n  # shifted copies are not new nuclei
