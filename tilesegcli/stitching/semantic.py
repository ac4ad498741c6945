"""Semantic stitching: per-tile class probabilities -> per-class polygons with holes, seam-free.

Choice: **core crops**. Every tile contributes the argmax of its probabilities over its core only;
cores partition the image and sit in the middle of the overlaps, where both neighbours have
context, so the class map is assembled without any averaging state (blending would need a float
canvas of C channels over the overlaps; with core crops one uint8/uint16 band suffices).

Memory is bounded by one **row band** (the cores of one tile row: width x stride px) plus the
regions still open across the band's bottom edge:

1. A tile row's core crops are written into the band (missing tiles stay background, class 0).
2. The band is labelled per class (4-connected, ``scipy.ndimage.label``), traced to pixel-edge
   polygons (``vectorize.labels_to_geometries``) and the per-region probability sums taken.
3. Regions in the band's first row are joined to the open regions of the previous band that sit
   directly above with the same class (a union-find); pieces are unioned with shapely, so the seam
   line vanishes (collinear seam vertices are removed by ``simplify(0)``).
4. A region not touching the band's last row is finished and emitted at once.

The emitted polygons equal vectorizing the untiled class map (tests check area and symmetric
difference). Score = mean winning probability over the region's pixels.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from tilesegcli.stitching.types import StitchedObject, StitchStats
from tilesegcli.vectorize import labels_to_geometries, make_valid_polygonal

if TYPE_CHECKING:
    from shapely.geometry.base import BaseGeometry

    from tilesegcli.segmenter import ClassInfo, TileResult
    from tilesegcli.specs import GridSpec, TileSpec


@dataclass
class _Region:
    class_id: int
    pieces: list[BaseGeometry] = field(default_factory=list)
    psum: float = 0.0
    count: int = 0
    bands: int = 1


class _BandMerger:
    def __init__(self, grid: GridSpec, stats: StitchStats, min_area_px: float, simplify_px: float):
        self.grid = grid
        self.stats = stats
        self.min_area_px = min_area_px
        self.simplify_px = simplify_px
        self.open: dict[int, _Region] = {}
        self.prev_ids: np.ndarray | None = None  # region id per column of the previous band's last row
        self.prev_cls: np.ndarray | None = None
        self.prev_end = -1
        self.next_id = 1

    def _finish(self, reg: _Region) -> StitchedObject | None:
        import shapely

        if self.min_area_px and reg.count < self.min_area_px:
            self.stats.small_dropped += 1
            return None
        geom = reg.pieces[0] if len(reg.pieces) == 1 else shapely.union_all(reg.pieces)
        geom = shapely.simplify(geom, 0.0)
        if self.simplify_px:
            geom = shapely.simplify(geom, self.simplify_px, preserve_topology=True)
        geom = make_valid_polygonal(geom)
        if geom.is_empty:
            return None
        self.stats.objects += 1
        self.stats.regions += 1
        if reg.bands > 1:
            self.stats.merged += 1
        score = reg.psum / max(reg.count, 1)
        return StitchedObject(geom, reg.class_id, float(score), "annotation", merged=reg.bands > 1)

    def flush_all(self) -> Iterator[StitchedObject]:
        regs = list(self.open.values())
        self.open.clear()
        self.prev_ids = self.prev_cls = None
        for reg in regs:
            obj = self._finish(reg)
            if obj is not None:
                yield obj

    def band(self, y0: int, cls: np.ndarray, prob: np.ndarray) -> Iterator[StitchedObject]:
        """Process one band (rows y0 .. y0+len(cls)) and yield the regions it finishes."""
        from scipy import ndimage

        if self.prev_end != y0:
            yield from self.flush_all()
        comp = np.zeros(cls.shape, dtype=np.int32)
        comp_cls: list[int] = [0]
        n_total = 0
        for c in np.unique(cls):
            if c == 0:
                continue
            lab, n = ndimage.label(cls == c)
            sel = lab > 0
            comp[sel] = lab[sel] + n_total
            comp_cls.extend([int(c)] * n)
            n_total += n
        self.prev_end = y0 + cls.shape[0]
        if n_total == 0:
            yield from self.flush_all()
            return
        counts = np.bincount(comp.ravel(), minlength=n_total + 1)
        sums = np.bincount(comp.ravel(), weights=prob.ravel().astype(np.float64), minlength=n_total + 1)
        geoms = labels_to_geometries(comp, offset=(0, y0))
        base = self.next_id - 1
        self.next_id += n_total
        new: dict[int, _Region] = {}
        for k, g in geoms.items():
            new[base + k] = _Region(comp_cls[k], [g], float(sums[k]) / 255.0, int(counts[k]))
        # join with the open regions right above (same class, 4-adjacent across the band edge)
        parent = {rid: rid for rid in (*self.open, *new)}

        def find(u: int) -> int:
            while parent[u] != u:
                parent[u] = parent[parent[u]]
                u = parent[u]
            return u

        if self.prev_ids is not None:
            top = comp[0]
            link = (self.prev_ids > 0) & (top > 0) & (self.prev_cls == cls[0])
            if link.any():
                pairs = np.unique(np.stack([self.prev_ids[link], top[link].astype(np.int64) + base]), axis=1)
                for a, b in pairs.T:
                    ra, rb = find(int(a)), find(int(b))
                    if ra != rb:
                        parent[max(ra, rb)] = min(ra, rb)
        bottom_open = self.prev_end < self.grid.height
        last = comp[-1].astype(np.int64)
        touching = set((np.unique(last[last > 0]) + base).tolist()) if bottom_open else set()
        groups: dict[int, list[int]] = {}
        for rid in parent:
            groups.setdefault(find(rid), []).append(rid)
        everything = {**self.open, **new}
        self.open = {}
        for root, members in groups.items():
            regs = [everything[m] for m in members]
            if len(regs) == 1:
                merged = regs[0]
            else:
                merged = _Region(
                    regs[0].class_id,
                    [p for r in regs for p in r.pieces],
                    sum(r.psum for r in regs),
                    sum(r.count for r in regs),
                    bands=max(r.bands for r in regs) + 1,
                )
            if any(m in touching for m in members):
                if len(merged.pieces) > 1:  # keep open regions compact: one geometry each
                    import shapely

                    merged.pieces = [shapely.union_all(merged.pieces)]
                self.open[root] = merged
            else:
                obj = self._finish(merged)
                if obj is not None:
                    yield obj
        if bottom_open:
            ids = np.where(last > 0, last + base, 0)
            self.prev_ids = np.array([find(int(v)) if v else 0 for v in ids], dtype=np.int64) \
                if len(ids) < 4096 else _map_roots(ids, find)
            self.prev_cls = cls[-1].copy()
        self.stats.pending_peak = max(self.stats.pending_peak, len(self.open))


def _map_roots(ids: np.ndarray, find: object) -> np.ndarray:
    uniq, inv = np.unique(ids, return_inverse=True)
    roots = np.array([find(int(v)) if v else 0 for v in uniq], dtype=np.int64)  # type: ignore[operator]
    return roots[inv]


def stitch_semantic(
    grid: GridSpec,
    tiles: Iterable[tuple[TileSpec, TileResult]],
    *,
    classes: Sequence[ClassInfo],
    min_area_px: float = 0,
    simplify_px: float = 0,
    stats: StitchStats | None = None,
) -> Iterator[StitchedObject]:
    """Stream per-class region polygons (working px, kind "annotation"); tiles in row-major order."""
    st = stats if stats is not None else StitchStats()
    merger = _BandMerger(grid, st, min_area_px, simplify_px)
    dtype = np.uint8 if len(classes) <= 256 else np.uint16
    row, last_index = -1, -1
    band_y0 = 0
    cls_band: np.ndarray | None = None
    prob_band: np.ndarray | None = None
    for spec, res in tiles:
        if spec.index <= last_index:
            raise ValueError(f"tiles must come in row-major order (tile {spec.index} after {last_index})")
        last_index = spec.index
        if spec.row != row:
            if cls_band is not None and prob_band is not None:
                yield from merger.band(band_y0, cls_band, prob_band)
            row = spec.row
            band_y0, band_y1 = spec.core[1], spec.core[3]
            cls_band = np.zeros((band_y1 - band_y0, grid.width), dtype=dtype)
            prob_band = np.zeros((band_y1 - band_y0, grid.width), dtype=np.uint8)
        st.tiles += 1
        if res.semantic is None or cls_band is None or prob_band is None:
            continue
        cx0, cy0, cx1, cy1 = spec.core
        crop = np.asarray(res.semantic)[:, cy0 - spec.y : cy1 - spec.y, cx0 - spec.x : cx1 - spec.x]
        if crop.shape[0] != len(classes):
            raise ValueError(f"tile has {crop.shape[0]} semantic channels, expected {len(classes)}")
        cls_band[:, cx0:cx1] = np.argmax(crop, axis=0)
        prob_band[:, cx0:cx1] = np.clip(np.rint(crop.max(axis=0) * 255.0), 0, 255)
    if cls_band is not None and prob_band is not None:
        yield from merger.band(band_y0, cls_band, prob_band)
    yield from merger.flush_all()
