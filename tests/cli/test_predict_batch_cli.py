"""Batch/HPC behaviour of `tileseg predict` and `tileseg merge`: many inputs, one failure never
stops the others, skip valid outputs, --overwrite, --inputs file/stdin, --summary, provenance,
-o - to stdout, explicit merge."""

from __future__ import annotations

import io
import json
import shutil
import sys

import numpy as np
import pytest


@pytest.fixture
def two_slides(slide_svs, tmp_path):
    a = tmp_path / "in" / "a.svs"
    a.parent.mkdir()
    shutil.copy(slide_svs, a)
    broken = tmp_path / "in" / "broken.svs"
    broken.write_bytes(b"garbage" * 100)
    return a, broken


def test_one_failure_does_not_stop_the_others(run_cli, two_slides, tmp_path):
    a, broken = two_slides
    outdir = tmp_path / "out"
    summary = tmp_path / "run.json"
    code, out, err = run_cli("predict", broken, a, "--outdir", outdir, "--model", "simple",
                             "--summary", summary, "-q")
    assert code == 1
    assert out.splitlines() == [str(outdir / "a.geojson")]  # stdout: results only
    data = json.loads(summary.read_text())
    by = {s["input"]: s for s in data["slides"]}
    assert by[str(broken)]["status"] == "failed" and "broken.svs" in by[str(broken)]["error"]
    ok = by[str(a)]
    assert ok["status"] == "done" and ok["objects"] > 0 and ok["tiles_computed"] == ok["tiles_selected"]
    assert ok["tiles_selected"] < ok["tiles_total"]  # background tiles never reached the model
    assert {"open_s", "infer_s", "forward_s", "merge_s", "total_s"} <= set(ok["timings"])
    assert data["counts"] == {"done": 1, "skipped": 0, "waiting": 0, "failed": 1}
    prov = json.loads((outdir / "a.geojson.provenance.json").read_text())
    assert prov["weights_sha256"] and prov["versions"]["torch"] and prov["command_line"][:2] == ["tileseg", "predict"]
    assert prov["parameters"]["model"] == "simple" and prov["input"]["size"] == a.stat().st_size
    assert prov["counts"]["instances"] == ok["objects"]


def test_skip_valid_output_then_overwrite(run_cli, two_slides, tmp_path):
    a, _ = two_slides
    out = tmp_path / "a.geojson"
    assert run_cli("predict", a, "-o", out, "--model", "simple")[0] == 0
    mtime = out.stat().st_mtime_ns
    code, stdout, _ = run_cli("predict", a, "-o", out, "--model", "simple", "--summary", "-")
    assert code == 0 and json.loads(stdout)["slides"][0]["status"] == "skipped"
    assert out.stat().st_mtime_ns == mtime
    # other output options -> the existing file is not this run's: refuse without --overwrite
    code, _, err = run_cli("predict", a, "-o", out, "--model", "simple", "--min-area", "20")
    assert code == 1 and "--overwrite" in err
    code, stdout, _ = run_cli("predict", a, "-o", out, "--model", "simple", "--min-area", "20",
                              "--overwrite", "--summary", "-")
    s = json.loads(stdout)["slides"][0]
    assert code == 0 and s["status"] == "done" and s["tiles_computed"] == 0  # store reused
    assert out.stat().st_mtime_ns != mtime


def test_inputs_from_file_and_stdin(run_cli, two_slides, tmp_path, monkeypatch):
    a, _ = two_slides
    lst = tmp_path / "list.txt"
    lst.write_text(f"# slides\n{a}\n\n")
    code, out, _ = run_cli("predict", "--inputs", lst, "--outdir", tmp_path / "o1", "--model", "simple")
    assert code == 0 and out.strip() == str(tmp_path / "o1" / "a.geojson")
    monkeypatch.setattr(sys, "stdin", io.StringIO(f"{a}\n"))
    code, out, _ = run_cli("predict", "--inputs", "-", "--outdir", tmp_path / "o2", "--model",
                           "simple", "--format", "geojsonseq", "--workdir", tmp_path / "scratch")
    res = tmp_path / "o2" / "a.geojsonl"
    assert code == 0 and out.strip() == str(res)
    recs = [r for r in res.read_bytes().split(b"\x1e") if r.strip()]
    assert len(recs) > 10 and json.loads(recs[0])["type"] == "Feature"
    assert (tmp_path / "scratch" / "a.geojsonl.tiles.zarr").is_dir()  # --workdir moves the store


def test_stdout_output(run_cli, two_slides, tmp_path):
    a, _ = two_slides
    code, out, _ = run_cli("predict", a, "-o", "-", "--model", "simple", "--workdir", tmp_path)
    doc = json.loads(out)
    assert code == 0 and doc["type"] == "FeatureCollection" and len(doc["features"]) > 10


def test_merge_command(run_cli, two_slides, tmp_path, feature_set):
    a, _ = two_slides
    out = tmp_path / "a.geojson"
    assert run_cli("predict", a, "-o", out, "--model", "simple")[0] == 0
    store = tmp_path / "a.geojson.tiles.zarr"
    code, stdout, err = run_cli("merge", store, "-o", tmp_path / "m.geojson")
    assert code == 0, err
    assert stdout.strip() == str(tmp_path / "m.geojson")
    assert feature_set(tmp_path / "m.geojson") == feature_set(out)
    code, _, err = run_cli("merge", store, "-o", tmp_path / "m.geojson")
    assert code == 1 and "--overwrite" in err
    code, _, err = run_cli("merge", store, "-o", tmp_path / "m.geojson.gz", "--min-area", "1e9")
    assert code == 0
    import gzip

    assert json.loads(gzip.decompress((tmp_path / "m.geojson.gz").read_bytes()))["features"] == []


def test_merge_incomplete_store_is_an_error(run_cli, two_slides, tmp_path):
    a, _ = two_slides
    out = tmp_path / "p.geojson"
    assert run_cli("predict", a, "-o", out, "--model", "simple", "--shard", "0/2")[0] == 0
    code, _, err = run_cli("merge", tmp_path / "p.geojson.tiles.zarr", "-o", tmp_path / "m.geojson")
    assert code == 1 and "not complete" in err and "Traceback" not in err
    assert not (tmp_path / "m.geojson").exists()
    code, _, err = run_cli("merge", tmp_path, "-o", tmp_path / "m.geojson")
    assert code == 1 and "not a tile store" in err


def test_labels_image_written_atomically(run_cli, two_slides, tmp_path):
    a, _ = two_slides
    labels = tmp_path / "a_labels.zarr"
    code, _, err = run_cli("predict", a, "-o", tmp_path / "a.geojson", "--model", "simple",
                           "--labels", labels)
    assert code == 0, err
    import zarr

    inst = zarr.open_group(str(labels / "labels" / "instances"), mode="r")
    assert int(np.asarray(inst["0"][:]).max()) > 10
    assert not [p for p in tmp_path.iterdir() if ".tmp" in p.name]
