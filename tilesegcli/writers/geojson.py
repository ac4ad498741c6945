"""Streaming GeoJSON feature writers: QuPath GeoJSON, CRS-aware GeoJSON (.gz) and GeoJSONSeq.

Formats (``open_writer(fmt=...)``):

* ``qupath``: FeatureCollection for QuPath (ECOSYSTEM.md §2): level-0 pixel coordinates, one
  Feature per object with a UUID ``id``; ``properties.objectType`` = "detection" (instances) or
  "annotation" (regions); ``classification`` = {name, color} (omitted for class 0/unknown);
  ``measurements`` as a name -> number map; never ``properties.type`` (QuPath reads it as the
  object type). Non-finite measurements are written as the strings "NaN"/"Infinity", which QuPath
  parses.
* ``geojson`` / ``geojson.gz``: the same features; for georeferenced input the coordinates are in
  the raster's CRS (GDAL geotransform), rings follow the right-hand rule and the CRS is declared
  with the legacy ``crs`` member (``urn:ogc:def:crs:EPSG::<code>``) that GDAL/QGIS read (RFC 7946
  has no way to declare a projected CRS). Without georeferencing it equals ``qupath``.
* ``geojsonseq``: RFC 8142 text sequence (RS, feature JSON, LF per record). A sequence cannot
  declare a CRS (RFC 7946: WGS 84 lon/lat), so georeferenced coordinates are reprojected to
  WGS 84 (``rasterio.warp.transform``, GDAL/PROJ); non-georeferenced input stays in level-0 px.

Features are serialized one at a time (``shapely.to_geojson``) into a buffered, atomic sink, so
memory does not depend on the number of objects.
"""

from __future__ import annotations

import json
import math
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from tilesegcli.errors import UsageError
from tilesegcli.formats import FORMATS, format_from_path
from tilesegcli.writers.sink import AtomicOutput, CommitOnExit

if TYPE_CHECKING:
    from tilesegcli.segmenter import ClassInfo
    from tilesegcli.specs import GridSpec, SlideInfo
    from tilesegcli.stitching.types import StitchedObject
    from tilesegcli.vectorize import OutputTransform

_RS = b"\x1e"


def crs_member(crs: str) -> dict[str, object]:
    """Legacy GeoJSON 2008 ``crs`` member GDAL understands ("EPSG:32616" -> OGC URN)."""
    text = crs.strip()
    if text.upper().startswith("EPSG:") and text[5:].strip().isdigit():
        text = f"urn:ogc:def:crs:EPSG::{text[5:].strip()}"
    return {"type": "name", "properties": {"name": text}}


def _num(v: float) -> float | str:
    if math.isfinite(v):
        return v
    return "NaN" if math.isnan(v) else ("Infinity" if v > 0 else "-Infinity")


def _to_wgs84(obj: StitchedObject, src_crs: str) -> StitchedObject:
    import dataclasses

    import numpy as np
    import shapely
    from rasterio.warp import transform

    def fn(xy: np.ndarray) -> np.ndarray:
        lon, lat = transform(src_crs, "EPSG:4326", xy[:, 0].tolist(), xy[:, 1].tolist())
        return np.column_stack([lon, lat])

    return dataclasses.replace(obj, geometry=shapely.transform(obj.geometry, fn))


