"""OME-Zarr labels: NGFF 0.4 multiscale label images readable by the ome-zarr reader, equal to the
stitched objects burned in, whatever order the objects arrive in."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tilesegcli.segmenter import ClassInfo
from tilesegcli.specs import LevelInfo, SlideInfo
from tilesegcli.stitching import stitch_instances, stitch_semantic
from tilesegcli.testing.oracle import OracleSegmenter
from tilesegcli.tiling import iter_tiles, make_grid
from tilesegcli.writers import open_labels_writer

CLASSES = [ClassInfo("background", (0, 0, 0)), ClassInfo("Tumor", (200, 0, 0)), ClassInfo("Stroma", (0, 150, 0))]


def ground_truth(h: int = 700, w: int = 520, seed: int = 3):
    rng = np.random.default_rng(seed)
    gt = np.zeros((h, w), np.int32)
    yy, xx = np.mgrid[:h, :w]
    n = 0
    for _ in range(120):
        cy, cx, r = rng.uniform(0, h), rng.uniform(0, w), rng.uniform(2, 40)
        m = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
        if m.any() and not gt[m].any():
            n += 1
            gt[m] = n
    classes = np.concatenate([[0], rng.integers(1, 3, n)])
    return gt, classes


def stitched(gt, classes, tile=128, overlap=32):
    grid = make_grid(gt.shape[1], gt.shape[0], tile, overlap, downsample=2.0)
    oracle = OracleSegmenter(gt, classes, CLASSES, tile, overlap)
    return grid, list(stitch_instances(grid, ((s, oracle.predict_tiles([s])[0]) for s in iter_tiles(grid))))


def read_labels(path: Path):
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Reader

    nodes = {Path(n.zarr.path).name: n for n in Reader(parse_url(str(path / "labels")))()}
    return nodes


@pytest.mark.parametrize("order,chunk", [("stream", 64), ("reversed", 64), ("stream", 16)])
def test_labels_round_trip_ome_zarr_reader(tmp_path: Path, order: str, chunk: int) -> None:
    gt, classes = ground_truth()
    grid, objs = stitched(gt, classes)
    if order == "reversed":
        objs = objs[::-1]  # every object arrives late: read-modify-write path
    info = SlideInfo("s.svs", "openslide", 1040, 1400, (LevelInfo(1040, 1400, 1.0),), mpp=0.25)
    out = tmp_path / "labels.ome.zarr"
    with open_labels_writer(out, grid=grid, classes=CLASSES, info=info, band_px=64, chunk_px=chunk,
                            lag_px=0) as lw:
        ids = [lw.add(o) for o in objs]
    assert ids == list(range(1, len(objs) + 1))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["labels.ome.zarr"]
    nodes = read_labels(out)
    assert {"instances", "classes"} <= set(nodes)
    inst = np.asarray(nodes["instances"].data[0])
    cls = np.asarray(nodes["classes"].data[0])
    assert inst.shape == gt.shape and inst.dtype == np.uint32
    assert len(nodes["instances"].data) == len(nodes["classes"].data) > 1
    for k in range(1, len(nodes["instances"].data)):  # chunk 16: pyramid built in column blocks
        assert np.array_equal(np.asarray(nodes["instances"].data[k]), inst[:: 2**k, :: 2**k])
        assert np.array_equal(np.asarray(nodes["classes"].data[k]), cls[:: 2**k, :: 2**k])
    # the instance raster is the ground truth up to renumbering, the class raster is exact
    pairs = np.unique(np.stack([gt.ravel(), inst.ravel().astype(np.int64)]), axis=1)
    assert pairs.shape[1] == len(np.unique(gt))  # a bijection between gt ids and written ids
    assert np.array_equal(cls, classes[gt])
    meta = json.loads((out / "labels" / "instances" / ".zattrs").read_text())
    il = meta["image-label"]
    assert il["version"] == "0.4" and len(il["colors"]) == len(objs)
    first = objs[0]
    assert il["colors"][0] == {"label-value": 1, "rgba": [*CLASSES[first.class_id].color, 255]}
    assert il["properties"][0]["class"] == CLASSES[first.class_id].name
    ms = meta["multiscales"][0]
    assert ms["axes"][0]["unit"] == "micrometer"
    assert ms["datasets"][0]["coordinateTransformations"][0]["scale"] == [0.5, 0.5]  # 0.25 µm x 2
    assert json.loads((out / "labels" / ".zattrs").read_text())["labels"] == ["instances", "classes"]


def test_semantic_regions_to_class_map(tmp_path: Path) -> None:
    cm = np.zeros((300, 400), np.uint8)
    cm[20:280, 30:370] = 1
    cm[100:200, 100:200] = 2
    grid = make_grid(400, 300, 96, 16)
    oracle = OracleSegmenter(None, None, CLASSES, 96, 16, semantic=cm)
    regions = stitch_semantic(grid, ((s, oracle.predict_tiles([s])[0]) for s in iter_tiles(grid)), classes=CLASSES)
    out = tmp_path / "sem.zarr"
    with open_labels_writer(out, grid=grid, classes=CLASSES) as lw:
        for r in regions:
            assert lw.add(r) == 0  # regions get no instance id
    nodes = read_labels(out)
    assert np.array_equal(np.asarray(nodes["classes"].data[0]), cm)
    assert not np.asarray(nodes["instances"].data[0]).any()


def test_abort_leaves_nothing(tmp_path: Path) -> None:
    gt, classes = ground_truth(200, 200)
    grid, objs = stitched(gt, classes)
    with pytest.raises(RuntimeError):
        with open_labels_writer(tmp_path / "x.zarr", grid=grid, classes=CLASSES) as lw:
            lw.add(objs[0])
            raise RuntimeError("stop")
    assert list(tmp_path.iterdir()) == []
