"""Masks and label images -> valid shapely polygons; working px -> level-0 px -> CRS; measurements.

Owns the raster-to-vector step of tileseg and the coordinate/units conversions of the output:

* ``labels_to_geometries`` traces every label of an integer image into a pixel-edge polygon (with
  holes; several 4-connected parts become a MultiPolygon) using GDAL's polygonizer through
  ``rasterio.features.shapes`` (no hand-written contour tracer). Polygons follow pixel edges, so
  ``area == pixel count`` exactly, and every returned geometry ``is_valid``.
* ``OutputTransform`` maps a stitched object from working-resolution pixels to level-0 pixels
  (scale by ``grid.downsample``) or, for georeferenced input, to the raster's CRS through its GDAL
  geotransform; applies simplification and minimum area given in physical units (µm / µm² for
  slides, m / m² for georeferenced rasters, level-0 px when the pixel size is unknown) and fills the
  per-object measurements (area, perimeter, centroid, score) named the way QuPath names them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from shapely.geometry.base import BaseGeometry

    from tilesegcli.specs import SlideInfo
    from tilesegcli.stitching.types import StitchedObject

_RASTERIO_DTYPES = ("int16", "int32", "uint8", "uint16", "float32")


def make_valid_polygonal(geom: BaseGeometry) -> BaseGeometry:
    """Repair an invalid polygonal geometry, keeping only its polygonal part (area preserved)."""
    import shapely

    if geom.is_valid:
        return geom
    fixed = shapely.make_valid(geom, method="structure", keep_collapsed=False)
    if fixed.geom_type in ("Polygon", "MultiPolygon"):
        return fixed
    parts = [g for g in shapely.get_parts(fixed) if g.geom_type in ("Polygon", "MultiPolygon")]
    return shapely.union_all(parts) if parts else shapely.Polygon()


def _iter_shapes(
    labels: np.ndarray, mask: np.ndarray | None, x0: float, y0: float
) -> Iterator[tuple[dict, float]]:
    from affine import Affine
    from rasterio.features import shapes

    arr = labels
    if arr.dtype.name not in _RASTERIO_DTYPES:
        if arr.size and int(arr.max()) > np.iinfo(np.int32).max:
            raise ValueError("label values exceed int32")
        arr = arr.astype(np.int32)
    if mask is None:
        mask = arr != 0
    if not mask.any():
        return iter(())
    return shapes(arr, mask=mask, connectivity=4, transform=Affine(1.0, 0.0, x0, 0.0, 1.0, y0))


def labels_to_geometries(
    labels: np.ndarray,
    *,
    offset: tuple[float, float] = (0.0, 0.0),
    mask: np.ndarray | None = None,
) -> dict[int, BaseGeometry]:
    """Pixel-edge polygons of every non-zero label (or of labels where ``mask`` is True).

    ``offset`` = (x, y) of the array's top-left pixel corner in the output frame. Returns
    {label: Polygon | MultiPolygon}; area of each geometry equals its pixel count.
    """
    import shapely

    values: list[int] = []
    ring_lens: list[int] = []
    ring_poly: list[int] = []
    coords: list = []
    for gj, value in _iter_shapes(labels, mask, float(offset[0]), float(offset[1])):
        p = len(values)
        values.append(int(value))
        for ring in gj["coordinates"]:
            ring_lens.append(len(ring))
            ring_poly.append(p)
            coords.extend(ring)
    if not values:
        return {}
    # build every polygon in a few vectorized shapely calls (much faster than shape() per dict)
    xy = np.array(coords, dtype=np.float64)
    rings = shapely.linearrings(xy, indices=np.repeat(np.arange(len(ring_lens)), ring_lens))
    polys = shapely.polygons(rings, indices=np.asarray(ring_poly))
    valid = shapely.is_valid(polys)
    out: dict[int, BaseGeometry] = {}
    multi: dict[int, list] = {}
    for value, poly, ok in zip(values, polys, valid, strict=True):
        if value in out or value in multi:
            multi.setdefault(value, [out.pop(value)] if value in out else []).append(poly)
        else:
            out[value] = poly if ok else make_valid_polygonal(poly)
    for value, parts in multi.items():
        out[value] = make_valid_polygonal(shapely.MultiPolygon(parts))
    return out


def mask_to_geometry(mask: np.ndarray, *, offset: tuple[float, float] = (0.0, 0.0)) -> BaseGeometry:
    """Pixel-edge (Multi)Polygon of a boolean mask (empty Polygon when the mask is empty)."""
    import shapely

    geoms = labels_to_geometries(mask.astype(np.uint8), offset=offset)
    return geoms.get(1, shapely.Polygon())


def class_map_to_geometries(
    class_map: np.ndarray, *, offset: tuple[float, float] = (0.0, 0.0), background: int = 0
) -> dict[int, list[BaseGeometry]]:
    """Untiled reference vectorization of a class map: {class: [one polygon per 4-connected
    region]}. Used by tests and small images; the streaming path is ``stitch_semantic``."""
    from shapely.geometry import shape

    out: dict[int, list[BaseGeometry]] = {}
    mask = class_map != background
    for gj, value in _iter_shapes(class_map, mask, float(offset[0]), float(offset[1])):
        out.setdefault(int(value), []).append(make_valid_polygonal(shape(gj)))
    return out


# --------------------------------------------------------------------------- output transform


def _unit_labels(unit: str | None) -> tuple[str, str]:
    """(length unit, area unit) names for measurement keys, QuPath style ("µm", "µm^2")."""
    if unit == "um":
        return "µm", "µm^2"
    if unit == "m":
        return "m", "m^2"
    return "px", "px^2"


@dataclasses.dataclass
class OutputTransform:
    """Working px -> output coordinates (level-0 px, or the CRS when ``crs`` is True).

    ``min_area`` / ``simplify`` are in physical units (µm² / µm for slides, m² / m for
    georeferenced rasters); when the pixel size is unknown they are in level-0 px² / px.
    Call it on a ``StitchedObject`` in working px; returns the transformed object with
    ``measurements`` filled, or None when it falls below ``min_area``.
    """

    downsample: float
    info: SlideInfo | None = None
    crs: bool = False
    min_area: float | None = None
    simplify: float | None = None
    origin: tuple[float, float] = (0.0, 0.0)  # level-0 px subtracted in pixel output (MRXS bounds)

    def __post_init__(self) -> None:
        # the one level-0 pixel size: the run's SlideInfo carries it (--mpp or the file's)
        mpp = self.info.mpp if self.info is not None else None
        if self.crs and (self.info is None or self.info.geotransform is None):
            raise ValueError("CRS output needs a georeferenced SlideInfo (geotransform)")
        # physical size of one working pixel (or level-0 px units when the pixel size is unknown)
        self.work_px = float(self.downsample) * (mpp if mpp else 1.0)
        self.unit = self.info.mpp_unit if mpp and self.info is not None else None
        self._len_unit, self._area_unit = _unit_labels(self.unit)
        ds = float(self.downsample)
        if self.crs:
            gt = self.info.geotransform  # type: ignore[union-attr]
            self._matrix = [gt[1] * ds, gt[2] * ds, gt[4] * ds, gt[5] * ds, gt[0], gt[3]]
        else:
            self._matrix = [ds, 0.0, 0.0, ds, -float(self.origin[0]), -float(self.origin[1])]
        self._identity = self._matrix == [1.0, 0.0, 0.0, 1.0, 0.0, 0.0]

    @property
    def min_area_px(self) -> float:
        """``min_area`` converted to working px² (0 when unset)."""
        return (self.min_area or 0.0) / (self.work_px**2)

    @property
    def simplify_px(self) -> float:
        return (self.simplify or 0.0) / self.work_px

    def measurements(self, geom_work: BaseGeometry, score: float) -> dict[str, float]:
        """Area, perimeter, centroid (level-0 frame, physical units when known) and score."""
        s = self.work_px
        c = geom_work.centroid
        lu, au = self._len_unit, self._area_unit
        return {
            f"Area {au}": float(geom_work.area * s * s),
            f"Perimeter {lu}": float(geom_work.length * s),
            f"Centroid X {lu}": float(c.x * s) if not c.is_empty else float("nan"),
            f"Centroid Y {lu}": float(c.y * s) if not c.is_empty else float("nan"),
            "Score": float(score),
        }

    def map_geometry(self, geom_work: BaseGeometry) -> BaseGeometry:
        import shapely
        from shapely import affinity

        if self._identity:
            return geom_work
        out = affinity.affine_transform(geom_work, self._matrix)
        if self.crs:
            out = shapely.orient_polygons(out, exterior_cw=False)  # RFC 7946 right-hand rule
        return out

    def __call__(self, obj: StitchedObject) -> StitchedObject | None:
        import shapely

        geom = obj.geometry
        if self.min_area and geom.area < self.min_area_px:
            return None
        meas = self.measurements(geom, obj.score)
        if self.simplify:
            geom = make_valid_polygonal(shapely.simplify(geom, self.simplify_px))
            if geom.is_empty:
                return None
        if obj.measurements:
            meas = {**meas, **obj.measurements}
        return type(obj)(self.map_geometry(geom), obj.class_id, obj.score, obj.kind, obj.merged, meas)
