"""Frozen value types shared by every stage. No I/O, no heavy imports.

Coordinate conventions (used everywhere):
- "level0" = pixels of the full-resolution level of the input (what QuPath calls image pixels).
- "work" = pixels at the working resolution the model runs at (target mpp); level0 = work * downsample.
- Boxes are (x, y, w, h) integers, x to the right, y down.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

#: ImageNet input normalisation, RGB on the 0..255 scale (detectron2's PIXEL_MEAN / PIXEL_STD):
#: the default of every card and network here
IMAGENET_MEAN = (123.675, 116.28, 103.53)
IMAGENET_STD = (58.395, 57.12, 57.375)


@dataclass(frozen=True)
class LevelInfo:
    width: int
    height: int
    downsample: float  # level-0 pixels per pixel of this level


@dataclass(frozen=True)
class SlideInfo:
    path: str
    backend: str  # "openslide" | "tifffile" | "pillow"
    width: int  # level 0
    height: int
    levels: tuple[LevelInfo, ...]
    mpp: float | None  # pixel size at level 0 (µm/px for slides, m/px for georeferenced rasters)
    mpp_unit: str = "um"  # "um" or "m"
    vendor: str | None = None
    channels: int = 3
    dtype: str = "uint8"
    crs: str | None = None  # "EPSG:32616" when known, else WKT/PROJ string, None if not georeferenced
    geotransform: tuple[float, float, float, float, float, float] | None = None
    # GDAL order: X = gt[0] + col*gt[1] + row*gt[2]; Y = gt[3] + col*gt[4] + row*gt[5] (level-0 px)
    properties: dict[str, str] = field(default_factory=dict, compare=False, hash=False)

    @property
    def is_georeferenced(self) -> bool:
        return self.geotransform is not None


@dataclass(frozen=True)
class OutputSpec:
    """Where and how one run writes its polygons, resolved once per input (tilesegcli.outputs)
    and handed to the merge and the writers."""

    path: Path  # the polygon file; Path("-") = stdout
    format: str  # one of FORMATS
    labels: Path | None = None  # OME-Zarr label images, when asked for
    min_area: float | None = None  # physical units (µm², m²; level-0 px² when unknown)
    simplify: float | None = None  # µm, m; level-0 px when unknown

    @property
    def to_stdout(self) -> bool:
        return str(self.path) == "-"

    def options(self) -> dict[str, Any]:
        """The options that shape the written output (they enter its fingerprint)."""
        return {"format": self.format, "min_area": self.min_area, "simplify": self.simplify,
                "labels": str(self.labels) if self.labels else None}


@dataclass(frozen=True)
class GridSpec:
    """Tiles at the working resolution. Tile (r, c) reads the window starting at
    (c*stride, r*stride) of size tile_px, stride = tile_px - overlap_px.
    Cores (the part a tile owns) partition the working image exactly."""

    level: int  # pyramid level read from
    downsample: float  # level-0 px per working px (>= 1 for slides read at lower resolution)
    level_scale: float  # level px per working px (resample factor applied after reading)
    width: int  # working-resolution image size
    height: int
    tile_px: int
    overlap_px: int
    rows: int
    cols: int

    @property
    def stride_px(self) -> int:
        return self.tile_px - self.overlap_px


@dataclass(frozen=True)
class TileSpec:
    index: int  # row * cols + col
    row: int
    col: int
    x: int  # read window (working px); may extend past the image (padded)
    y: int
    w: int
    h: int
    core: tuple[int, int, int, int]  # (x0, y0, x1, y1) owned region, working px, clipped to image
