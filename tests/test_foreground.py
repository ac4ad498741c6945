"""Tissue masks, valid masks, ROI and the tile filter."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tilesegcli.errors import UsageError
from tilesegcli.foreground import (
    ForegroundMask,
    foreground_boxes,
    foreground_mask,
    load_roi,
    select_tiles,
    tile_has_foreground,
    tissue_mask,
)
from tilesegcli.readers import open_reader
from tilesegcli.testing import synthetic as syn
from tilesegcli.tiling import iter_tiles, make_grid


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max(1, (a | b).sum()))


@pytest.mark.parametrize("pen", [None, "blue", "green", "black"])
def test_tissue_mask_pen_and_black_border(pen: str | None) -> None:
    img, truth = syn.tissue_like_with_truth(600, 450, seed=4, pen=pen, black_border=10)
    m = tissue_mask(img)
    assert _iou(m, truth) > 0.95
    if pen is not None:  # the ink stroke across the tissue is excluded
        band = (img == {"blue": (40, 70, 190), "green": (40, 160, 80),
                        "black": (25, 25, 30)}[pen]).all(axis=2)
        assert band.sum() > 1000 and m[band].mean() < 0.05
    assert not m[:10].any() and not m[:, -10:].any()  # black scanner border


def test_all_tissue_slide_is_all_foreground(tmp_path: Path) -> None:
    """No glass at all: Otsu would split nuclei from stroma; the clamp keeps stroma as tissue."""
    scene = syn.disc_scene(1200, 900, n=200, seed=2)
    p = syn.write_slide_tiff(tmp_path / "full.svs", scene.paint, width=1200, height=900,
                             kind="svs", mpp=0.5)
    with open_reader(p) as r:
        fg = foreground_mask(r, max_px=400)
    assert fg.fraction > 0.99


def test_haematoxylin_blue_tissue_is_not_pen() -> None:
    img, truth = syn.tissue_like_with_truth(400, 300, seed=6, n_blobs=2)
    for colour in ((120, 120, 190), (110, 70, 170), (150, 100, 60)):  # IHC counterstain, H, DAB
        tinted = img.copy()
        tinted[truth] = colour
        assert _iou(tissue_mask(tinted), truth) > 0.95, colour


def test_blank_slide_has_no_tissue() -> None:
    for bg in (242, 255, 200):
        assert not tissue_mask(syn.tissue_like(400, 300, n_blobs=0, seed=1, background=bg)).any()
    assert not tissue_mask(np.zeros((50, 50, 3), np.uint8)).any()  # all black


def test_foreground_mask_on_slide_selects_tissue_tiles(tmp_path: Path) -> None:
    img, truth = syn.tissue_like_with_truth(2000, 1400, seed=7, n_blobs=2)
    p = syn.write_slide_tiff(tmp_path / "t.svs", img, kind="svs", mpp=0.5)
    with open_reader(p) as r:
        fg = foreground_mask(r, max_px=500)
    assert fg.source == "tissue" and fg.downsample == pytest.approx(4.0)
    assert fg.mask.shape == (350, 500)
    grid = make_grid(1000, 700, 128, 16, level=1, downsample=2.0, level_scale=1.0)
    tiles = iter_tiles(grid)
    kept = select_tiles(fg, grid)
    assert 0 < len(kept) < len(tiles)
    # every tile whose read window contains ground-truth tissue is kept
    kept_idx = {t.index for t in kept}
    for t in tiles:
        x0, y0 = t.x * 2, t.y * 2
        has = truth[max(0, y0) : y0 + t.h * 2, max(0, x0) : x0 + t.w * 2].any()
        if has:
            assert t.index in kept_idx
    # and dropped tiles are really background (no tissue pixel inside)
    for t in tiles:
        if t.index not in kept_idx:
            assert not truth[t.y * 2 : (t.y + t.h) * 2, t.x * 2 : (t.x + t.w) * 2].any()
    assert select_tiles(None, grid) == tiles


def test_zero_tissue_slide_selects_nothing(tmp_path: Path) -> None:
    p = syn.write_slide_tiff(tmp_path / "blank.svs", syn.tissue_like(800, 600, n_blobs=0),
                             kind="svs", mpp=0.5)
    with open_reader(p) as r:
        fg = foreground_mask(r, max_px=256)
        assert fg.fraction == 0.0
        grid = make_grid(800, 600, 256, 32)
        assert select_tiles(fg, grid) == []
        none = foreground_mask(r, mode="none", max_px=256)  # --no-mask
        assert none.mask.all() and len(select_tiles(none, grid)) == grid.rows * grid.cols


def test_geotiff_valid_mask_mode(tmp_path: Path) -> None:
    img = np.random.default_rng(0).integers(1, 255, (200, 300, 3), dtype=np.uint8)
    img[:, :100] = 0
    p = syn.write_geotiff(tmp_path / "g.tif", img, nodata=0)
    with open_reader(p) as r:
        fg = foreground_mask(r, max_px=150)
    assert fg.source == "valid" and fg.downsample == 2.0
    assert not fg.mask[:, :49].any() and fg.mask[:, 51:].all()
    grid = make_grid(300, 200, 64, 0)
    kept = select_tiles(fg, grid)
    assert {t.col for t in kept} == {1, 2, 3, 4} and len(kept) == 4 * grid.rows
    q = syn.write_geotiff(tmp_path / "plain.tif", img)  # no mask source: everything is valid
    with open_reader(q) as r:
        fg = foreground_mask(r, max_px=150)
        assert fg.mask.all()
        with pytest.raises(UsageError):
            foreground_mask(r, mode="bogus")


def test_roi_qupath_and_georeferenced(tmp_path: Path) -> None:
    roi_doc = [{"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [
        [[100, 100], [400, 100], [400, 300], [100, 300], [100, 100]]]},
        "properties": {"objectType": "annotation", "classification": {"name": "Region*"}}},
        {"type": "Feature", "geometry": {"type": "Point", "coordinates": [5, 5]}}]
    f = tmp_path / "roi.geojson"
    f.write_text(json.dumps(roi_doc))
    roi = load_roi(f)
    assert roi.bounds == (100.0, 100.0, 400.0, 300.0)
    p = syn.write_slide_tiff(tmp_path / "s.svs", syn.tissue_like(800, 600, seed=2), kind="svs")
    with open_reader(p) as r:
        fg = foreground_mask(r, mode="none", roi=roi, max_px=200)
    assert fg.source == "none+roi"
    ys, xs = np.nonzero(fg.mask)
    assert 23 <= xs.min() <= 25 and 99 <= xs.max() <= 101 and 23 <= ys.min() <= 25
    grid = make_grid(800, 600, 100, 0)
    assert sorted((t.col, t.row) for t in select_tiles(fg, grid)) == [
        (c, rw) for c in (1, 2, 3) for rw in (1, 2)]
    # georeferenced: ROI in CRS coordinates, mapped through the inverse geotransform
    g = syn.write_geotiff(tmp_path / "g.tif", np.ones((100, 100, 3), np.uint8), pixel_size=2.0,
                          origin=(1000.0, 5000.0))
    geo_roi = {"type": "FeatureCollection", "features": [{"type": "Feature", "geometry": {
        "type": "Polygon", "coordinates": [[[1020, 4980], [1060, 4980], [1060, 4940],
                                            [1020, 4940], [1020, 4980]]]}}]}
    gf = tmp_path / "g.geojson"
    gf.write_text(json.dumps(geo_roi))
    with open_reader(g) as r:
        assert load_roi(gf, r.info).bounds == (10.0, 10.0, 30.0, 30.0)
        pf = tmp_path / "px.geojson"  # drawn in pixel coordinates on the raster (QuPath)
        pf.write_text(json.dumps({"type": "Polygon", "coordinates": [
            [[10, 10], [50, 10], [50, 40], [10, 40], [10, 10]]]}))
        assert load_roi(pf, r.info).bounds == (10.0, 10.0, 50.0, 40.0)
    bad = tmp_path / "bad.geojson"
    bad.write_text("{not json")
    with pytest.raises(UsageError, match="bad.geojson"):
        load_roi(bad)
    pts = tmp_path / "pts.geojson"
    pts.write_text(json.dumps({"type": "Point", "coordinates": [1, 2]}))
    with pytest.raises(UsageError, match="no polygon"):
        load_roi(pts)


def test_box_tests_exact() -> None:
    mask = np.zeros((10, 10), bool)
    mask[4, 6] = True  # level-0 [24, 28) x [16, 20) with downsample 4
    assert tile_has_foreground(mask, 4.0, (24, 16, 4, 4))
    assert tile_has_foreground(mask, 4.0, (0, 0, 25, 17))
    assert not tile_has_foreground(mask, 4.0, (0, 0, 24, 40))  # ends where the pixel starts
    assert not tile_has_foreground(mask, 4.0, (28, 0, 10, 40))
    assert not tile_has_foreground(mask, 4.0, (-100, -100, 50, 50))
    boxes = np.array([(24, 16, 4, 4), (0, 0, 8, 8), (20, 12, 12, 12)])
    assert foreground_boxes(mask, 4.0, boxes).tolist() == [True, False, True]
    assert foreground_boxes(mask, 4.0, boxes, min_fraction=0.5).tolist() == [True, False, False]
    fm = ForegroundMask(mask=mask, downsample=4.0, source="test")
    assert fm.fraction == 0.01
