"""Whole-image tiled prediction used by validation: each object is counted exactly once."""

from __future__ import annotations

import numpy as np

from tilesegcli.eval.metrics import instance_stats
from tilesegcli.train.validate import predict_image

from ..test_arrays import DarkComponents


def test_tiled_prediction_counts_objects_once() -> None:
    rng = np.random.default_rng(0)
    img = np.full((110, 130, 3), 230, np.uint8)
    gt = np.zeros((110, 130), np.int32)
    k = 0
    for cy in range(8, 110, 18):
        for cx in range(8, 130, 18):
            r = rng.integers(3, 6)
            yy, xx = np.ogrid[:110, :130]
            disc = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
            k += 1
            gt[disc] = k
            img[disc] = 40
    pred = predict_image(DarkComponents(), img, 48, 16, batch=3)
    s = instance_stats(gt, pred)
    # objects (<= 11 px wide) are smaller than overlap/2 + core margin: every one is whole in
    # the tile that owns its centroid, so the tiled result equals the untiled one exactly
    assert (s.tp, s.fp, s.fn) == (k, 0, 0)
    assert s.pq == 1.0 and s.aji == 1.0