class FeatureWriter(CommitOnExit):
    """Write ``StitchedObject`` s as GeoJSON features; use as a context manager.

    With ``transform`` (an ``OutputTransform``) objects are taken in working px and mapped (and
    measured, filtered by min area, simplified) here; without it they must already be in output
    coordinates and carry their measurements.
    """

    def __init__(
        self,
        sink: AtomicOutput,
        fmt: str,
        *,
        classes: Sequence[ClassInfo],
        transform: OutputTransform | None = None,
        crs: str | None = None,
        reproject_from: str | None = None,
    ) -> None:
        self.sink = sink
        self.reproject_from = reproject_from
        self.fmt = fmt
        self.classes = list(classes)
        self.transform = transform
        self.count = 0
        self.skipped = 0
        self._keys: dict[str, str] = {}
        self._seq = fmt == "geojsonseq"
        self._cls_json = [
            json.dumps({"name": c.name, "color": [int(v) for v in c.color]}, ensure_ascii=False)
            for c in self.classes
        ]
        if not self._seq:
            head: dict[str, object] = {"type": "FeatureCollection"}
            if crs:
                head["crs"] = crs_member(crs)
            text = json.dumps(head, ensure_ascii=False)
            self.sink.write(text[:-1].encode() + b', "features": [\n')

    def feature_json(self, obj: StitchedObject) -> str:
        import shapely

        props = ['"objectType": ' + ('"annotation"' if obj.kind == "annotation" else '"detection"')]
        if 0 < obj.class_id < len(self._cls_json):
            props.append('"classification": ' + self._cls_json[obj.class_id])
        if obj.measurements:
            keys = self._keys
            items = []
            for k, v in obj.measurements.items():
                kj = keys.get(k)
                if kj is None:
                    kj = keys[k] = json.dumps(k, ensure_ascii=False)
                v = float(v)
                items.append(f"{kj}: {v!r}" if math.isfinite(v) else f'{kj}: "{_num(v)}"')
            props.append('"measurements": {' + ", ".join(items) + "}")
        if obj.merged:
            props.append('"metadata": {"tileseg_merged": "true"}')
        return (
            f'{{"type": "Feature", "id": "{uuid.uuid4()}", "geometry": '
            f"{shapely.to_geojson(obj.geometry)}, \"properties\": {{{', '.join(props)}}}}}"
        )

    def write(self, obj: StitchedObject) -> bool:
        """Write one object; returns False when it was filtered out (min area / empty)."""
        if self.transform is not None:
            mapped = self.transform(obj)
            if mapped is None:
                self.skipped += 1
                return False
            obj = mapped
        if obj.geometry.is_empty:
            self.skipped += 1
            return False
        if self.reproject_from:
            obj = _to_wgs84(obj, self.reproject_from)
        text = self.feature_json(obj).encode()
        if self._seq:
            self.sink.write(_RS + text + b"\n")
        else:
            self.sink.write((b",\n" if self.count else b"") + text)
        self.count += 1
        return True

    def close(self) -> None:
        if self.sink.closed:
            return
        try:
            if not self._seq:
                self.sink.write(b"\n]}\n")
        except BaseException:
            self.sink.abort()
            raise
        self.sink.commit()

    def abort(self) -> None:
        self.sink.abort()


def open_writer(
    path: str | Path,
    fmt: str | None = None,
    *,
    classes: Sequence[ClassInfo],
    info: SlideInfo | None = None,
    grid: GridSpec | None = None,
    min_area: float | None = None,
    simplify: float | None = None,
    origin: tuple[float, float] = (0.0, 0.0),
) -> FeatureWriter:
    """Open a streaming feature writer (see module docstring for the formats).

    path: file path or ``"-"`` (stdout). fmt: one of FORMATS, default from the file name.
    info: the slide as the run saw it (``mpp``: the run's level-0 pixel size; georeferencing).
    grid: objects arrive in working px of this grid (``grid.downsample`` -> level 0); without
    it they arrive in level-0 px. They are mapped to the CRS for georeferenced geojson output.
    min_area / simplify: physical units (µm², µm; m², m georeferenced; level-0 px when unknown).
    origin: level-0 px subtracted from pixel coordinates, for viewers whose image starts at the
    slide bounds (QuPath on MRXS with bounds-x/y); ignored for CRS output.
    """
    from tilesegcli.vectorize import OutputTransform

    fmt = fmt or format_from_path(path)
    if fmt not in FORMATS:
        raise UsageError(f"unknown output format {fmt!r} (choose from {', '.join(FORMATS)})")
    geo = fmt != "qupath" and info is not None and info.geotransform is not None
    transform = OutputTransform(
        grid.downsample if grid is not None else 1.0,
        info=info, crs=geo, min_area=min_area, simplify=simplify, origin=origin,
    )
    sink = AtomicOutput(path, gz=fmt == "geojson.gz")
    crs = info.crs if geo and info is not None else None
    if fmt == "geojsonseq":
        return FeatureWriter(sink, fmt, classes=classes, transform=transform, reproject_from=crs)
    return FeatureWriter(sink, fmt, classes=classes, transform=transform, crs=crs)
