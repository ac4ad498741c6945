"""predict_array: an in-memory image through the pipeline's tiling, segmenter and stitcher."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from tilesegcli.arrays import objects_to_labels, predict_array, windows
from tilesegcli.eval.metrics import instance_stats
from tilesegcli.segmenter import TileResult
from tilesegcli.tiling import iter_tiles, make_grid


def _discs(h: int, w: int, seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    gt = np.zeros((h, w), np.int32)
    yy, xx = np.mgrid[0:h, 0:w]
    for _ in range(300):
        cy, cx, r = rng.uniform(0, h), rng.uniform(0, w), rng.uniform(3, 12)
        d = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
        if not gt[(yy - cy) ** 2 + (xx - cx) ** 2 <= (r + 2) ** 2].any():
            gt[d] = gt.max() + 1
    return gt


def test_windows_pad_white_like_the_readers() -> None:
    img = np.zeros((50, 70, 3), np.uint8)
    grid = make_grid(70, 50, 32, 8)
    w = windows(img, grid, list(iter_tiles(grid)))
    assert w.shape[1:] == (32, 32, 3) and (w[-1, -1, -1] == 255).all() and (w[0] == 0).all()


class DarkComponents:
    """A real (if simple) segmenter: dark pixels, 4-connected components."""

    name, task, mpp, mpp_unit, tile_size, overlap, min_area = "dark", "instance", 0.5, "um", 64, 32, 0
    classes = ()

    def predict_batch(self, tiles: np.ndarray) -> list[TileResult]:
        from skimage.measure import label

        out = []
        for t in tiles:
            lab = label(t[..., 0] < 100, connectivity=1).astype(np.int32)
            n = int(lab.max())
            out.append(TileResult(labels=lab, instance_classes=np.ones(n, np.int64),
                                  instance_scores=np.ones(n, np.float32)))
        return out


def test_predict_array_counts_every_object_once() -> None:
    gt = _discs(230, 310)  # objects (<= 25 px) fit in the 32 px overlap: exact
    img = np.full((*gt.shape, 3), 230, np.uint8)
    img[gt > 0] = 40
    labels = objects_to_labels(predict_array(DarkComponents(), img), gt.shape)
    s = instance_stats(gt, labels)
    assert s.fp == 0 and s.fn == 0 and s.pq == 1.0 and s.tp == len(np.unique(gt)) - 1


def test_validation_equals_tileseg_predict_on_a_file(tmp_path: Path) -> None:
    """The same objects as the file pipeline (tissue mask off) on the same image."""
    import shapely
    from PIL import Image

    from tilesegcli import predict

    rng = np.random.default_rng(3)
    img = np.full((200, 260, 3), 235, np.uint8)
    gt = _discs(200, 260, seed=4)
    img[gt > 0] = rng.integers(20, 90, (int((gt > 0).sum()), 3), dtype=np.uint8)
    Image.fromarray(img).save(tmp_path / "img.png")
    from tilesegcli.segmenters.simple import SimpleSegmenter

    seg = SimpleSegmenter(task="instance", tile_size=64, overlap=16, mpp=0.5)
    objs = predict_array(seg, img)
    out = tmp_path / "img.geojson"
    [r] = predict(tmp_path / "img.png", segmenter=seg, output=out, mpp=0.5, no_mask=True)
    assert r.status == "done", r.error
    feats = json.loads(out.read_text())["features"]
    a = sorted(round(o.geometry.area, 6) for o in objs)
    b = sorted(round(shapely.geometry.shape(f["geometry"]).area, 6) for f in feats)
    assert len(a) > 20 and a == b
