"""`tileseg predict` on every item of the "Bad input" list: a one-line error, the right exit
code, nothing half-written (no output, no provenance, no temp files)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from tilesegcli.pipeline import RunConfig, run_slide
from tilesegcli.segmenters.simple import SimpleSegmenter
from tilesegcli.testing import synthetic


def _one_error_line(err: str) -> str:
    assert "Traceback" not in err, err
    lines = [ln for ln in err.splitlines() if "error" in ln.lower()]
    assert len(lines) == 1, err
    return lines[0]


def _nothing_written(d: Path, tmp_leftovers) -> None:
    assert not any(p.suffix in (".geojson", ".geojsonl", ".gz") for p in d.rglob("*")), list(d.rglob("*"))
    assert not list(d.rglob("*.provenance.json"))
    assert tmp_leftovers(d) == []


def test_nonexistent_path(run_cli, tmp_path, tmp_leftovers):
    code, out, err = run_cli("predict", tmp_path / "nope.svs", "--outdir", tmp_path / "o",
                             "--model", "simple")
    assert code == 1 and out == ""
    assert "no such file" in _one_error_line(err)
    _nothing_written(tmp_path, tmp_leftovers)


def test_directory(run_cli, tmp_path, tmp_leftovers):
    (tmp_path / "d.svs").mkdir()
    code, _, err = run_cli("predict", tmp_path / "d.svs", "--outdir", tmp_path / "o", "--model", "simple")
    assert code == 1 and "directory" in _one_error_line(err)
    _nothing_written(tmp_path / "o", tmp_leftovers)


def test_broken_svs(run_cli, tmp_path, tmp_leftovers):
    bad = tmp_path / "broken.svs"
    bad.write_bytes(b"this is not a TIFF file at all\n" * 200)
    code, _, err = run_cli("predict", bad, "-o", tmp_path / "o" / "b.geojson", "--model", "simple")
    assert code == 1 and "broken.svs" in _one_error_line(err)
    _nothing_written(tmp_path, tmp_leftovers)


def _corrupt_second_half(path: Path) -> None:
    """Overwrite the JPEG data of the second half of level-0 tiles with garbage: the slide
    opens (thumbnail from a lower level) but reading fails mid-run."""
    import tifffile

    with tifffile.TiffFile(path) as tf:
        page = tf.pages[0]
        spans = list(zip(page.dataoffsets, page.databytecounts, strict=True))
    with open(path, "r+b") as f:
        for off, n in spans[len(spans) // 2 :]:
            f.seek(off)
            f.write(bytes([0x5A]) * n)


def test_unreadable_svs_fails_mid_run_and_stays_resumable(run_cli, tmp_path, tmp_leftovers):
    # wider than the 2048 px tissue thumbnail, so opening reads level 1 and level 0 fails later
    bad = synthetic.write_slide_tiff(tmp_path / "unreadable.svs",
                                     synthetic.tissue_like(4200, 500, seed=6, n_blobs=4),
                                     kind="svs", mpp=0.5, tile=256)
    _corrupt_second_half(bad)
    out = tmp_path / "o" / "u.geojson"
    code, _, err = run_cli("predict", bad, "-o", out, "--model", "simple", "--batch-size", "2")
    assert code == 1 and "unreadable.svs" in _one_error_line(err)
    assert not out.exists() and tmp_leftovers(tmp_path / "o") == []
    from tilesegcli.store import TileStore

    store = TileStore.open(Path(str(out) + ".tiles.zarr"))  # finished tiles were kept
    assert 0 < store.done_mask().sum() < store.selected.sum()


def test_truncated_svs(run_cli, slide_svs, tmp_path, tmp_leftovers):
    bad = tmp_path / "truncated.svs"
    data = slide_svs.read_bytes()
    bad.write_bytes(data[: len(data) * 2 // 3])
    code, _, err = run_cli("predict", bad, "-o", tmp_path / "o" / "t.geojson", "--model", "simple")
    assert code == 1 and "truncated.svs" in _one_error_line(err)
    assert not (tmp_path / "o" / "t.geojson").exists() and tmp_leftovers(tmp_path) == []


def test_zero_tissue_gives_valid_empty_output(run_cli, tmp_path):
    blank = synthetic.write_slide_tiff(tmp_path / "blank.svs", np.full((900, 700, 3), 242, np.uint8),
                                       kind="svs", mpp=0.5)
    out = tmp_path / "blank.geojson"
    code, stdout, err = run_cli("predict", blank, "-o", out, "--model", "simple")
    assert code == 0, err
    assert stdout.strip() == str(out)
    doc = json.loads(out.read_text())
    assert doc["type"] == "FeatureCollection" and doc["features"] == []
    prov = json.loads((tmp_path / "blank.geojson.provenance.json").read_text())
    assert prov["counts"]["instances"] == 0


def test_image_smaller_than_one_tile(run_cli, tmp_path):
    img = synthetic.tissue_like(120, 90, seed=2, n_blobs=1)
    img[30:40, 50:60] = (90, 40, 140)  # one dark object
    p = synthetic.write_plain_image(tmp_path / "tiny.png", img)
    out = tmp_path / "tiny.geojson"
    code, _, err = run_cli("predict", p, "-o", out, "--model", "simple", "--mpp", "0.5", "--no-mask")
    assert code == 0, err
    feats = json.loads(out.read_text())["features"]
    assert feats and all(max(c[0] for c in f["geometry"]["coordinates"][0]) <= 120 for f in feats)


def test_png_without_mpp_names_the_flag(run_cli, tmp_path):
    p = synthetic.write_plain_image(tmp_path / "nompp.png", synthetic.tissue_like(120, 90))
    code, _, err = run_cli("predict", p, "-o", tmp_path / "n.geojson", "--model", "simple")
    assert code == 1 and "--mpp" in _one_error_line(err)


@pytest.mark.parametrize("kind", ["gray", "rgba", "uint16"])
def test_gray_rgba_16bit_inputs(run_cli, tmp_path, kind):
    rgb = synthetic.tissue_like(1200, 1000, seed=4, n_blobs=2)  # tissue > the 0.01 mm² speck size
    content = {
        "gray": rgb.mean(axis=2).astype(np.uint8),
        "rgba": np.dstack([rgb, np.full(rgb.shape[:2], 255, np.uint8)]),
        "uint16": rgb.astype(np.uint16) * 257,
    }[kind]
    p = synthetic.write_slide_tiff(tmp_path / f"{kind}.tif", content, kind="generic", mpp=0.5,
                                   compression="zlib")
    out = tmp_path / f"{kind}.geojson"
    extra = ["--no-mask"] if kind == "gray" else []  # no saturation -> no "tissue" in gray
    code, _, err = run_cli("predict", p, "-o", out, "--model", "simple", *extra)
    assert code == 0, err
    feats = json.loads(out.read_text())["features"]
    # 16-bit data are contrast-stretched by the reader, so the count differs; all find objects
    assert len(feats) > (10 if kind != "uint16" else 0)


def test_unwritable_output_directory(run_cli, slide_svs, tmp_path, tmp_leftovers):
    blocker = tmp_path / "afile"
    blocker.write_text("x")  # a path under a regular file is unwritable even for root
    code, _, err = run_cli("predict", slide_svs, "-o", blocker / "out.geojson", "--model", "simple")
    assert code == 1 and "out" in _one_error_line(err)
    assert tmp_leftovers(tmp_path) == []
    if os.geteuid() != 0:
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o500)
        code, _, err = run_cli("predict", slide_svs, "-o", ro / "o.geojson", "--model", "simple")
        assert code == 1 and "not writable" in _one_error_line(err)
        assert list(ro.iterdir()) == []


def test_store_from_another_model(run_cli, slide_svs, tmp_path):
    out = tmp_path / "m.geojson"
    r = run_slide(slide_svs, RunConfig(output=out, shard=(0, 2)),
                  segmenter=SimpleSegmenter(name="another-model"))
    assert r.status == "waiting"
    code, _, err = run_cli("predict", slide_svs, "-o", out, "--model", "simple", "--shard", "1/2")
    line = _one_error_line(err)
    assert code == 1 and "another run" in line and "another-model" in line
    assert not out.exists()


def test_two_shards_with_different_n(run_cli, slide_svs, tmp_path):
    out = tmp_path / "n.geojson"
    code, _, err = run_cli("predict", slide_svs, "-o", out, "--model", "simple", "--shard", "0/2")
    assert code == 0, err
    assert not out.exists()  # shard 1/2 has not run: no complete-looking output
    code, _, err = run_cli("predict", slide_svs, "-o", out, "--model", "simple", "--shard", "0/3")
    assert code == 1 and "2 shard" in _one_error_line(err)
    assert not out.exists()


@pytest.mark.parametrize(
    "args",
    [
        [],  # no inputs
        ["a.svs", "b.svs", "-o", "x.geojson"],
        ["a.svs", "--shard", "3/2"],
        ["a.svs", "--device", "tpu", "--model", "simple"],
        ["a.svs", "--batch-size", "0"],
    ],
)
def test_usage_errors_exit_2(run_cli, tmp_path, args):
    code, out, err = run_cli("predict", *args)
    assert code == 2 and out == "" and "Traceback" not in err


@pytest.mark.parametrize("opt", [("--flips", "2"), ("--view-agreement", "0.8")])
def test_flips_needs_a_model_card(run_cli, tmp_path, tmp_leftovers, opt):
    img = tmp_path / "in.svs"
    img.write_bytes(b"x")
    code, _, err = run_cli("predict", img, "--outdir", tmp_path / "o", "--model", "simple", *opt)
    assert code == 2 and opt[0] in _one_error_line(err)
    _nothing_written(tmp_path / "o", tmp_leftovers)
