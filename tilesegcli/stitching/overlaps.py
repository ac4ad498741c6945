"""Last stage of instance stitching: every emitted object a single clean polygon, no two overlapping.

The seam pool decides which tile reports an object; a real model still disagrees with itself
across a seam (a mask cut by the read window, flipped views that differ near an edge), which
leaves specks beside a nucleus, MultiPolygons with sub-pixel parts, and two detections of one
nucleus that overlap. :class:`OverlapResolver` takes the objects as the stitcher emits them and
holds each one until no later object can touch it:

* a MultiPolygon keeps its parts of at least ``min_area`` and one pixel (a sub-pixel part is a
  sliver of a clip or union, never something a label image holds);
* an object below ``min_area`` (working px²) is dropped;
* when two objects overlap, and the overlap is at least ``same_object`` of the smaller one, they
  are one object counted twice: the larger stays (ties: the higher score);
* a smaller overlap goes to the higher-scoring object and is cut out of the other, which is then
  cleaned again (largest part, ``min_area``).

Objects are released once the caller promises that nothing emitted later reaches above a line
(``release(y)``): the stitcher knows it from its tile row and the windows of its pending seam
views, so memory stays at about one tile row.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from typing import TYPE_CHECKING

from tilesegcli.vectorize import make_valid_polygonal

if TYPE_CHECKING:
    from shapely.geometry.base import BaseGeometry

    from tilesegcli.stitching.types import StitchedObject, StitchStats


#: parts below one pixel cannot come from a label image: slivers of a clip, union or difference
SLIVER = 1.0 - 1e-6


def clean_polygon(geom: BaseGeometry, min_area: float) -> BaseGeometry | None:
    """The object's parts worth keeping (see the module doc), or None when nothing is left."""
    import shapely

    geom = make_valid_polygonal(geom)
    if geom.is_empty:
        return None
    if geom.geom_type == "MultiPolygon":
        parts = list(geom.geoms)
        areas = [p.area for p in parts]
        floor = max(min_area, SLIVER)
        kept = [p for p, a in zip(parts, areas, strict=True) if a >= floor]
        if not kept:
            return None
        geom = kept[0] if len(kept) == 1 else shapely.MultiPolygon(kept)
    if geom.area < max(min_area, 1e-9):
        return None
    return geom


class OverlapResolver:
    """Push-style: ``add(obj)`` as objects come, ``release(y)`` / ``finish()`` yield them."""

    def __init__(self, min_area: float, cell: float, stats: StitchStats,
                 same_object: float = 0.5) -> None:
        self.min_area = float(min_area)
        self.cell = max(float(cell), 1.0)
        self.same_object = same_object
        self.stats = stats
        self.objs: dict[int, StitchedObject] = {}
        self.cells: dict[tuple[int, int], set[int]] = {}
        self.where: dict[int, list[tuple[int, int]]] = {}
        self.next_id = 0

    # -- spatial hash of the held objects
    def _cells_of(self, geom: BaseGeometry) -> list[tuple[int, int]]:
        x0, y0, x1, y1 = geom.bounds
        c = self.cell
        return [(i, j) for j in range(int(y0 // c), int(y1 // c) + 1)
                for i in range(int(x0 // c), int(x1 // c) + 1)]

    def _put(self, uid: int, obj: StitchedObject) -> None:
        self.objs[uid] = obj
        cells = self._cells_of(obj.geometry)
        self.where[uid] = cells
        for k in cells:
            self.cells.setdefault(k, set()).add(uid)

    def _drop(self, uid: int) -> StitchedObject:
        for k in self.where.pop(uid):
            s = self.cells[k]
            s.discard(uid)
            if not s:
                del self.cells[k]
        return self.objs.pop(uid)

    def _neighbours(self, geom: BaseGeometry) -> set[int]:
        out: set[int] = set()
        for k in self._cells_of(geom):
            out |= self.cells.get(k, set())
        return out

    # -- the rules
    def add(self, obj: StitchedObject) -> None:
        geom = clean_polygon(obj.geometry, self.min_area)
        if geom is None:
            self.stats.small_dropped += 1
            return
        if geom is not obj.geometry:
            self._count("specks_removed")
        new = replace(obj, geometry=geom)
        hits = []
        for uid in sorted(self._neighbours(geom)):
            old = self.objs[uid]
            if not old.geometry.intersects(geom):
                continue
            inter = old.geometry.intersection(geom).area
            if inter > 1e-9:
                hits.append((uid, inter >= self.same_object * min(old.geometry.area, geom.area)))
        twice = [uid for uid, same in hits if same]  # one object counted twice:
        if twice:  # the larger stays (ties: the higher score)
            self._count("duplicates_removed", len(twice))
            if any((self.objs[u].geometry.area, self.objs[u].score) >= (geom.area, new.score)
                   for u in twice):
                return
            for uid in twice:
                self._drop(uid)
        for uid, same in hits:  # a partial overlap belongs to the higher-scoring object
            if same:
                continue
            self._count("overlaps_trimmed")
            old = self.objs[uid]
            if new.score > old.score:
                self._drop(uid)
                trimmed = clean_polygon(old.geometry.difference(new.geometry), self.min_area)
                if trimmed is None:
                    self.stats.small_dropped += 1
                else:
                    self._put(uid, replace(old, geometry=trimmed))
            else:
                trimmed = clean_polygon(new.geometry.difference(old.geometry), self.min_area)
                if trimmed is None:
                    self.stats.small_dropped += 1
                    return
                new = replace(new, geometry=trimmed)
        self._put(self.next_id, new)
        self.next_id += 1

    def _count(self, key: str, n: int = 1) -> None:
        self.stats.extra[key] = self.stats.extra.get(key, 0) + n

    def release(self, y: float | None) -> Iterator[StitchedObject]:
        """Yield (in arrival order) the held objects that end at or above ``y`` (all when None)."""
        done = [u for u, o in self.objs.items() if y is None or o.geometry.bounds[3] <= y]
        for uid in done:
            yield self._drop(uid)

    def finish(self) -> Iterator[StitchedObject]:
        yield from self.release(None)
