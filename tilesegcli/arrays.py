"""``predict_array``: an in-memory image through the code ``tileseg predict`` runs on a slide.

The same grid (``tiling.make_grid``), the same windows (parts outside the image padded white, as
the readers pad), the same segmenter calls (``forward_maps`` + ``tile_result``: the card's
post-processing, flip views and foreground gate) and the same exactly-once stitcher
(``stitch_instances`` with the card's ``min_area``, OverlapResolver included). What it leaves
out is what needs a file: the tissue mask, the tile store and the writers. Training validation
uses it, so thresholds chosen there hold end to end.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any

import numpy as np

from tilesegcli.tiling import iter_tiles, make_grid

if TYPE_CHECKING:
    from tilesegcli.specs import GridSpec, TileSpec
    from tilesegcli.stitching.types import StitchedObject

#: what the readers put outside an image (white glass)
BACKGROUND = 255

RawTile = tuple[Any, Any, Any]  # (logits, masks, dense maps or None) of one tile


def windows(image: np.ndarray, grid: GridSpec, tiles: list[TileSpec]) -> np.ndarray:
    """(N, tile, tile, 3) uint8 windows of ``image`` for ``tiles``, padded with BACKGROUND."""
    t = grid.tile_px
    out = np.full((len(tiles), t, t, 3), BACKGROUND, np.uint8)
    for i, s in enumerate(tiles):
        win = image[s.y:s.y + t, s.x:s.x + t]
        out[i, :win.shape[0], :win.shape[1]] = win
    return out


def forward_tiles(seg: Any, image: np.ndarray, tile: int, overlap: int, batch: int = 8
                  ) -> tuple[GridSpec, list[tuple[TileSpec, RawTile]]]:
    """The network's raw outputs for every tile of ``image`` (one pass; post-processing later,
    so several thresholds can share it)."""
    h, w = image.shape[:2]
    grid = make_grid(w, h, tile, overlap)
    specs = list(iter_tiles(grid))
    raw: list[tuple[TileSpec, RawTile]] = []
    for s in range(0, len(specs), batch):
        part = specs[s:s + batch]
        lg, mk, maps = seg.forward_maps(windows(image, grid, part))
        raw += [(sp, (lg[i], mk[i], None if maps is None else {k: v[i] for k, v in maps.items()}))
                for i, sp in enumerate(part)]
    return grid, raw


def stitch_raw(seg: Any, grid: GridSpec, raw: list[tuple[TileSpec, RawTile]], *,
               score_threshold: float | None = None, fg_gate: float | None = None
               ) -> list[StitchedObject]:
    """Post-process every tile like ``predict_batch`` (optionally other thresholds) and stitch."""
    hw = (grid.tile_px, grid.tile_px)
    return _stitch(seg, grid, ((spec, seg.tile_result(lg, mk, hw, score_threshold=score_threshold,
                                                      maps=maps, fg_gate=fg_gate))
                               for spec, (lg, mk, maps) in raw))


def _stitch(seg: Any, grid: GridSpec, results: Iterable[tuple[TileSpec, Any]]
            ) -> list[StitchedObject]:
    """The pipeline's instance stitcher with the segmenter's ``min_area`` (0 when it has none)."""
    from tilesegcli.stitching import stitch_instances

    return list(stitch_instances(grid, results,
                                 min_area_px=float(getattr(seg, "min_area", 0) or 0)))


def predict_array(seg: Any, image: np.ndarray, *, tile_size: int | None = None,
                  overlap: int | None = None, batch_size: int = 8) -> list[StitchedObject]:
    """Instances of an (H, W, 3) uint8 image already at the model's resolution (working px).
    Any ``Segmenter`` works; one without ``forward_maps`` is called through ``predict_batch``."""
    tile = tile_size or seg.tile_size
    ov = seg.overlap if overlap is None else overlap
    if hasattr(seg, "forward_maps"):
        grid, raw = forward_tiles(seg, image, tile, ov, batch_size)
        return stitch_raw(seg, grid, raw)
    h, w = image.shape[:2]
    grid = make_grid(w, h, tile, ov)
    specs = list(iter_tiles(grid))

    def results() -> Iterator[tuple[TileSpec, Any]]:
        for s in range(0, len(specs), batch_size):
            part = specs[s:s + batch_size]
            yield from zip(part, seg.predict_batch(windows(image, grid, part)), strict=True)

    return _stitch(seg, grid, results())


def objects_to_labels(objs: list[StitchedObject], shape: tuple[int, int]) -> np.ndarray:
    """(H, W) int32 label image of stitched objects (1..N in order; pixel centres inside)."""
    from rasterio.features import rasterize

    if not objs:
        return np.zeros(shape, np.int32)
    return rasterize(((o.geometry, i + 1) for i, o in enumerate(objs)), out_shape=shape,
                     fill=0, dtype="int32")
