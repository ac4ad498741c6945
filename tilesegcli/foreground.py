"""Where to run the model: tissue masks, GeoTIFF valid masks, ROIs, and the tile filter.

Owns:
* ``tissue_mask(rgb)``: thumbnail-based tissue detection for brightfield pathology. Stained
  tissue is *saturated*; glass is bright and grey; scanner fill / slide edges are black. So:
  drop near-black pixels (max channel < 40, also black pen), drop blue/green pen (hue rules:
  green-dominant pixels, and blue pixels whose green clearly exceeds red -- haematoxylin has
  G <= R),
  Otsu on saturation of the remaining pixels, clamped to [0.07, 0.12]: glass is < 0.05 on real
  scans (so a blank slide yields no tissue) while pale stroma is ~0.1-0.2 (and on a slide that
  is all tissue Otsu would split nuclei from stroma), then closing, small-hole filling, removal
  of specks < ~0.01 mm² and a 1-px safety dilation. Red pen is indistinguishable from eosin and
  is kept (use ``--roi`` to exclude it).
* ``foreground_mask(reader, mode=..., roi=...)`` -> :class:`ForegroundMask`: "auto" = valid
  mask for georeferenced rasters (alpha/nodata/.msk; everything when none), tissue mask
  (intersected with the valid mask if the file has one) otherwise; "tissue", "valid", "none"
  (``--no-mask``) force one.
* ``load_roi(path, info)``: a QuPath GeoJSON export (FeatureCollection, Feature list, Feature or
  geometry; polygons only) -> shapely geometry in level-0 pixels. For georeferenced inputs the
  coordinates are CRS coordinates (a QGIS export) and are mapped through the inverse
  geotransform -- unless only the untransformed polygons meet the image (drawn in pixel
  coordinates, e.g. in QuPath), then they are used as pixels with a warning.
* ``tile_has_foreground`` / ``foreground_boxes`` / ``select_tiles``: vectorised (summed-area
  table) test of each tile's *read window* against the mask (+ exact ROI intersection), so
  background tiles never reach the model.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tilesegcli.errors import UsageError
from tilesegcli.specs import GridSpec, SlideInfo, TileSpec

MODES = ("auto", "tissue", "valid", "none")
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ForegroundMask:
    mask: np.ndarray  # (h, w) bool; True = run the model here
    downsample: float  # level-0 px per mask px
    source: str  # "tissue", "valid", "none", "tissue+valid", with "+roi" when an ROI applies
    roi: Any | None = None  # shapely geometry in level-0 px, or None

    @property
    def fraction(self) -> float:
        return float(self.mask.mean()) if self.mask.size else 0.0


# --------------------------------------------------------------------------- tissue
def _otsu(values: np.ndarray) -> float:
    from skimage.filters import threshold_otsu

    if values.size < 2 or float(values.max()) - float(values.min()) < 1e-6:
        return 1.0
    return float(threshold_otsu(values))


def pen_mask(rgb: np.ndarray) -> np.ndarray:
    """Blue and green marker ink (bool)."""
    r, g, b = (rgb[..., i].astype(np.int16) for i in range(3))
    green = (g - r > 20) & (g - b > -30)
    # marker blue is cyan-leaning (G clearly above R); haematoxylin is purple (G < R) or, as an
    # IHC counterstain, blue-grey with G ~ R -- both must stay tissue
    blue = (b - r > 60) & (g - r > 10)
    return green | blue


def tissue_mask(
    rgb: np.ndarray,
    *,
    min_sat: float = 0.07,
    max_sat: float = 0.12,
    min_object_px: int | None = None,
) -> np.ndarray:
    """(h, w) bool tissue mask of an RGB uint8 thumbnail (see module docstring).

    Objects and holes up to ``min_object_px`` pixels are dropped/filled (default 2e-4 of the
    thumbnail, at least 8 px)."""
    from scipy import ndimage
    from skimage import morphology

    if rgb.ndim != 3 or rgb.shape[2] < 3:
        raise ValueError(f"tissue_mask needs (h, w, 3) RGB, got {rgb.shape}")
    f = rgb[..., :3].astype(np.float32)
    mx, mn = f.max(axis=2), f.min(axis=2)
    sat = (mx - mn) / np.maximum(mx, 1.0)
    dark = mx < 40
    pen = ndimage.binary_dilation(pen_mask(rgb), iterations=1)
    cand = ~dark & ~pen
    t = float(np.clip(_otsu(sat[cand]) if cand.any() else 1.0, min_sat, max_sat))
    tissue = cand & (sat > t)
    tissue = ndimage.binary_closing(tissue, structure=np.ones((3, 3), bool), iterations=2)
    tissue &= ~dark
    min_px = max(8, int(2e-4 * tissue.size)) if min_object_px is None else int(min_object_px)
    tissue = morphology.remove_small_objects(tissue, max_size=min_px)
    tissue = morphology.remove_small_holes(tissue, max_size=min_px)
    # 1-px safety margin into glass, but never onto ink or black background
    return ndimage.binary_dilation(tissue, iterations=1) & cand


# --------------------------------------------------------------------------- ROI
def _features(doc: Any) -> list[dict[str, Any]]:
    if isinstance(doc, list):
        return [f for d in doc for f in _features(d)]
    if not isinstance(doc, dict):
        return []
    t = doc.get("type")
    if t == "FeatureCollection":
        return _features(doc.get("features", []))
    if t == "Feature":
        return [doc]
    if t in ("Polygon", "MultiPolygon", "GeometryCollection"):
        return [{"type": "Feature", "geometry": doc}]
    return []


def load_roi(path: str | Path, info: SlideInfo | None = None) -> Any:
    """Union of the polygons of a GeoJSON file, in level-0 pixel coordinates."""
    import shapely
    from shapely.geometry import shape

    p = Path(path)
    try:
        doc = json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UsageError(f"--roi {p}: no such file") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UsageError(f"--roi {p}: not valid GeoJSON ({' '.join(str(e).split())})") from None
    polys = []
    for feat in _features(doc):
        try:
            g = shape(feat.get("geometry") or {})
        except Exception:
            continue
        for part in getattr(g, "geoms", [g]):
            if part.geom_type in ("Polygon", "MultiPolygon") and not part.is_empty:
                polys.append(shapely.make_valid(part))
    if not polys:
        raise UsageError(f"--roi {p}: contains no polygon")
    roi = shapely.union_all(polys)
    if info is not None and info.geotransform is not None:
        image = shapely.box(0, 0, info.width, info.height)
        px = shapely.transform(roi, _world_to_pixel(info.geotransform))
        if not px.intersects(image) and roi.intersects(image):
            # drawn on the raster in pixel coordinates (e.g. QuPath on a GeoTIFF)
            log.warning("%s: ROI is outside the raster in CRS coordinates; using it as pixels", p)
            return roi
        return px
    return roi


def _world_to_pixel(gt: tuple[float, ...]) -> Any:
    a, b, d, e = gt[1], gt[2], gt[4], gt[5]
    det = a * e - b * d
    if det == 0:
        raise UsageError("the input's geotransform is singular; cannot map the ROI to pixels")

    def fn(xy: np.ndarray) -> np.ndarray:
        dx, dy = xy[:, 0] - gt[0], xy[:, 1] - gt[3]
        return np.stack([(e * dx - b * dy) / det, (-d * dx + a * dy) / det], axis=1)

    return fn


def rasterize_roi(roi: Any, shape: tuple[int, int], downsample: float) -> np.ndarray:
    """Mask pixels whose centre lies in the ROI, dilated by one pixel (thin ROIs survive)."""
    import shapely
    from scipy import ndimage

    h, w = shape
    shapely.prepare(roi)
    xs = (np.arange(w) + 0.5) * downsample
    ys = (np.arange(h) + 0.5) * downsample
    X, Y = np.meshgrid(xs, ys)
    inside = shapely.contains_xy(roi, X.ravel(), Y.ravel()).reshape(h, w)
    return ndimage.binary_dilation(inside, iterations=1)


# --------------------------------------------------------------------------- mask of a reader
def foreground_mask(
    reader: Any,
    *,
    mode: str = "auto",
    roi: Any | None = None,
    max_px: int = 2048,
) -> ForegroundMask:
    """The mask that decides which tiles run (``roi`` is a shapely geometry in level-0 px, e.g.
    from :func:`load_roi`)."""
    if mode not in MODES:
        raise UsageError(f"unknown mask mode {mode!r} (choose from {', '.join(MODES)})")
    info: SlideInfo = reader.info
    if mode == "auto":
        mode = "valid" if info.is_georeferenced else "tissue"
    d = max(1.0, max(info.width, info.height) / max_px)
    tw, th = max(1, min(max_px, round(info.width / d))), max(1, min(max_px, round(info.height / d)))
    valid = None
    if mode in ("valid", "tissue") and getattr(reader, "has_valid_mask", False):
        vm = reader.valid_mask_thumbnail(max_px)
        valid = vm[0] if vm is not None else None
    if mode == "tissue":
        rgb, ds = reader.thumbnail(max_px)
        min_px = None
        if info.mpp and info.mpp_unit == "um":  # drop specks < ~0.01 mm² (100 x 100 µm)
            min_px = max(4, int((100.0 / (info.mpp * ds)) ** 2))
        mask, source = tissue_mask(rgb, min_object_px=min_px), "tissue"
        if valid is not None and valid.shape == mask.shape:
            mask, source = mask & valid, "tissue+valid"
    elif mode == "valid" and valid is not None:
        mask, source, ds = valid, "valid", info.width / tw
    else:
        mask, source, ds = np.ones((th, tw), bool), "none" if mode == "none" else "valid", info.width / tw
    if roi is not None:
        mask = mask & rasterize_roi(roi, mask.shape, ds)
        source += "+roi"
    return ForegroundMask(mask=mask, downsample=float(ds), source=source, roi=roi)


# --------------------------------------------------------------------------- tile filter
def foreground_boxes(mask: np.ndarray, mask_downsample: float, boxes_level0: np.ndarray,
                     min_fraction: float = 0.0) -> np.ndarray:
    """(N,) bool: does each level-0 box (x, y, w, h) touch foreground (> min_fraction of it)?"""
    boxes = np.asarray(boxes_level0, dtype=np.float64).reshape(-1, 4)
    h, w = mask.shape
    sat = np.zeros((h + 1, w + 1), np.int64)
    sat[1:, 1:] = mask.astype(np.int64).cumsum(0).cumsum(1)
    c0 = np.clip(np.floor(boxes[:, 0] / mask_downsample), 0, w).astype(np.int64)
    r0 = np.clip(np.floor(boxes[:, 1] / mask_downsample), 0, h).astype(np.int64)
    c1 = np.clip(np.ceil((boxes[:, 0] + boxes[:, 2]) / mask_downsample), 0, w).astype(np.int64)
    r1 = np.clip(np.ceil((boxes[:, 1] + boxes[:, 3]) / mask_downsample), 0, h).astype(np.int64)
    count = sat[r1, c1] - sat[r0, c1] - sat[r1, c0] + sat[r0, c0]
    area = np.maximum((r1 - r0) * (c1 - c0), 1)
    return (count > 0) & (count >= min_fraction * area)


def tile_has_foreground(mask: np.ndarray, mask_downsample: float,
                        box_level0: tuple[float, float, float, float]) -> bool:
    """Single-box version of :func:`foreground_boxes`."""
    return bool(foreground_boxes(mask, mask_downsample, np.array([box_level0]))[0])


def select_tiles(fg: ForegroundMask | None, grid: GridSpec,
                 tiles: list[TileSpec] | None = None, min_fraction: float = 0.0) -> list[TileSpec]:
    """The tiles whose read window touches foreground (all tiles when ``fg`` is None)."""
    if tiles is None:
        from tilesegcli.tiling import iter_tiles

        tiles = iter_tiles(grid)
    if fg is None or not tiles:
        return list(tiles)
    ds = grid.downsample
    boxes = np.array([(t.x * ds, t.y * ds, t.w * ds, t.h * ds) for t in tiles], np.float64)
    keep = foreground_boxes(fg.mask, fg.downsample, boxes, min_fraction)
    if fg.roi is not None:
        import shapely

        geoms = shapely.box(boxes[:, 0], boxes[:, 1], boxes[:, 0] + boxes[:, 2],
                            boxes[:, 1] + boxes[:, 3])
        keep &= shapely.intersects(geoms, fg.roi) & ~shapely.touches(geoms, fg.roi)
    return [t for t, k in zip(tiles, keep, strict=True) if k]
