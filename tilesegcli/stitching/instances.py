"""Exactly-once instance stitching: per-tile instance label images -> one global object stream.

Tiles arrive in row-major order (missing tiles, e.g. background skipped by a tissue mask, are
simply absent). For each instance a tile reports, from its bounding box alone:

* **cut**: it touches a side of the tile's read window that lies inside the image, so the tile did
  not see it whole.
* **interior**: not cut and its bbox lies inside the tile's core. Cores partition the image, so no
  other tile's core holds any of its pixels: it is emitted at once ("owned", ``merged=False``).
* **seam view**: its bbox meets the core but is not interior. It goes to a small pool together with
  its full polygon and its core crop (polygon ∩ core).
* anything else (bbox outside the core) is dropped: the tile whose core holds it reports it.

Seam views of neighbouring tiles are matched by geometry: two views are the same object when
their polygons overlap by at least ``match_iomin`` of the smaller one *inside the region both
tiles saw* (intersection of the read windows); with zero overlap, two cut views sharing a border
edge match. Matches are joined with a union-find. When no later tile can reach a group (its bbox
ends above the next tile row's window) it is resolved:

* some view is uncut -> a tile saw the object whole: emit that view (prefer the tile whose core
  holds the bbox centre, then the largest core share). ``merged=False``.
* every view is cut (object larger than the overlap) -> emit the union of the core crops. Core
  crops partition the object, so the union is exact and seam-free. ``merged=True``.
  Class = class with the largest summed core-crop area; score = core-crop-area-weighted mean.
* a lone uncut view whose bbox centre is in another tile's core is a duplicate (that tile owns it).
* interior objects within a few px of an inner core edge are also pooled as *ghosts* (already
  emitted); a group holding a ghost is dropped, which absorbs copies a neighbour reports when its
  prediction differs by a pixel or two (real models; the oracle never needs it).

Memory holds only pending seam views of about one tile row, never the finished objects.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from tilesegcli.stitching.overlaps import OverlapResolver
from tilesegcli.stitching.types import StitchedObject, StitchStats
from tilesegcli.stitching.unionfind import UnionFind
from tilesegcli.vectorize import labels_to_geometries, make_valid_polygonal

if TYPE_CHECKING:
    from shapely.geometry.base import BaseGeometry

    from tilesegcli.segmenter import TileResult
    from tilesegcli.specs import GridSpec, TileSpec


@dataclass
class _View:
    uid: int
    tile: int
    row: int
    col: int
    geom: BaseGeometry  # what the tile saw, clipped to the image (working px)
    crop: BaseGeometry  # geom ∩ core(tile)
    window: tuple[int, int, int, int]  # read window clipped to the image (x0, y0, x1, y1)
    ymax: int  # bbox bottom (exclusive)
    cut: bool
    anchored: bool  # bbox centre lies in this tile's core
    class_id: int
    score: float
    ghost: bool = False  # already emitted as interior; kept only to absorb other tiles' copies


def _window(grid: GridSpec, spec: TileSpec) -> tuple[int, int, int, int]:
    return (spec.x, spec.y, min(spec.x + spec.w, grid.width), min(spec.y + spec.h, grid.height))


class _SeamPool:
    """Pending seam views, matched across neighbouring tiles with a union-find."""

    def __init__(self, grid: GridSpec, match_iomin: float) -> None:
        self.grid = grid
        self.iomin = match_iomin
        self.reach = max(1, math.ceil(grid.tile_px / grid.stride_px) - 1)
        self.views: dict[int, _View] = {}
        self.by_tile: dict[int, list[int]] = {}
        self.sets = UnionFind()

    def add(self, spec: TileSpec, views: list[_View]) -> None:
        if not views:
            return
        import shapely

        old: list[_View] = []
        for dr in range(-self.reach, 1):
            for dc in range(-self.reach, self.reach + 1):
                r, c = spec.row + dr, spec.col + dc
                if (dr == 0 and dc >= 0) or not (0 <= c < self.grid.cols) or r < 0:
                    continue
                old.extend(self.views[u] for u in self.by_tile.get(r * self.grid.cols + c, ()))
        for v in views:
            self.views[v.uid] = v
            self.sets.add(v.uid)
            self.by_tile.setdefault(v.tile, []).append(v.uid)
        if not old:
            return
        tree = shapely.STRtree([v.geom for v in old])
        qi, ti = tree.query([v.geom for v in views], predicate="intersects")
        if len(qi) == 0:
            return
        a = np.array([views[i].geom for i in qi], dtype=object)
        b = np.array([old[j].geom for j in ti], dtype=object)
        inter = shapely.intersection(a, b)
        inter_area = shapely.area(inter)
        wa = np.array([views[i].window for i in qi])
        wb = np.array([old[j].window for j in ti])
        sx0, sy0 = np.maximum(wa[:, 0], wb[:, 0]), np.maximum(wa[:, 1], wb[:, 1])
        sx1, sy1 = np.minimum(wa[:, 2], wb[:, 2]), np.minimum(wa[:, 3], wb[:, 3])
        shared = (sx1 > sx0) & (sy1 > sy0)
        rect = shapely.box(sx0, sy0, np.maximum(sx1, sx0), np.maximum(sy1, sy0))
        area_a = shapely.area(shapely.intersection(a, rect))
        area_b = shapely.area(shapely.intersection(b, rect))
        smaller = np.minimum(area_a, area_b)
        with np.errstate(divide="ignore", invalid="ignore"):
            overlap_ok = shared & (smaller > 0) & (inter_area >= self.iomin * smaller)
        # zero-overlap grids: two cut views that share a stretch of the seam are one object
        cut_pair = np.array([views[i].cut and old[j].cut for i, j in zip(qi, ti, strict=True)], dtype=bool)
        edge_ok = ~shared & cut_pair & (shapely.length(inter) > 0)
        for k in np.nonzero(overlap_ok | edge_ok)[0]:
            self.sets.union(views[qi[k]].uid, old[ti[k]].uid)

    def pop_groups(self, y_limit: float | None) -> list[list[_View]]:
        """Remove and return groups whose every view ends above ``y_limit`` (all when None)."""
        groups = [[self.views[u] for u in g] for g in self.sets.groups().values()]
        done = [g for g in groups if y_limit is None or max(v.ymax for v in g) < y_limit]
        for g in done:
            self.sets.remove(v.uid for v in g)
            for v in g:
                del self.views[v.uid]
                lst = self.by_tile[v.tile]
                lst.remove(v.uid)
                if not lst:
                    del self.by_tile[v.tile]
        return done


def _resolve(group: list[_View], stats: StitchStats) -> StitchedObject | None:
    import shapely

    ghosts = sum(v.ghost for v in group)
    if ghosts:  # emitted already by the tile that had it inside its core
        stats.duplicate_views += len(group) - ghosts
        return None
    whole = [v for v in group if not v.cut]
    if len(group) == 1 and whole and not whole[0].anchored:
        stats.duplicate_views += 1
        return None
    if whole:
        best = max(whole, key=lambda v: (v.anchored, v.crop.area, -v.tile))
        stats.duplicate_views += len(group) - 1
        stats.seam_groups += 1
        return StitchedObject(best.geom, best.class_id, best.score, "detection", merged=False)
    parts = [v for v in group if not v.crop.is_empty]
    if not parts:
        stats.duplicate_views += len(group)
        return None
    areas = np.array([v.crop.area for v in parts])
    geom = shapely.union_all([v.crop for v in parts])
    geom = make_valid_polygonal(shapely.simplify(geom, 0.0))  # drop collinear seam vertices
    votes: dict[int, float] = {}
    for v, a in zip(parts, areas, strict=True):
        votes[v.class_id] = votes.get(v.class_id, 0.0) + float(a)
    cls = max(votes.items(), key=lambda kv: (kv[1], -kv[0]))[0]
    score = float(np.dot(areas, [v.score for v in parts]) / max(areas.sum(), 1e-12))
    stats.seam_groups += 1
    return StitchedObject(geom, cls, score, "detection", merged=True)


def _tile_objects(
    grid: GridSpec, spec: TileSpec, res: TileResult, next_uid: int
) -> tuple[list[StitchedObject], list[_View]]:
    """Split one tile's instances into emitted-now objects and seam views."""
    import shapely
    from scipy import ndimage

    lab = res.labels
    if lab is None:
        return [], []
    x0, y0, x1, y1 = _window(grid, spec)
    vw, vh = x1 - x0, y1 - y0
    if vw <= 0 or vh <= 0:
        return [], []
    lab = np.asarray(lab)[:vh, :vw]
    if not lab.any():
        return [], []
    slices = ndimage.find_objects(lab)
    ids = np.array([i + 1 for i, s in enumerate(slices) if s is not None], dtype=np.int64)
    bb = np.array(
        [(s[1].start, s[0].start, s[1].stop, s[0].stop) for s in slices if s is not None],
        dtype=np.int64,
    ).reshape(-1, 4)
    bx0, by0, bx1, by1 = bb.T
    cut = (
        ((bx0 == 0) & (spec.x > 0))
        | ((by0 == 0) & (spec.y > 0))
        | ((bx1 == vw) & (spec.x + spec.w < grid.width))
        | ((by1 == vh) & (spec.y + spec.h < grid.height))
    )
    cx0, cy0, cx1, cy1 = spec.core
    lx0, ly0, lx1, ly1 = cx0 - x0, cy0 - y0, cx1 - x0, cy1 - y0
    inside = (bx0 >= lx0) & (bx1 <= lx1) & (by0 >= ly0) & (by1 <= ly1)
    touches = (bx0 < lx1) & (bx1 > lx0) & (by0 < ly1) & (by1 > ly0)
    interior = inside & ~cut
    seam = touches & ~interior
    # interior objects close to an inner core edge are also remembered as "ghosts": a neighbour
    # whose prediction differs by a pixel or two may report them as seam views; the ghost
    # absorbs those copies instead of letting them come out a second time
    m = max(3, min(grid.overlap_px // 4, 16))
    near = (
        ((bx0 - lx0 < m) & (cx0 > 0))
        | ((by0 - ly0 < m) & (cy0 > 0))
        | ((lx1 - bx1 < m) & (cx1 < grid.width))
        | ((ly1 - by1 < m) & (cy1 < grid.height))
    )
    ghost = interior & near
    keep = interior | seam
    if not keep.any():
        return [], []
    lut = np.zeros(int(lab.max()) + 1, dtype=bool)
    lut[ids[keep]] = True
    geoms = labels_to_geometries(lab, offset=(x0, y0), mask=lut[lab])
    n = res.num_instances
    classes = res.instance_classes
    scores = res.instance_scores

    def cls_score(k: int) -> tuple[int, float]:
        c = int(classes[k - 1]) if classes is not None and k - 1 < len(classes) else 1
        s = float(scores[k - 1]) if scores is not None and k - 1 < n else 1.0
        return c, s

    done: list[StitchedObject] = []
    views: list[_View] = []
    for i in np.nonzero(keep)[0]:
        k = int(ids[i])
        g = geoms.get(k)
        if g is None or g.is_empty:
            continue
        c, s = cls_score(k)
        if interior[i]:
            done.append(StitchedObject(g, c, s, "detection", merged=False))
            if not ghost[i]:
                continue
        ax = x0 + (int(bx0[i]) + int(bx1[i]) - 1) // 2
        ay = y0 + (int(by0[i]) + int(by1[i]) - 1) // 2
        views.append(
            _View(
                uid=next_uid + len(views),
                tile=spec.index,
                row=spec.row,
                col=spec.col,
                geom=g,
                crop=g if interior[i] else shapely.clip_by_rect(g, cx0, cy0, cx1, cy1),
                window=(x0, y0, x1, y1),
                ymax=int(y0 + by1[i]),
                cut=bool(cut[i]),
                anchored=cx0 <= ax < cx1 and cy0 <= ay < cy1,
                class_id=c,
                score=s,
                ghost=bool(ghost[i]),
            )
        )
    return done, views


class InstanceStitcher:
    """Push-style exactly-once stitching: ``add(spec, result)`` per tile in row-major order
    returns the objects no later tile can change; ``finish()`` returns the rest.

    The last stage (:class:`~tilesegcli.stitching.overlaps.OverlapResolver`) makes every object
    one clean polygon of at least ``min_area_px`` and removes overlaps between detections."""

    def __init__(self, grid: GridSpec, *, min_area_px: float = 0,
                 stats: StitchStats | None = None, match_iomin: float = 0.5) -> None:
        self.grid = grid
        self.stats = stats if stats is not None else StitchStats()
        self._pool = _SeamPool(grid, match_iomin)
        self._held = OverlapResolver(min_area_px, grid.stride_px, self.stats)
        self._row = self._last_index = -1
        self._uid = 0

    def _count(self, objs: Iterable[StitchedObject]) -> list[StitchedObject]:
        out = list(objs)
        for obj in out:
            self.stats.objects += 1
            if obj.merged:
                self.stats.merged += 1
            else:
                self.stats.owned += 1
        return out

    def _resolve_groups(self, y_limit: float | None) -> None:
        for g in self._pool.pop_groups(y_limit):
            obj = _resolve(g, self.stats)
            if obj is not None:
                self._held.add(obj)

    def add(self, spec: TileSpec, res: TileResult) -> list[StitchedObject]:
        if spec.index <= self._last_index:
            raise ValueError(f"tiles must come in row-major order (tile {spec.index} after "
                             f"{self._last_index})")
        self._last_index = spec.index
        released: list[StitchedObject] = []
        pool = self._pool
        if spec.row != self._row:
            self._row = spec.row
            self._resolve_groups(spec.row * self.grid.stride_px)
            # nothing emitted from now on reaches above this row's windows or a pending view's
            bound = min([spec.y, *(v.window[1] for v in pool.views.values())])
            released = self._count(self._held.release(bound))
        self.stats.tiles += 1
        done, views = _tile_objects(self.grid, spec, res, self._uid)
        self._uid += len(views)
        for obj in done:
            self._held.add(obj)
        pool.add(spec, views)
        self.stats.pending_peak = max(self.stats.pending_peak, len(pool.views))
        return released

    def finish(self) -> list[StitchedObject]:
        self._resolve_groups(None)
        return self._count(self._held.finish())


def stitch_instances(
    grid: GridSpec,
    tiles: Iterable[tuple[TileSpec, TileResult]],
    *,
    min_area_px: float = 0,
    stats: StitchStats | None = None,
    match_iomin: float = 0.5,
) -> Iterator[StitchedObject]:
    """Every instance exactly once (geometry in working px), ``tiles`` in row-major order: the
    generator form of :class:`InstanceStitcher`."""
    stitcher = InstanceStitcher(grid, min_area_px=min_area_px, stats=stats,
                                match_iomin=match_iomin)
    for spec, res in tiles:
        yield from stitcher.add(spec, res)
    yield from stitcher.finish()
