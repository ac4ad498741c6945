"""Training packs (``train/pack.py``): what is read back is what was packed, a pack at the
wrong resolution or a broken one is refused in one line, and a list of packs trains."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tilesegcli.annotations import Annotation
from tilesegcli.errors import AnnotationError, UsageError
from tilesegcli.train.data import DataItem, load_item
from tilesegcli.train.pack import read_pack, write_pack


def _item(shape: tuple[int, int] = (80, 96)) -> tuple[np.ndarray, Annotation]:
    rng = np.random.default_rng(1)
    yy, xx = np.mgrid[:shape[0], :shape[1]]
    img = np.stack([120 + 60 * np.sin(xx / 9), 80 + 40 * np.cos(yy / 7),
                    150 + 30 * np.sin((xx + yy) / 11)], -1).astype(np.uint8)
    img = np.clip(img + rng.integers(-4, 5, img.shape), 0, 255).astype(np.uint8)
    labels = np.zeros(shape, np.int32)
    labels[10:30, 10:25], labels[40:70, 50:90] = 1, 2
    roi = np.ones(shape, bool)
    roi[:, :5] = False
    return img, Annotation(labels, np.array([1, 2]), ["background", "tumour", "other"], roi)


def test_round_trip(tmp_path: Path) -> None:
    img, ann = _item()
    p = tmp_path / "a.npz"
    size = write_pack(p, "a", img, ann, 0.25)
    assert size == p.stat().st_size and list(tmp_path.iterdir()) == [p]  # no temp file left
    name, img2, ann2 = read_pack(p, 0.25)
    assert name == "a" and img2.shape == img.shape and img2.dtype == np.uint8
    assert np.abs(img2.astype(int) - img).mean() < 3.0  # JPEG quality 95 (real H&E: ~1.8)
    np.testing.assert_array_equal(ann2.labels, ann.labels)
    np.testing.assert_array_equal(ann2.classes, ann.classes)
    np.testing.assert_array_equal(ann2.roi, ann.roi)
    assert ann2.class_names == ann.class_names
    # through load_item, as a training list names it
    d = load_item(DataItem(str(p), str(p), 0.25, name="a"), 0.25)
    np.testing.assert_array_equal(d.ann.labels, ann.labels)
    # without a region
    write_pack(p, "a", img, Annotation(ann.labels, ann.classes), 0.25)
    assert read_pack(p, 0.25)[2].roi is None


def test_wrong_resolution_and_broken_packs_are_refused(tmp_path: Path) -> None:
    img, ann = _item()
    p = tmp_path / "a.npz"
    write_pack(p, "a", img, ann, 0.25)
    with pytest.raises(UsageError, match="packed at 0.25"):
        read_pack(p, 0.5)
    bad = tmp_path / "b.npz"
    bad.write_bytes(b"not a zip")
    with pytest.raises(AnnotationError, match="not a readable training pack"):
        read_pack(bad, 0.25)


def test_a_list_of_packs_trains(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    from tilesegcli.train.config import TrainConfig
    from tilesegcli.train.loop import train

    from .test_train_loop import TINY_ARCH, synthetic_nuclei

    rng = np.random.default_rng(0)
    rows = []
    for i in range(2):
        img, lab = synthetic_nuclei(rng)
        ann = Annotation(lab.astype(np.int32), np.ones(8, np.int64))
        write_pack(tmp_path / f"p{i}.npz", f"p{i}", img, ann, 0.5)
        rows.append({"image": f"p{i}.npz", "annotation": f"p{i}.npz", "mpp": 0.5, "name": f"p{i}"})
    (tmp_path / "train.json").write_text(json.dumps(rows))

    cfg = TrainConfig(out_dir=str(tmp_path / "run"), data_preset=None,
                      train_list=str(tmp_path / "train.json"), mpp=0.5, tile=64, batch_size=2,
                      steps=2, warmup_steps=1, architecture=TINY_ARCH, num_points=64,
                      val_every=0, log_every=1, threads=1)
    run = train(cfg)
    log = [json.loads(x) for x in (run / "train_log.jsonl").read_text().splitlines()]
    start = next(r for r in log if r["event"] == "start")
    assert start["train_images"] == ["p0", "p1"]
    assert [r["step"] for r in log if r["event"] == "train"] == [1, 2]
