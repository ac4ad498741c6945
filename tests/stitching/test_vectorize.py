"""vectorize: pixel-exact valid polygons with holes; working px -> level 0 -> CRS; units."""

from __future__ import annotations

import numpy as np
import pytest
import shapely
from scipy import ndimage

from tilesegcli.segmenter import ClassInfo
from tilesegcli.specs import LevelInfo, SlideInfo, TileSpec
from tilesegcli.stitching import StitchedObject
from tilesegcli.testing.oracle import OracleSegmenter
from tilesegcli.vectorize import (
    OutputTransform,
    class_map_to_geometries,
    labels_to_geometries,
    mask_to_geometry,
)


def test_random_labels_area_equals_pixel_count_and_valid() -> None:
    rng = np.random.default_rng(0)
    lab = ndimage.label(ndimage.gaussian_filter(rng.standard_normal((300, 300)), 2) > 0.05)[0]
    lab[rng.random(lab.shape) < 0.03] = 0  # pepper: holes, diagonal contacts, odd shapes
    geoms = labels_to_geometries(lab, offset=(10, 20))
    counts = np.bincount(lab.ravel())
    assert set(geoms) == set(np.nonzero(counts[1:])[0] + 1)
    assert all(g.is_valid for g in geoms.values())
    assert all(geoms[k].area == counts[k] for k in geoms)
    assert any(len(getattr(g, "interiors", ())) for g in geoms.values())
    k = max(geoms, key=lambda k: counts[k])
    ys, xs = np.nonzero(lab == k)
    assert geoms[k].bounds == (xs.min() + 10, ys.min() + 20, xs.max() + 11, ys.max() + 21)


def test_mask_shapes() -> None:
    m = np.zeros((10, 10), bool)
    m[2:8, 2:8] = True
    m[4:6, 4:6] = False  # hole
    g = mask_to_geometry(m)
    assert g.geom_type == "Polygon" and len(g.interiors) == 1 and g.area == 32
    d = np.zeros((4, 4), bool)
    d[0, 0] = d[1, 1] = True  # diagonal neighbours: two 4-connected parts
    g = mask_to_geometry(d)
    assert g.geom_type == "MultiPolygon" and g.is_valid and g.area == 2
    assert mask_to_geometry(np.zeros((3, 3), bool)).is_empty
    big = np.zeros((5, 5), np.int64)
    big[1:3, 1:3] = 7
    assert labels_to_geometries(big)[7].area == 4


def test_class_map_geometries() -> None:
    cm = np.zeros((20, 20), np.uint8)
    cm[2:18, 2:18] = 1
    cm[6:10, 6:10] = 2
    out = class_map_to_geometries(cm)
    assert len(out[1]) == 1 and len(out[1][0].interiors) == 1 and out[2][0].area == 16


def _obj(geom, score=0.5):
    return StitchedObject(geom, 1, score)


def test_output_transform_slide_units() -> None:
    info = SlideInfo("s.svs", "openslide", 4000, 4000, (LevelInfo(4000, 4000, 1.0),), mpp=0.25)
    xf = OutputTransform(4.0, info=info)  # working px = 4 level-0 px = 1 µm
    out = xf(_obj(shapely.box(10, 20, 30, 25), 0.8))
    assert out.geometry.bounds == (40, 80, 120, 100)  # level-0 px
    m = out.measurements
    assert m["Area µm^2"] == pytest.approx(100.0)
    assert m["Perimeter µm"] == pytest.approx(50.0)
    assert m["Centroid X µm"] == pytest.approx(20.0) and m["Centroid Y µm"] == pytest.approx(22.5)
    assert m["Score"] == pytest.approx(0.8)
    xf = OutputTransform(4.0, info=info, min_area=50.0, simplify=0.5)
    assert xf(_obj(shapely.box(0, 0, 7, 7))) is None  # 49 µm² < 50 µm²
    assert xf.min_area_px == pytest.approx(50.0) and xf.simplify_px == pytest.approx(0.5)
    assert xf(_obj(shapely.box(0, 0, 8, 8))) is not None
    nompp = OutputTransform(2.0)
    assert set(nompp(_obj(shapely.box(0, 0, 1, 1))).measurements) >= {"Area px^2", "Perimeter px"}
    assert nompp(_obj(shapely.box(0, 0, 1, 1))).measurements["Area px^2"] == 4.0


def test_output_transform_geotransform() -> None:
    gt = (733000.0, 0.5, 0.0, 3725000.0, 0.0, -0.5)
    info = SlideInfo("a.tif", "tifffile", 900, 900, (LevelInfo(900, 900, 1.0),), mpp=0.5, mpp_unit="m",
                     crs="EPSG:32616", geotransform=gt)
    xf = OutputTransform(2.0, info=info, crs=True)
    out = xf(_obj(shapely.box(10, 10, 20, 30)))
    assert out.geometry.bounds == (733010.0, 3724970.0, 733020.0, 3724990.0)
    assert out.geometry.exterior.is_ccw  # right-hand rule after the y flip
    assert out.measurements["Area m^2"] == pytest.approx(out.geometry.area)
    with pytest.raises(ValueError):
        OutputTransform(1.0, info=SlideInfo("b", "pillow", 1, 1, (), None), crs=True)


def test_oracle_windows_and_padding() -> None:
    gt = np.zeros((50, 60), np.int32)
    gt[0:5, 0:5] = 3
    gt[40:50, 50:60] = 9
    classes = [ClassInfo("bg", (0, 0, 0)), ClassInfo("a", (1, 2, 3)), ClassInfo("b", (4, 5, 6))]
    orc = OracleSegmenter(gt, {3: 2, 9: 1}, classes, 32, 8, gt_scores={3: 0.25}, semantic=(gt > 0).astype(np.uint8))
    from tilesegcli.segmenter import Segmenter

    assert isinstance(orc, Segmenter) and orc.task == "panoptic"
    spec = TileSpec(index=0, row=0, col=0, x=40, y=30, w=32, h=32, core=(40, 30, 60, 50))
    res = orc.predict_tiles([spec])[0]
    assert res.labels.shape == (32, 32) and res.labels.dtype == np.int32
    assert res.num_instances == 1 and res.labels[10:20, 10:20].min() == 1 and res.labels[20:, :].max() == 0
    assert list(res.instance_classes) == [1] and res.instance_scores[0] == 1.0
    assert res.semantic.shape == (3, 32, 32) and res.semantic[1, 15, 15] == 1.0
    first = orc.predict_tiles([TileSpec(0, 0, 0, 0, 0, 32, 32, (0, 0, 32, 32))])[0]
    assert list(first.instance_classes) == [2] and first.instance_scores[0] == pytest.approx(0.25)
    with pytest.raises(Exception, match="windows"):
        orc.predict_batch(np.zeros((1, 32, 32, 3), np.uint8))
    assert len(orc.predict_batch(np.zeros((1, 32, 32, 3), np.uint8), windows=[spec])) == 1
