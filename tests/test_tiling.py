from __future__ import annotations

import numpy as np
import pytest

from tilesegcli.tiling import iter_tiles, make_grid


@pytest.mark.parametrize(
    "w,h,tile,ov", [(1000, 700, 256, 32), (256, 256, 256, 64), (100, 50, 256, 32), (1025, 513, 128, 0)]
)
def test_cores_partition_image(w: int, h: int, tile: int, ov: int) -> None:
    grid = make_grid(w, h, tile, ov)
    cover = np.zeros((h, w), np.int32)
    for t in iter_tiles(grid):
        x0, y0, x1, y1 = t.core
        # the core lies inside the tile's read window
        assert t.x <= x0 and x1 <= t.x + t.w and t.y <= y0 and y1 <= t.y + t.h
        cover[y0:y1, x0:x1] += 1
    assert (cover == 1).all()


def test_bad_overlap() -> None:
    with pytest.raises(ValueError):
        make_grid(100, 100, 64, 64)
