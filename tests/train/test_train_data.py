"""Patch sampling, augmentation and the learning-rate schedule (no network)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from tilesegcli.annotations import Annotation
from tilesegcli.train.augment import augment_patch, dihedral, hed_jitter
from tilesegcli.train.data import Loaded, PatchSampler, nuclei_manifest
from tilesegcli.train.loop import lr_lambda


def _loaded(seed: int = 0) -> Loaded:
    rng = np.random.default_rng(seed)
    img = rng.integers(0, 255, (100, 120, 3), dtype=np.uint8)
    lab = np.zeros((100, 120), np.int32)
    lab[10:20, 10:25] = 1
    lab[50:70, 60:65] = 2
    lab[90:92, 0:1] = 3  # 2 px: below min_area
    return Loaded("syn", img, Annotation(lab, np.array([1, 2, 1]), ["background", "a", "b"]))


def test_dihedral_group() -> None:
    a = np.arange(12).reshape(3, 4)
    outs = {dihedral(a, k).tobytes() + bytes(dihedral(a, k).shape) for k in range(8)}
    assert len(outs) == 8  # all eight transforms differ
    assert (dihedral(a, 4) == a[:, ::-1]).all() and (dihedral(a, 1) == np.rot90(a)).all()


def test_hed_jitter_zero_is_identity_ish() -> None:
    rng = np.random.default_rng(0)
    img = rng.integers(30, 230, (16, 16, 3), dtype=np.uint8)
    out = hed_jitter(img, np.random.default_rng(1), 0.0)
    assert np.abs(out.astype(int) - img.astype(int)).max() <= 2  # HED round trip


def test_augment_keeps_image_and_labels_aligned() -> None:
    img = np.zeros((8, 8, 3), np.uint8)
    img[1:3, 5:8] = 255
    lab = np.zeros((8, 8), np.int32)
    lab[1:3, 5:8] = 4
    for s in range(10):
        im2, lab2, _ = augment_patch(img, lab, np.ones((8, 8), bool), np.random.default_rng(s), 0, 0)
        assert ((im2[..., 0] == 255) == (lab2 == 4)).all()


def test_sampler_targets_and_exact_state_restore() -> None:
    s = PatchSampler([_loaded()], 32, seed=3, scale_range=(1.0, 1.0))
    p = s.sample()
    assert p.image.shape == (32, 32, 3) and p.masks.shape[1:] == (32, 32)
    assert len(p.classes) == len(p.masks) and all(m.sum() >= 4 for m in p.masks)
    state = s.state()
    a = [s.sample() for _ in range(3)]
    s.set_state(state)
    b = [s.sample() for _ in range(3)]
    for x, y in zip(a, b, strict=True):
        assert (x.image == y.image).all() and (x.masks == y.masks).all()
    s2 = PatchSampler([_loaded()], 32, seed=3, scale_range=(1.0, 1.0))
    assert (s2.sample().image == p.image).all()


def test_sampler_scale_jitter_and_small_images() -> None:
    s = PatchSampler([_loaded()], 160, seed=0)  # bigger than the image: padded, valid marks it
    p = s.sample()
    assert p.image.shape == (160, 160, 3) and not p.valid.all() and p.valid.any()


def test_lr_schedule() -> None:
    assert lr_lambda(0, 10, 100, 0.0) == pytest.approx(0.1)
    assert lr_lambda(9, 10, 100, 0.0) == pytest.approx(1.0)
    assert lr_lambda(10, 10, 100, 0.0) == pytest.approx(1.0)
    assert lr_lambda(55, 10, 100, 0.0) == pytest.approx(0.5)  # half way through the cosine
    assert lr_lambda(100, 10, 100, 0.1) == pytest.approx(0.1)
    assert lr_lambda(1000, 10, 100, 0.1) == pytest.approx(0.1)
    assert not math.isnan(lr_lambda(0, 0, 0, 0.0))


def test_nuclei_manifest_split(shared_dir) -> None:
    tr, va = nuclei_manifest(shared_dir / "data" / "nuclei")
    assert len(va) == 4 and {v.group.split(":")[1] for v in va} == {"lung", "breast", "kidney", "prostate"}
    assert not {v.name for v in va} & {t.name for t in tr}
    cpm4 = next(t for t in tr if t.name == "cpm15-image04")
    assert cpm4.annotation.endswith("image05_mask.txt")  # the source's swap, fixed
    tr2, va2 = nuclei_manifest(shared_dir / "data" / "nuclei", monuseg_binary=True)
    extra = [t for t in tr2 if t.split_touching]
    assert va2 == va and len(extra) == 17 and len(tr2) == len(tr) + 17
    assert not {t.name[:12] for t in extra} & {v.name[:12] for v in va}  # no validation patient
    tr3, va3 = nuclei_manifest(shared_dir / "data" / "nuclei", monuseg_color=True)
    col = [t for t in tr3 if t.split_touching]
    assert va3 == va and [t.name for t in col] == [t.name for t in extra]
    assert all("color_masks_ykrmm" in t.annotation for t in col)


def test_val_list_replaces_preset_validation(shared_dir, tmp_path) -> None:
    import json

    from tilesegcli.train.config import TrainConfig

    tr, _ = nuclei_manifest(shared_dir / "data" / "nuclei")
    it = tr[0]
    (tmp_path / "v.json").write_text(json.dumps([{"image": it.image, "annotation": it.annotation,
                                                  "mpp": it.mpp, "name": "tune"}]))
    cfg = TrainConfig(data_root=str(shared_dir / "data" / "nuclei"), val_list=str(tmp_path / "v.json"))
    got_tr, got_va = cfg.load_data(train=False)
    assert got_tr == [] and [v.name for v in got_va] == ["tune"]


def test_sampler_roi_limits_patches_and_labels() -> None:
    d = _loaded()
    roi = np.zeros(d.ann.labels.shape, bool)
    roi[40:80, 50:100] = True  # holds instance 2 only
    d.ann.roi = roi
    s = PatchSampler([d], 24, seed=0, scale_range=(1.0, 1.0))
    for _ in range(20):
        p = s.sample()
        assert p.valid.any()  # the patch centre lies in the ROI
        for m in p.masks:  # every target lies inside the ROI part of the patch
            assert (m & ~p.valid).sum() == 0
