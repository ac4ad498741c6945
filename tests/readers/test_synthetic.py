"""The synthetic input generators others' tests and benchmarks rely on."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tilesegcli.readers import open_reader
from tilesegcli.testing import synthetic as syn


def test_disc_scene_random_is_seeded_and_non_overlapping() -> None:
    a = syn.disc_scene(800, 600, n=40, seed=1)
    b = syn.disc_scene(800, 600, n=40, seed=1)
    assert len(a.cx) == 40 and np.array_equal(a.cx, b.cx)
    lab = a.labels(0, 0, 800, 600)
    ids, counts = np.unique(lab, return_counts=True)
    assert list(ids) == list(range(41))  # every disc visible, none swallowed by another
    np.testing.assert_allclose(counts[1:], np.pi * a.r**2, rtol=0.1)
    # windows agree with the full render; paint colours follow the labels
    np.testing.assert_array_equal(a.labels(100, 50, 300, 200), lab[50:250, 100:400])
    img = a.paint(0, 0, 800, 600)
    assert (img[lab == 0] == a.background).all() and (img[lab > 0] == a.colours[0]).all()


def test_disc_scene_grid_scales_to_millions() -> None:
    s = syn.disc_scene(100_000, 100_000, n=1_000_000, layout="grid", n_classes=2, seed=0)
    assert len(s.cx) > 990_000 and set(np.unique(s.cls)) == {1, 2}
    lab = s.labels(50_000, 50_000, 512, 512)
    ids = np.unique(lab)[1:]
    assert len(ids) > 10
    areas = np.bincount(lab.ravel())[ids]
    inside = [(s.cx[i - 1] - s.r[i - 1] > 50_000 and s.cx[i - 1] + s.r[i - 1] < 50_512
               and s.cy[i - 1] - s.r[i - 1] > 50_000 and s.cy[i - 1] + s.r[i - 1] < 50_512)
              for i in ids]
    full = areas[np.array(inside)]
    np.testing.assert_allclose(full, np.pi * s.r[ids[np.array(inside)] - 1] ** 2, rtol=0.15)
    with pytest.raises(ValueError):
        syn.disc_scene(10, 10, layout="hex")
    with pytest.raises(ValueError, match="JPEG"):
        syn.write_slide_tiff("unused.tif", np.zeros((8, 8), np.uint16))


def test_pattern_painter_levels_consistent(tmp_path: Path) -> None:
    pat = syn.tissue_like(64, 48, seed=1)
    paint = syn.pattern_painter(pat)
    np.testing.assert_array_equal(paint(60, 40, 10, 10, 1.0)[:4, :4], pat[40:44, 60:64])
    np.testing.assert_array_equal(paint(64, 48, 64, 48, 1.0), pat)
    p = syn.write_slide_tiff(tmp_path / "p.svs", paint, width=1000, height=700, kind="svs",
                             compression="zlib", tile=128)
    with open_reader(p) as r:
        np.testing.assert_array_equal(r.read_region(0, 123, 77, 200, 100), paint(123, 77, 200, 100, 1.0))
        assert r.read_region(2, 0, 0, 16, 12).shape == (12, 16, 3)


def test_tissue_truth_and_variants() -> None:
    img, truth = syn.tissue_like_with_truth(300, 200, seed=9, pen="green", black_border=5)
    assert img.shape == (200, 300, 3) and truth.shape == (200, 300) and 0.05 < truth.mean() < 0.6
    assert not truth[:5].any() and (img[:5] < 30).all()
    blank = syn.tissue_like(100, 80, n_blobs=0)
    assert blank.min() > 220


def test_geotiff_writer_tags(tmp_path: Path) -> None:
    import tifffile

    p = syn.write_geotiff(tmp_path / "g.tif", np.zeros((10, 20), np.uint16), epsg=32616,
                          pixel_size=(0.5, 0.25), origin=(10.0, 20.0), nodata=0)
    with tifffile.TiffFile(p) as tf:
        page = tf.pages[0]
        assert page.is_geotiff
        assert tf.geotiff_metadata["ProjectedCSTypeGeoKey"] == 32616
        assert page.tags[syn.TAG_MODEL_PIXEL_SCALE].value[:2] == (0.5, 0.25)
        assert page.tags[syn.TAG_GDAL_NODATA].value.strip("\x00") == "0"
    with open_reader(p) as r:
        assert r.info.geotransform == (10.0, 0.5, 0.0, 20.0, 0.0, -0.25)
        assert r.info.mpp == pytest.approx(0.375)
