"""Natural-image models (nominal pixel size, ``mpp_nominal``) run on the input's level-0 pixels
in any unit, with one info line saying so; models with a physical mpp keep the unit check."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest

from tilesegcli.pipeline import predict
from tilesegcli.plan import mpp_is_nominal
from tilesegcli.segmenters.simple import SimpleSegmenter
from tilesegcli.store import TileStore
from tilesegcli.testing import synthetic


@pytest.fixture(scope="module")
def geotiff(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """600 x 500 px RGB GeoTIFF at 0.5 m/px (EPSG:32616) with one overview."""
    img = synthetic.tissue_like(600, 500, seed=7, n_blobs=2)[..., :3]
    return synthetic.write_geotiff(tmp_path_factory.mktemp("geo") / "geo.tif",
                                   np.ascontiguousarray(img), pixel_size=0.5, tile=256,
                                   overviews=1)


@pytest.fixture
def tileseg_log(caplog: pytest.LogCaptureFixture):
    """Records of the "tileseg" logger even after a CLI run turned its propagation off."""
    logger = logging.getLogger("tileseg")
    old = logger.propagate
    logger.propagate = True
    caplog.set_level(logging.INFO, logger="tileseg")
    yield caplog
    logger.propagate = old


def _nominal_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.levelno == logging.INFO and "nominal" in r.getMessage()]


def test_nominal_model_runs_on_geotiff_level0(geotiff, tmp_path, tileseg_log):
    seg = SimpleSegmenter(task="instance", mpp=1.0, mpp_unit="um", mpp_nominal=True,
                          name="natural")
    out = tmp_path / "g.geojson"
    [r] = predict(geotiff, segmenter=seg, output=out)
    assert r.status == "done", r.error
    grid = TileStore.open(r.store).grid
    assert (grid.level, grid.downsample, grid.level_scale) == (0, 1.0, 1.0)
    assert len(_nominal_lines(tileseg_log)) == 1
    doc = json.loads(out.read_text())
    assert doc["crs"]["properties"]["name"].endswith("32616") and doc["features"]
    x, y = doc["features"][0]["geometry"]["coordinates"][0][0]
    assert 500000 <= x <= 500300 and 3699750 <= y <= 3700000  # metres in the CRS


def test_nominal_card_runs_slide_at_level0(slide_svs, tmp_path, tileseg_log):
    """The flag of a real natural-image card (aff-mini.ade20k): on a 0.5 µm/px slide with a
    1 µm/px level, a physical 1.0 µm/px model would read level 1; the nominal one reads level 0.
    (A natural-image model on a microscopy slide needs force=True / --force.)"""
    from tilesegcli.zoo import load_card

    seg = SimpleSegmenter(task="semantic", mpp=1.0, mpp_unit="um", name="ade-like")
    seg.card = load_card("aff-mini.ade20k")  # type: ignore[attr-defined]
    assert mpp_is_nominal(seg)
    [r] = predict(slide_svs, segmenter=seg, output=tmp_path / "s.geojson", force=True)
    assert r.status == "done", r.error
    assert TileStore.open(r.store).grid.downsample == 1.0
    assert len(_nominal_lines(tileseg_log)) == 1
    physical = SimpleSegmenter(task="semantic", mpp=1.0, mpp_unit="um", name="physical")
    [p] = predict(slide_svs, segmenter=physical, output=tmp_path / "p.geojson")
    assert p.status == "done" and TileStore.open(p.store).grid.downsample == 2.0


def test_physical_unit_mismatch_still_fails(geotiff, tmp_path):
    seg = SimpleSegmenter(task="instance", mpp=0.5, mpp_unit="um", name="nuclei-like")
    [r] = predict(geotiff, segmenter=seg, output=tmp_path / "x.geojson")
    assert r.status == "failed" and "\n" not in r.error
    assert "µm/px" in r.error and "m/px" in r.error and "nuclei-like" in r.error
    assert not (tmp_path / "x.geojson").exists()


def test_extending_card_with_real_mpp_is_not_nominal(tmp_path):
    """The models/README recipe: a two-line card giving a natural-image model a real m/px."""
    from tilesegcli.zoo import load_card

    p = tmp_path / "aerial.json"
    p.write_text(json.dumps({"extends": "aff-mini.coco-instance", "name": "coco-aerial",
                             "mpp": 0.3, "mpp_unit": "m"}))
    card = load_card(p)
    seg = SimpleSegmenter(mpp=card.mpp, mpp_unit=card.mpp_unit)
    seg.card = card  # type: ignore[attr-defined]
    assert not mpp_is_nominal(seg)


def test_cli_physical_model_on_geotiff_is_one_line_error(geotiff, tmp_path, run_cli,
                                                         tmp_leftovers):
    """``--model simple`` works in 0.5 µm/px (like aff-nuclei): refused on an m/px GeoTIFF."""
    out = tmp_path / "o" / "n.geojson"
    code, stdout, err = run_cli("predict", geotiff, "-o", out, "--model", "simple")
    assert code == 1 and stdout == "" and "Traceback" not in err
    lines = [ln for ln in err.splitlines() if "error" in ln.lower()]
    assert len(lines) == 1 and "'simple'" in lines[0] and "µm/px" in lines[0], err
    assert "m/px" in lines[0].replace("µm/px", "")
    assert not out.exists() and tmp_leftovers(tmp_path) == []
