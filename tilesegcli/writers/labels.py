"""OME-Zarr (NGFF 0.4, Zarr v2) label images assembled band by band from stitched objects.

Layout written (``open_labels_writer(path, ...)``)::

    path/                      root group (no image; open ``path/labels`` with an NGFF reader)
      labels/  .zattrs {"labels": ["instances", "classes"]}
        instances/  multiscale uint32 label image, value = object id (1..N, 0 = none)
        classes/    multiscale uint8/uint16 label image, value = class index (0 = background)

Each label image carries ``multiscales`` (axes y/x in micrometer or meter when the pixel size is
known, a scale transform per level, 2x nearest-neighbour pyramid down to one chunk) and
``image-label`` with ``colors`` ({label-value, rgba}) and ``properties`` (class name, score) —
for instances only while there are at most ``max_listed`` objects, to keep ``.zattrs`` small.

Objects (working px, as emitted by the stitchers, roughly in row order) are buffered per band of
``band_px`` rows and burned with ``rasterio.features.rasterize`` (pixel centres: exact for the
pixel-edge polygons of the stitchers) over the columns the band's objects span, once the stream
has moved ``lag_px`` below the band; a late object for a written band is painted in place
(read-modify-write, band by band). The pyramid is built in blocks of band_px x 16 chunks, so no
buffer spans the full width of a huge slide. The store is built under a temp name and renamed
into place on ``close()``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from tilesegcli.atomic import discard, publish, temp_path
from tilesegcli.errors import OutputError
from tilesegcli.writers.sink import CommitOnExit

if TYPE_CHECKING:
    from shapely.geometry.base import BaseGeometry

    from tilesegcli.segmenter import ClassInfo
    from tilesegcli.specs import GridSpec, SlideInfo
    from tilesegcli.stitching.types import StitchedObject

NGFF_VERSION = "0.4"


def _rasterize(items: list[tuple[BaseGeometry, int]], shape: tuple[int, int], x0: int, y0: int,
               dtype: str, out: np.ndarray | None = None) -> np.ndarray:
    from affine import Affine
    from rasterio.features import rasterize

    return rasterize(items, out_shape=shape, transform=Affine(1, 0, x0, 0, 1, y0), fill=0,
                     dtype=dtype, out=out)


class LabelsWriter(CommitOnExit):
    def __init__(
        self,
        path: str | Path,
        *,
        width: int,
        height: int,
        classes: Sequence[ClassInfo],
        pixel_size: float | None = None,
        unit: str = "micrometer",
        band_px: int = 256,
        chunk_px: int = 256,
        lag_px: int = 1024,
        max_listed: int = 100_000,
    ) -> None:
        import zarr

        self.path = Path(path)
        if not self.path.parent.is_dir():
            raise OutputError(f"output directory does not exist: {self.path.parent}")
        self.width, self.height = int(width), int(height)
        self.classes = list(classes)
        self.pixel_size, self.unit = pixel_size, unit
        self.band_px, self.chunk_px, self.lag_px = band_px, chunk_px, lag_px
        self.max_listed = max_listed
        self.cls_dtype = "uint8" if len(self.classes) <= 256 else "uint16"
        self.tmp = temp_path(self.path)
        self.root = zarr.open_group(str(self.tmp), mode="w", zarr_format=2)
        self.labels = self.root.create_group("labels")
        self.groups = {n: self.labels.create_group(n) for n in ("instances", "classes")}
        self.arrays = {
            "instances": self._create(self.groups["instances"], "0", self.height, self.width, "uint32"),
            "classes": self._create(self.groups["classes"], "0", self.height, self.width, self.cls_dtype),
        }
        self.pending: dict[int, list[tuple[BaseGeometry, int, int]]] = {}
        self.flushed_until = 0  # bands < this are written
        self.next_id = 1
        self.listed: list[tuple[int, int, float]] = []  # (id, class, score) while <= max_listed
        self.closed = False

    def _create(self, group, name: str, h: int, w: int, dtype: str):  # type: ignore[no-untyped-def]
        c = self.chunk_px
        return group.create_array(name, shape=(h, w), chunks=(min(c, max(h, 1)), min(c, max(w, 1))),
                                  dtype=dtype, fill_value=0,
                                  chunk_key_encoding={"name": "v2", "separator": "/"})

    # ------------------------------------------------------------------ writing
    def add(self, obj: StitchedObject) -> int:
        """Burn one object (working px). Detections get a new id in ``instances`` and their class in
        ``classes``; annotations (regions) only go to ``classes``. Returns the id (0 for regions)."""
        geom = obj.geometry
        if geom.is_empty:
            return 0
        oid = 0
        if obj.kind != "annotation":
            oid = self.next_id
            self.next_id += 1
            if len(self.listed) <= self.max_listed:
                self.listed.append((oid, int(obj.class_id), float(obj.score)))
        x0, y0, x1, y1 = geom.bounds
        b0, b1 = int(y0) // self.band_px, max(int(math.ceil(y1)) - 1, int(y0)) // self.band_px
        item = (geom, oid, int(obj.class_id))
        if b0 < self.flushed_until:
            self._paint_late(item)
        else:
            for b in range(b0, b1 + 1):
                self.pending.setdefault(b, []).append(item)
        self._flush_before((int(y0) - self.lag_px) // self.band_px)
        return oid

    def _flush_before(self, band: int) -> None:
        while self.flushed_until < band:
            self._flush_band(self.flushed_until)
            self.flushed_until += 1

    def _flush_band(self, b: int) -> None:
        items = self.pending.pop(b, [])
        y0 = b * self.band_px
        y1 = min(self.height, y0 + self.band_px)
        if not items or y1 <= y0:
            return
        inst = [(g, i) for g, i, _ in items if i]
        cls = [(g, c) for g, _, c in items if c > 0]
        for name, burn, dtype in (("instances", inst, "uint32"), ("classes", cls, self.cls_dtype)):
            if not burn:
                continue
            # only the columns the band's objects span (a band is written once; the rest stays 0)
            x0 = max(0, math.floor(min(g.bounds[0] for g, _ in burn)))
            x1 = min(self.width, math.ceil(max(g.bounds[2] for g, _ in burn)))
            if x1 > x0:
                self.arrays[name][y0:y1, x0:x1] = _rasterize(burn, (y1 - y0, x1 - x0), x0, y0, dtype)

    def _paint_late(self, item: tuple[BaseGeometry, int, int]) -> None:
        geom, oid, cls = item
        bx0, by0, bx1, by1 = geom.bounds
        x0, y0 = max(0, math.floor(bx0)), max(0, math.floor(by0))
        x1, y1 = min(self.width, math.ceil(bx1)), min(self.height, math.ceil(by1))
        for b in range(y0 // self.band_px, (y1 - 1) // self.band_px + 1 if y1 > y0 else 0):
            if b >= self.flushed_until:  # that band is still buffered: queue it there
                self.pending.setdefault(b, []).append(item)
                continue
            by, by1 = max(y0, b * self.band_px), min(y1, (b + 1) * self.band_px)
            for name, value in (("instances", oid), ("classes", cls)):
                if value <= 0:
                    continue
                arr = self.arrays[name]
                region = np.asarray(arr[by:by1, x0:x1])
                mask = _rasterize([(geom, 1)], region.shape, x0, by, "uint8").astype(bool)
                if mask.any():
                    region[mask] = value
                    arr[by:by1, x0:x1] = region

    # ------------------------------------------------------------------ finishing
    def _pyramid(self, name: str) -> int:
        base = self.arrays[name]
        arr, h, w, level = base, self.height, self.width, 0
        while max(h, w) > self.chunk_px and level < 10:
            h2, w2 = (h + 1) // 2, (w + 1) // 2
            nxt = self._create(self.groups[name], str(level + 1), h2, w2, str(base.dtype))
            step, xstep = self.band_px, 16 * self.chunk_px  # bounded blocks, not full-width rows
            for y in range(0, h2, step):
                y1 = min(h2, y + step)
                for x in range(0, w2, xstep):
                    x1 = min(w2, x + xstep)
                    nxt[y:y1, x:x1] = np.asarray(arr[2 * y : 2 * y1 : 2, 2 * x : 2 * x1 : 2])
            arr, h, w, level = nxt, h2, w2, level + 1
        return level + 1

    def _multiscales(self, name: str, levels: int) -> dict:
        unit = self.unit if self.pixel_size else None
        px = self.pixel_size or 1.0
        axes = [{"name": a, "type": "space", **({"unit": unit} if unit else {})} for a in "yx"]
        datasets = [
            {"path": str(i), "coordinateTransformations": [{"type": "scale", "scale": [px * 2**i] * 2}]}
            for i in range(levels)
        ]
        return {"version": NGFF_VERSION, "name": name, "axes": axes, "datasets": datasets,
                "type": "nearest"}

    def _rgba(self, c: int) -> list[int]:
        col = self.classes[c].color if 0 <= c < len(self.classes) else (128, 128, 128)
        return [int(col[0]), int(col[1]), int(col[2]), 255]

    def close(self) -> None:
        if self.closed:
            return
        try:
            self._flush_before(max(self.pending, default=-1) + 1)
            levels = {n: self._pyramid(n) for n in ("instances", "classes")}
            cls_label = {
                "version": NGFF_VERSION,
                "colors": [{"label-value": c, "rgba": self._rgba(c)} for c in range(1, len(self.classes))],
                "properties": [{"label-value": c, "class": self.classes[c].name}
                               for c in range(1, len(self.classes))],
            }
            inst_label: dict = {"version": NGFF_VERSION}
            if len(self.listed) <= self.max_listed:
                inst_label["colors"] = [{"label-value": i, "rgba": self._rgba(c)} for i, c, _ in self.listed]
                inst_label["properties"] = [
                    {"label-value": i, "class": self.classes[c].name if 0 <= c < len(self.classes) else str(c),
                     "class-index": c, "score": round(s, 6)}
                    for i, c, s in self.listed
                ]
            for name, meta in (("instances", inst_label), ("classes", cls_label)):
                self.groups[name].attrs.update(
                    {"multiscales": [self._multiscales(name, levels[name])], "image-label": meta})
            self.labels.attrs.update({"labels": ["instances", "classes"]})
            publish(self.tmp, self.path, replace_dir=True)
        except BaseException:
            self.abort()
            raise
        self.closed = True

    def abort(self) -> None:
        self.closed = True
        discard(self.tmp)


def open_labels_writer(
    path: str | Path,
    *,
    grid: GridSpec,
    classes: Sequence[ClassInfo],
    info: SlideInfo | None = None,
    **kwargs: int,
) -> LabelsWriter:
    """Label images at the working resolution of ``grid`` (pixel size = ``info.mpp``, the run's
    level-0 pixel size, x downsample)."""
    mpp = info.mpp if info is not None else None
    unit = "meter" if info is not None and info.mpp_unit == "m" else "micrometer"
    lag = max(int(kwargs.pop("lag_px", 0)), 2 * grid.tile_px)
    return LabelsWriter(path, width=grid.width, height=grid.height, classes=classes,
                        pixel_size=mpp * grid.downsample if mpp else None, unit=unit, lag_px=lag,
                        **kwargs)
