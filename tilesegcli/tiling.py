"""Pure tile geometry: the grid of overlapping read windows and the cores that partition the image.

Tile (r, c) reads the window [c*s, c*s + T) x [r*s, r*s + T) with stride s = T - overlap; the
window may run past the image (the reader pads). Core boundaries sit in the middle of each overlap
so every object near a seam is seen whole by at least one tile when it is smaller than overlap/2.
"""

from __future__ import annotations

import math

from tilesegcli.specs import GridSpec, TileSpec


def grid_shape(width: int, height: int, tile_px: int, overlap_px: int) -> tuple[int, int]:
    """(rows, cols) so the windows cover the image; at least one tile each way."""
    if tile_px <= 0 or overlap_px < 0 or overlap_px >= tile_px:
        raise ValueError(f"need 0 <= overlap < tile, got tile={tile_px} overlap={overlap_px}")
    stride = tile_px - overlap_px

    def n(size: int) -> int:
        return max(1, math.ceil(max(size - overlap_px, 1) / stride))

    return n(height), n(width)


def core_bounds(i: int, n: int, stride: int, overlap: int, size: int) -> tuple[int, int]:
    """Owned interval [a, b) of tile i of n along one axis (cores partition [0, size))."""
    half = overlap // 2
    a = 0 if i == 0 else i * stride + half
    b = size if i == n - 1 else (i + 1) * stride + half
    return min(a, size), min(b, size)


def make_grid(
    width: int,
    height: int,
    tile_px: int,
    overlap_px: int,
    *,
    level: int = 0,
    downsample: float = 1.0,
    level_scale: float = 1.0,
) -> GridSpec:
    rows, cols = grid_shape(width, height, tile_px, overlap_px)
    return GridSpec(
        level=level,
        downsample=downsample,
        level_scale=level_scale,
        width=width,
        height=height,
        tile_px=tile_px,
        overlap_px=overlap_px,
        rows=rows,
        cols=cols,
    )


def tile_at(grid: GridSpec, row: int, col: int) -> TileSpec:
    s, o = grid.stride_px, grid.overlap_px
    cx0, cx1 = core_bounds(col, grid.cols, s, o, grid.width)
    cy0, cy1 = core_bounds(row, grid.rows, s, o, grid.height)
    return TileSpec(
        index=row * grid.cols + col,
        row=row,
        col=col,
        x=col * s,
        y=row * s,
        w=grid.tile_px,
        h=grid.tile_px,
        core=(cx0, cy0, cx1, cy1),
    )


def iter_tiles(grid: GridSpec) -> list[TileSpec]:
    return [tile_at(grid, r, c) for r in range(grid.rows) for c in range(grid.cols)]
