"""Natural-image cards on microscopy slides (issue 16.4): ``--model aff-base`` (Cityscapes, no
physical pixel size) on an H&E slide with a µm/px pixel size is refused without ``--force``,
before any weights are downloaded; ``tileseg models`` says domain, licence and where the
weights are (bundled / cached / download)."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tilesegcli.pipeline import predict
from tilesegcli.segmenters.simple import SimpleSegmenter
from tilesegcli.testing import synthetic


@pytest.fixture
def empty_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "cache"
    monkeypatch.setenv("TILESEG_HOME", str(home))
    monkeypatch.setenv("TILESEG_OFFLINE", "1")
    return home


def _tileseg(*args: object, home: Path) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, TILESEG_HOME=str(home), TILESEG_OFFLINE="1", OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-m", "tilesegcli", *map(str, args)], env=env,
                          capture_output=True, text=True, timeout=120)


def test_street_scene_model_on_he_slide_is_refused(slide_svs, tmp_path, empty_cache):
    s = tmp_path / "run.json"
    p = _tileseg("predict", slide_svs, "-o", tmp_path / "a.geojson", "--model", "aff-base",
                 "--summary", s, "-q", home=empty_cache)
    assert p.returncode == 2 and p.stdout == ""
    [line] = p.stderr.splitlines()
    assert line.startswith("tileseg: error: model aff-base was trained on street scenes "
                           "(Cityscapes)")
    assert "0.5 um/px" in line and "--force" in line and slide_svs.name in line
    assert json.loads(s.read_text())["exit_code"] == 2
    assert not (tmp_path / "a.geojson").exists() and not empty_cache.exists()  # no download


def test_force_goes_past_the_refusal(slide_svs, tmp_path, empty_cache):
    # offline with an empty cache: with --force the run gets as far as needing the weights
    p = _tileseg("predict", slide_svs, "-o", tmp_path / "a.geojson", "--model", "aff-base",
                 "--force", "-q", home=empty_cache)
    assert p.returncode == 1 and "downloads are off" in p.stderr
    assert "trained on street scenes" not in p.stderr


def test_natural_model_still_runs_on_photos_and_geotiffs(tmp_path, empty_cache):
    png = synthetic.write_plain_image(tmp_path / "photo.png",
                                      synthetic.tissue_like(300, 200, seed=1, n_blobs=1))
    geo = synthetic.write_geotiff(tmp_path / "geo.tif",
                                  np.ascontiguousarray(synthetic.tissue_like(300, 200, seed=2)
                                                       [..., :3]), pixel_size=0.5)
    for src in (png, geo):  # no pixel size / metres: past the check, stops at the weights
        p = _tileseg("predict", src, "-o", tmp_path / f"{src.stem}.geojson", "--model",
                     "aff-base", "-q", home=empty_cache)
        assert p.returncode == 1 and "downloads are off" in p.stderr, p.stderr


def test_api_segmenter_with_a_street_card(slide_svs, tmp_path, caplog):
    from tilesegcli.zoo import load_card

    seg = SimpleSegmenter(task="panoptic", mpp=1.0, mpp_unit="um", name="city-like")
    seg.card = load_card("aff-base")  # type: ignore[attr-defined]
    [r] = predict(slide_svs, segmenter=seg, output=tmp_path / "a.geojson")
    assert r.status == "failed" and "street scenes" in r.error and "--force" in r.error
    logger = logging.getLogger("tileseg")
    old, logger.propagate = logger.propagate, True
    try:
        caplog.set_level(logging.WARNING, logger="tileseg")
        [r] = predict(slide_svs, segmenter=seg, output=tmp_path / "a.geojson", force=True)
    finally:
        logger.propagate = old
    assert r.status == "done", r.error
    assert any("running anyway (--force)" in m for m in caplog.messages)


def test_models_table_and_show(empty_cache):
    p = _tileseg("models", home=empty_cache)
    assert p.returncode == 0
    head = p.stdout.splitlines()[0].split()
    assert head == ["NAME", "TASK", "DOMAIN", "CLASSES", "MPP", "TILE", "WEIGHTS", "LICENCE"]
    rows = {ln.split()[0]: ln for ln in p.stdout.splitlines()[1:]}
    assert "street scenes (Cityscapes)" in rows["aff-base"] and "download" in rows["aff-base"]
    assert "microscopy" in rows["aff-nuclei"] and "bundled" in rows["aff-nuclei"]
    assert "non-commercial" in rows["aff-nuclei"]
    show = _tileseg("models", "show", "aff-base", home=empty_cache)
    assert "source:      bundled" not in show.stdout  # the card is bundled, not its weights
    assert "weights:     not downloaded yet" in show.stdout
    assert "domain:      street scenes (Cityscapes)" in show.stdout
    j = json.loads(_tileseg("models", "--json", home=empty_cache).stdout)
    by = {c["name"]: c for c in j}
    assert by["aff-base"]["weights_status"] == "downloadable"
    assert by["aff-nuclei"]["weights_status"] == "bundled"
    assert Path(by["aff-nuclei"]["weights_path"]).is_file()
    # a file in the cache turns "download" into "cached"
    cached = Path(by["aff-base"]["weights_path"])
    assert cached.is_relative_to(empty_cache)
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"x")
    show = json.loads(_tileseg("models", "show", "aff-base", "--json", home=empty_cache).stdout)
    assert show["weights_status"] == "cached" and show["weights_path"] == str(cached)
    assert show["card_source"].startswith("bundled with tileseg")
