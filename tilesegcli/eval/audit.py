"""What a seam can leave in an instance output, counted: objects below a minimum area,
MultiPolygons, and pairs of objects that overlap. Used by tests and ``benchmarks/seam_check.py``
on the polygons ``tileseg predict`` writes (any one coordinate frame)."""

from __future__ import annotations

from typing import Any

import numpy as np


def audit_instances(geoms: list[Any], min_area: float, overlap_tol: float = 1.0) -> dict[str, Any]:
    """Counts for shapely polygons ``geoms``: ``below_min_area`` (area < ``min_area``),
    ``multipolygons`` and ``multipolygon_specks`` (those with a part below ``min_area``),
    ``overlapping_pairs`` (intersection > ``overlap_tol``, area units of the
    geometries) and the largest overlap as a fraction of the smaller object."""
    import shapely

    arr = np.array(geoms, dtype=object)
    if not len(arr):
        return {"objects": 0, "below_min_area": 0, "multipolygons": 0, "multipolygon_specks": 0,
                "overlapping_pairs": 0,
                "max_overlap_fraction": 0.0, "smallest_area": 0.0}
    areas = shapely.area(arr)
    a, b = shapely.STRtree(arr).query(arr, predicate="intersects")
    a, b = a[a < b], b[a < b]
    inter = shapely.area(shapely.intersection(arr[a], arr[b]))
    big = inter > overlap_tol
    frac = inter[big] / np.minimum(areas[a[big]], areas[b[big]])
    return {"objects": len(arr), "below_min_area": int((areas < min_area).sum()),
            "multipolygons": int(sum(g.geom_type == "MultiPolygon" for g in arr)),
            "multipolygon_specks": int(sum(g.geom_type == "MultiPolygon"
                                           and min(p.area for p in g.geoms) < min_area
                                           for g in arr)),
            "overlapping_pairs": int(big.sum()),
            "max_overlap_fraction": float(frac.max()) if len(frac) else 0.0,
            "smallest_area": float(areas.min())}


def match_instances(ga: list[Any], gb: list[Any], iou: float = 0.5) -> dict[str, float]:
    """One-to-one matching of two object lists (IoU > ``iou``, ``linear_sum_assignment``):
    matched count, matched fraction of the longer list, mean IoU of the matches."""
    import shapely
    from scipy.optimize import linear_sum_assignment

    a, b = np.array(ga, dtype=object), np.array(gb, dtype=object)
    m = np.zeros((len(a), len(b)))
    if len(a) and len(b):
        qi, ti = shapely.STRtree(b).query(a, predicate="intersects")
        inter = shapely.area(shapely.intersection(a[qi], b[ti]))
        m[qi, ti] = inter / np.maximum(shapely.area(shapely.union(a[qi], b[ti])), 1e-12)
    r, c = linear_sum_assignment(-m)
    ok = m[r, c] > iou
    return {"objects_a": len(a), "objects_b": len(b), "matched": int(ok.sum()),
            "matched_fraction": float(ok.sum() / max(len(a), len(b), 1)),
            "mean_iou_matched": float(m[r, c][ok].mean()) if ok.any() else 0.0}
