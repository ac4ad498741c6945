"""Semantic stitching: per-tile class probabilities -> per-class polygons with holes, seam-free.

Two ways to assemble the class map (``blend=``), both streaming by tile row:

* ``"crop"`` (default): each tile contributes the argmax over its core only; cores partition the
  image and their borders sit mid-overlap, where both neighbours have context. State: the uint8/
  uint16 class + uint8 score crops of the current row's tiles that ran (2 B/px of their cores).
* ``"linear"``: probabilities weighted by a ramp over the overlap from each window border and
  summed (argmax of the weighted sum). State: float32 canvases of C x tile_px x 2048 px for the
  column blocks some tile of the current row touched.

Neither allocates across the full slide width: a band reaches the merger as **column segments**
(maximal runs of adjacent cores / blocks that are not all background); columns between segments
are background, so no region crosses them. On a 100k px wide slide with a little tissue the band
state is that of the tissue, not of the width. Measured (benchmarks/bench_pipeline.py (b), peak RSS
100k x 100k / 10k x 10k, same tissue): semantic 1160 / 593 MB (1.96x) with full-width bands ->
492 / 528 MB (0.93x); panoptic 1189 / 576 MB (2.07x) -> 509 / 528 MB (0.96x). A 100k x 1200 px
map with 6k px of tissue: traced peak 616 -> 32 MiB, CPU 19.1 -> 9.6 s, identical output.

Measured (benchmarks/bench_stitch.py --semantic, synthetic model whose noise grows towards the
window border, tile 256 / overlap 64): pixel error 0.72 % crop vs 0.51 % linear; with an exact
model both are identical. Crop stays the default because its state is ~10x smaller (C=4) and
does not grow with the class count; pass ``blend="linear"`` when the model is weak near borders.

Memory is bounded by one **row band** plus the regions still open across the band's bottom edge:

1. A tile row's contribution is assembled into the band's segments (missing tiles stay
   background, class 0).
2. Each segment is labelled per class (4-connected, ``scipy.ndimage.label``, int32), traced to
   pixel-edge polygons (``vectorize.labels_to_geometries``) and the per-region probability sums
   taken (bincount in row chunks: no 8-byte copy of the segment).
3. Regions in the band's first row are joined to the open regions of the previous band that sit
   directly above with the same class (a union-find over the overlapping columns of the previous
   band's last-row segments); pieces are unioned with shapely, so the seam line vanishes
   (collinear seam vertices are removed by ``simplify(0)``).
4. A region not touching the band's last row is finished and emitted at once.

The emitted polygons equal vectorizing the untiled class map (tests check area and symmetric
difference). Score = mean winning probability over the region's pixels.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from tilesegcli.stitching.types import StitchedObject, StitchStats
from tilesegcli.stitching.unionfind import UnionFind
from tilesegcli.vectorize import labels_to_geometries, make_valid_polygonal

if TYPE_CHECKING:
    from shapely.geometry.base import BaseGeometry

    from tilesegcli.segmenter import ClassInfo, TileResult
    from tilesegcli.specs import GridSpec, TileSpec

Segment = tuple[int, np.ndarray, np.ndarray]  # (x0, class or id row/band, uint8 probability)
Band = tuple[int, int, list[Segment]]  # (y0, height, column segments holding every non-0 pixel)
_CHUNK_PX = 1 << 20  # pixels per bincount call in _region_sums
_BLEND_BLOCK_PX = 2048  # column block of the linear-blend canvases


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
        self.prev_bottom: list[Segment] = []  # previous band's last row: (x0, open region ids, classes)
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
        self.prev_bottom = []
        for reg in regs:
            obj = self._finish(reg)
            if obj is not None:
                yield obj

    def band(self, y0: int, height: int, segments: Sequence[Segment]) -> Iterator[StitchedObject]:
        """Process one band (rows y0 .. y0+height) given as column segments (x0, cls, prob) that
        hold every non-background pixel (columns outside them are class 0); yield the regions
        the band finishes."""
        if self.prev_end != y0:
            yield from self.flush_all()
        self.prev_end = y0 + height
        bottom_open = self.prev_end < self.grid.height
        new: dict[int, _Region] = {}
        links: list[np.ndarray] = []  # (2, k) pairs (open id above, new id) to join
        touching: set[int] = set()
        bottom: list[Segment] = []  # next band's view of this band's last row: (x0, ids, cls)
        for x0, cls, prob in segments:
            comp, comp_cls = _label_classes(cls)
            n = len(comp_cls) - 1
            if n == 0:
                continue
            base = self.next_id - 1
            self.next_id += n
            counts, sums = _region_sums(comp, prob, n)
            for k, g in labels_to_geometries(comp, offset=(x0, y0)).items():
                new[base + k] = _Region(comp_cls[k], [g], float(sums[k]) / 255.0, int(counts[k]))
            top = comp[0].astype(np.int64)
            for px0, pids, pcls in self.prev_bottom:  # join with the open regions right above
                a, b = max(x0, px0), min(x0 + cls.shape[1], px0 + len(pids))
                if a >= b:
                    continue
                t, c = top[a - x0 : b - x0], cls[0, a - x0 : b - x0]
                p, pc = pids[a - px0 : b - px0], pcls[a - px0 : b - px0]
                link = (p > 0) & (t > 0) & (pc == c)
                if link.any():
                    links.append(np.stack([p[link], t[link] + base]))
            if bottom_open:
                last = comp[-1].astype(np.int64)
                ids = np.where(last > 0, last + base, 0)
                if ids.any():
                    touching.update(np.unique(ids[ids > 0]).tolist())
                    bottom.append((x0, ids, cls[-1].copy()))
            del comp, top
        if not new:
            yield from self.flush_all()
            return
        uf = UnionFind((*self.open, *new))
        if links:
            pairs = np.unique(np.concatenate(links, axis=1), axis=1)
            for a, b in pairs.T:
                uf.union(int(a), int(b))
        groups = uf.groups()
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
        self.prev_bottom = [(x0, _map_roots(ids, uf.find), c) for x0, ids, c in bottom]
        self.stats.pending_peak = max(self.stats.pending_peak, len(self.open))


def _label_classes(cls: np.ndarray) -> tuple[np.ndarray, list[int]]:
    """4-connected components of every non-zero class: int32 ids 1..n (0 = background) and the
    class of each id (index 0 unused)."""
    from scipy import ndimage

    comp = np.zeros(cls.shape, dtype=np.int32)
    comp_cls: list[int] = [0]
    for c in np.unique(cls):
        if c == 0:
            continue
        lab, n = ndimage.label(cls == c)
        np.add(lab, len(comp_cls) - 1, out=comp, where=lab > 0)
        del lab
        comp_cls.extend([int(c)] * n)
    return comp, comp_cls


def _region_sums(comp: np.ndarray, prob: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel count and uint8-probability sum per component id, in row chunks (bincount casts
    ids and weights to 8-byte types: a whole-band call would copy the band twice at 8 B/px)."""
    counts = np.zeros(n + 1, np.int64)
    sums = np.zeros(n + 1, np.float64)  # integer-valued: exact, independent of the chunking
    step = max(1, _CHUNK_PX // max(comp.shape[1], 1))
    for r in range(0, comp.shape[0], step):
        ids = comp[r : r + step].ravel()
        counts += np.bincount(ids, minlength=n + 1)
        sums += np.bincount(ids, weights=prob[r : r + step].ravel(), minlength=n + 1)
    return counts, sums


def _map_roots(ids: np.ndarray, find: Callable[[int], int]) -> np.ndarray:
    uniq, inv = np.unique(ids, return_inverse=True)
    roots = np.array([find(int(v)) if v else 0 for v in uniq], dtype=np.int64)
    return roots[inv]


def _segments(pieces: list[Segment]) -> list[Segment]:
    """Column pieces (x0, cls, prob) of one band, sorted by x0 and not overlapping -> maximal runs
    of adjacent pieces joined into one segment; pieces that are all background are dropped (they
    equal a missing tile)."""
    runs: list[list[Segment]] = []
    end = -1
    for piece in sorted((p for p in pieces if p[1].any()), key=lambda p: p[0]):
        if runs and piece[0] == end:
            runs[-1].append(piece)
        else:
            runs.append([piece])
        end = piece[0] + piece[1].shape[1]
    out: list[Segment] = []
    for run in runs:
        if len(run) == 1:
            out.append(run[0])
        else:
            out.append((run[0][0], np.concatenate([p[1] for p in run], axis=1),
                        np.concatenate([p[2] for p in run], axis=1)))
    return out


class _CropBands:
    """Core crops: each tile's argmax over its core, one row band of cores at a time. Only the
    tiles that ran hold memory (their core crops, 2 bytes/px); adjacent cores are joined into
    column segments when the band is emitted."""

    def __init__(self, grid: GridSpec, n_classes: int) -> None:
        self.grid = grid
        self.dtype = np.uint8 if n_classes <= 256 else np.uint16
        self.row = -1
        self.y0 = self.y1 = 0
        self.pieces: list[Segment] = []

    def _band(self) -> list[Band]:
        if self.row < 0:
            return []
        pieces, self.pieces = self.pieces, []
        return [(self.y0, self.y1 - self.y0, _segments(pieces))]

    def add(self, spec: TileSpec, probs: np.ndarray | None) -> list[Band]:
        out: list[Band] = []
        if spec.row != self.row:
            out = self._band()
            self.row = spec.row
            self.y0, self.y1 = spec.core[1], spec.core[3]
        if probs is None:
            return out
        cx0, cy0, cx1, cy1 = spec.core
        crop = probs[:, cy0 - spec.y : cy1 - spec.y, cx0 - spec.x : cx1 - spec.x]
        cls = np.argmax(crop, axis=0).astype(self.dtype)
        if cls.any():
            prob = np.clip(np.rint(crop.max(axis=0) * 255.0), 0, 255).astype(np.uint8)
            self.pieces.append((cx0, cls, prob))
        return out

    def finish(self) -> list[Band]:
        out = self._band()
        self.row = -1
        return out


class _BlendBands:
    """Linear blending: probabilities weighted by a ramp that rises over the overlap from each
    window border, summed over every tile covering a pixel (argmax of the weighted sum). For the
    current tile row it holds float32 canvases of C x tile_px x ``block`` px, only for the column
    blocks some tile touched."""

    def __init__(self, grid: GridSpec, n_classes: int, block: int | None = None) -> None:
        self.grid = grid
        self.C = n_classes
        t, o = grid.tile_px, grid.overlap_px
        d = np.minimum(np.arange(t), np.arange(t)[::-1]).astype(np.float32)
        ramp = np.minimum(d + 1.0, o + 1.0) / (o + 1.0)
        self.weight = np.minimum(ramp[:, None], ramp[None, :])
        self.dtype = np.uint8 if n_classes <= 256 else np.uint16
        self.block = block or _BLEND_BLOCK_PX
        self.y0 = self.h = 0
        self.blocks: dict[int, tuple[np.ndarray, np.ndarray]] = {}  # block index -> (acc, wsum)
        self.row = -1

    def _get(self, b: int) -> tuple[np.ndarray, np.ndarray]:
        blk = self.blocks.get(b)
        if blk is None:
            w = min(self.block, self.grid.width - b * self.block)
            blk = self.blocks[b] = (np.zeros((self.C, self.h, w), np.float32), np.zeros((self.h, w), np.float32))
        return blk

    def _emit(self, y_end: int) -> list[Band]:
        if self.row < 0 or y_end <= self.y0:
            return []
        k = y_end - self.y0
        pieces: list[Segment] = []
        for b, (acc_b, ws_b) in sorted(self.blocks.items()):
            acc, ws = acc_b[:, :k], ws_b[:k]
            cls = np.argmax(acc, axis=0).astype(self.dtype)
            with np.errstate(invalid="ignore", divide="ignore"):
                p = np.where(ws > 0, acc.max(axis=0) / ws, 0.0)
            pieces.append((b * self.block, cls, np.clip(np.rint(p * 255.0), 0, 255).astype(np.uint8)))
        return [(self.y0, k, _segments(pieces))]

    def add(self, spec: TileSpec, probs: np.ndarray | None) -> list[Band]:
        g = self.grid
        out: list[Band] = []
        if spec.row != self.row:
            new_y = spec.y
            new_h = min(g.tile_px, g.height - new_y)
            old, end = self.blocks, self.y0 + self.h
            out = self._emit(min(new_y, end))
            self.blocks = {}
            if self.row >= 0 and end > new_y:  # rows shared with the new tile row carry over
                keep, y_old = end - new_y, new_y - self.y0
                for b, (acc, wsum) in old.items():
                    a2 = np.zeros((self.C, new_h, acc.shape[2]), np.float32)
                    w2 = np.zeros((new_h, acc.shape[2]), np.float32)
                    a2[:, :keep] = acc[:, y_old:]
                    w2[:keep] = wsum[y_old:]
                    self.blocks[b] = (a2, w2)
            del old
            self.y0, self.h, self.row = new_y, new_h, spec.row
        if probs is None:
            return out
        h = min(spec.h, g.height - spec.y)
        w = min(spec.w, g.width - spec.x)
        wt = self.weight[:h, :w]
        ys = slice(spec.y - self.y0, spec.y - self.y0 + h)
        for b in range(spec.x // self.block, (spec.x + w - 1) // self.block + 1):
            acc, wsum = self._get(b)
            a, e = max(spec.x, b * self.block), min(spec.x + w, (b + 1) * self.block)
            bs, ts = slice(a - b * self.block, e - b * self.block), slice(a - spec.x, e - spec.x)
            acc[:, ys, bs] += probs[:, :h, ts] * wt[:, ts]
            wsum[ys, bs] += wt[:, ts]
        return out

    def finish(self) -> list[Band]:
        out = self._emit(self.y0 + self.h)
        self.blocks, self.row = {}, -1
        return out


class SemanticStitcher:
    """Push-style semantic stitching: ``add(spec, result)`` per tile in row-major order returns
    the regions finished so far; ``finish()`` returns the rest (working px, kind "annotation").

    blend: "crop" (core crops, 2 bytes/px of band state) or "linear" (ramp-weighted average over
    the overlaps, C x tile_px x width float32 of state); see the module docstring."""

    def __init__(self, grid: GridSpec, *, classes: Sequence[ClassInfo], min_area_px: float = 0,
                 simplify_px: float = 0, stats: StitchStats | None = None,
                 blend: str = "crop") -> None:
        if blend not in ("crop", "linear"):
            raise ValueError(f"blend must be 'crop' or 'linear', not {blend!r}")
        self.stats = stats if stats is not None else StitchStats()
        self.n_classes = len(classes)
        self._merger = _BandMerger(grid, self.stats, min_area_px, simplify_px)
        crop = blend == "crop" or grid.overlap_px == 0
        self._bands = (_CropBands if crop else _BlendBands)(grid, self.n_classes)
        self._last_index = -1

    def _merge(self, bands: list[Band]) -> list[StitchedObject]:
        return [obj for y0, h, segments in bands for obj in self._merger.band(y0, h, segments)]

    def add(self, spec: TileSpec, res: TileResult) -> list[StitchedObject]:
        if spec.index <= self._last_index:
            raise ValueError(f"tiles must come in row-major order (tile {spec.index} after "
                             f"{self._last_index})")
        self._last_index = spec.index
        self.stats.tiles += 1
        probs = None if res.semantic is None else np.asarray(res.semantic)
        if probs is not None and probs.shape[0] != self.n_classes:
            raise ValueError(f"tile has {probs.shape[0]} semantic channels, expected "
                             f"{self.n_classes}")
        return self._merge(self._bands.add(spec, probs))

    def finish(self) -> list[StitchedObject]:
        return [*self._merge(self._bands.finish()), *self._merger.flush_all()]


def stitch_semantic(
    grid: GridSpec,
    tiles: Iterable[tuple[TileSpec, TileResult]],
    *,
    classes: Sequence[ClassInfo],
    min_area_px: float = 0,
    simplify_px: float = 0,
    stats: StitchStats | None = None,
    blend: str = "crop",
) -> Iterator[StitchedObject]:
    """Per-class region polygons, ``tiles`` in row-major order: the generator form of
    :class:`SemanticStitcher`."""
    stitcher = SemanticStitcher(grid, classes=classes, min_area_px=min_area_px,
                                simplify_px=simplify_px, stats=stats, blend=blend)
    for spec, res in tiles:
        yield from stitcher.add(spec, res)
    yield from stitcher.finish()
