"""AFFSegmenter / load_segmenter end to end with a tiny AFF + Mask2Former saved to disk, and with the
official golden checkpoint when ../shared is present."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

from tilesegcli.errors import UsageError, WeightsError
from tilesegcli.segmenter import Segmenter
from tilesegcli.zoo import load_segmenter

MEAN = (123.675, 116.28, 103.53)
STD = (58.395, 57.12, 57.375)


def _head() -> dict:
    from tilesegcli.nn.aff_m2f import HEAD_PRESETS

    return {k: v for k, v in HEAD_PRESETS["fixture"].items() if k != "alpha"}


def _card(task: str = "instance", **over) -> dict:
    d = {"format": 1, "name": f"tiny-{task}", "task": task, "tile_size": 64, "overlap": 16,
         "mpp": 0.5, "min_area": 1,
         "classes": [{"name": "a", "color": [255, 0, 0], "thing": True},
                     {"name": "b", "color": [0, 255, 0], "thing": True},
                     {"name": "c", "color": [0, 0, 255], "thing": False}],
         "architecture": {"backbone": "aff_fixture", "backbone_kwargs": {"alpha": 4.0},
                          "head": "mask2former", "head_kwargs": _head()},
         "input": {"mean": list(MEAN), "std": list(STD), "size_divisibility": 32},
         "postprocess": {"score_threshold": 0.0, "top_k": 12, "object_mask_threshold": 0.0,
                         "overlap_threshold": 0.0},
         "weights": {"url": None, "sha256": None, "filename": "ckpt.pth", "bundled": True,
                     "ignore_keys": ["criterion.empty_weight"]}}
    d.update(over)
    return d


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A randomly initialised tiny model saved as a detectron2-style checkpoint with a card."""
    from tilesegcli.nn.aff_m2f import build_aff_m2f

    d = tmp_path_factory.mktemp("tiny")
    torch.manual_seed(3)
    model = build_aff_m2f("aff_fixture", backbone_kwargs={"alpha": 4.0}, **_head()).eval()
    with torch.no_grad():  # make class logits decisive so instances survive the thresholds
        model.sem_seg_head.predictor.class_embed.bias.mul_(0).add_(torch.tensor([2.0, 1.0, 0.5, -1.0]))
    sd = dict(model.state_dict())
    sd["criterion.empty_weight"] = torch.tensor([1.0, 1.0, 1.0, 0.1])
    torch.save({"model": sd, "iteration": 10, "optimizer": {"state": {}, "param_groups": []}},
               d / "ckpt.pth")
    for task in ("semantic", "instance", "panoptic"):
        (d / f"{task}.json").write_text(json.dumps(_card(task)))
    return {"dir": d, "model": model}


def _tiles(n: int, h: int, w: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = rng.integers(0, 256, (n, h, w, 3), dtype=np.uint8)
    t[:, h // 4: h // 2, w // 4: w // 2] = (200, 60, 90)  # a flat blob, so masks have structure
    return t


def test_loaded_model_equals_the_saved_one_incl_padding(tiny):
    seg = load_segmenter(tiny["dir"] / "instance.json", device="cpu")
    assert isinstance(seg, Segmenter)
    assert (seg.name, seg.task, seg.mpp, seg.tile_size, seg.overlap) == ("tiny-instance", "instance",
                                                                       0.5, 64, 16)
    assert [c.name for c in seg.classes] == ["background", "a", "b", "c"]
    tiles = _tiles(2, 60, 72)  # not multiples of 32: padded to 64 x 96
    logits, masks = seg.forward(tiles)
    x = (torch.from_numpy(tiles).permute(0, 3, 1, 2).float() - torch.tensor(MEAN).view(1, 3, 1, 1)) \
        / torch.tensor(STD).view(1, 3, 1, 1)
    x = torch.nn.functional.pad(x, (0, 24, 0, 4))
    ref_model = tiny["model"]
    ref_model.set_batch_independent(True)
    with torch.no_grad():
        ref = ref_model(x)
    torch.testing.assert_close(logits, ref["pred_logits"], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(masks, ref["pred_masks"], atol=1e-5, rtol=1e-5)
    assert masks.shape == (2, 12, 16, 24)
    assert seg.weights_sha256 and len(seg.weights_sha256) == 64


def test_tile_result_does_not_depend_on_batch_mates(tiny):
    # resume, sharding and --batch-size regroup tiles: a tile's output must be its own
    seg = load_segmenter(tiny["dir"] / "instance.json", device="cpu")
    tiles = _tiles(3, 64, 64, seed=5)
    tiles[2] = 255 - tiles[2]  # a very different batch mate
    lo_b, ma_b = seg.forward(tiles)
    for i in range(3):
        lo_1, ma_1 = seg.forward(tiles[i : i + 1])
        torch.testing.assert_close(lo_b[i : i + 1], lo_1, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(ma_b[i : i + 1], ma_1, atol=1e-5, rtol=1e-5)


def test_instance_results(tiny):
    seg = load_segmenter(tiny["dir"] / "instance.json", device="cpu")
    res = seg.predict_batch(_tiles(2, 64, 64, seed=1))
    assert len(res) == 2
    total = 0
    for r in res:
        assert r.semantic is None and r.labels.shape == (64, 64) and r.labels.dtype == np.int32
        k = r.num_instances
        total += k
        assert len(r.instance_classes) == k and r.instance_classes.dtype == np.int64
        assert r.instance_scores.dtype == np.float32
        assert set(np.unique(r.labels)) <= set(range(k + 1))
        assert set(np.unique(r.labels)) >= set(range(1, k + 1))  # every instance has pixels
        assert np.all((r.instance_classes >= 1) & (r.instance_classes <= 3))
        assert np.all(np.diff(r.instance_scores) <= 1e-7)  # best first
    assert total > 0
    big = load_segmenter(tiny["dir"] / "instance.json", device="cpu", min_area=64 * 64 + 1)
    assert all(r.num_instances == 0 and r.labels.max() == 0
               for r in big.predict_batch(_tiles(1, 64, 64, seed=1)))
    high = load_segmenter(tiny["dir"] / "instance.json", device="cpu", score_threshold=1.0)
    assert all(r.num_instances == 0 for r in high.predict_batch(_tiles(1, 64, 64)))


def test_semantic_and_panoptic_results(tiny):
    sem = load_segmenter(tiny["dir"] / "semantic.json", device="cpu")
    (r,) = sem.predict_batch(_tiles(1, 60, 72))
    assert r.labels is None and r.semantic.shape == (4, 60, 72) and r.semantic.dtype == np.float32
    assert np.all(r.semantic >= 0)
    np.testing.assert_allclose(r.semantic.sum(0), 1.0, atol=1e-5)
    pan = load_segmenter(tiny["dir"] / "panoptic.json", device="cpu")
    (p,) = pan.predict_batch(_tiles(1, 60, 72))
    assert p.semantic.shape == (4, 60, 72) and p.labels.shape == (60, 72)
    assert set(p.instance_classes.tolist()) <= {1, 2}  # "c" is stuff: semantic only
    assert np.all((p.instance_scores >= 0) & (p.instance_scores <= 1))
    assert p.labels.max() == p.num_instances


def test_thing_only_instances_exclude_stuff_classes(tiny, tmp_path):
    card = _card("instance", instance_classes="thing", name="things")
    card["weights"]["bundled"] = False
    (tmp_path / "things.json").write_text(json.dumps(card))
    seg = load_segmenter(tmp_path / "things.json", weights=tiny["dir"] / "ckpt.pth", device="cpu")
    res = seg.predict_batch(_tiles(2, 64, 64, seed=2))
    assert sum(r.num_instances for r in res) > 0
    assert all(set(r.instance_classes.tolist()) <= {1, 2} for r in res)


def test_safetensors_fp16_bundle(tiny, tmp_path):
    from tilesegcli.weights import save_safetensors

    sha = save_safetensors(tiny["model"].state_dict(), tmp_path / "w.safetensors", half=True)
    mode = (tmp_path / "w.safetensors").stat().st_mode & 0o777
    umask = os.umask(0)
    os.umask(umask)
    assert mode == 0o666 & ~umask  # readable by others like any file (safetensors writes 0600)
    card = _card("semantic", name="fp16")
    card["weights"] = {"filename": "w.safetensors", "bundled": True, "sha256": sha,
                       "format": "safetensors"}
    (tmp_path / "card.json").write_text(json.dumps(card))
    seg = load_segmenter(tmp_path, device="cpu")
    ref = load_segmenter(tiny["dir"] / "semantic.json", device="cpu")
    t = _tiles(1, 64, 64)
    a, b = seg.predict_batch(t)[0].semantic, ref.predict_batch(t)[0].semantic
    assert np.abs(a - b).mean() < 0.02 and seg.weights_sha256 == sha


def test_wrong_architecture_and_bad_inputs(tiny, tmp_path):
    card = _card("instance", name="wrong")
    card["architecture"]["head_kwargs"] = {**_head(), "num_queries": 7}
    (tmp_path / "wrong.json").write_text(json.dumps(card))
    with pytest.raises(WeightsError, match="does not fit"):
        load_segmenter(tmp_path / "wrong.json", weights=tiny["dir"] / "ckpt.pth", device="cpu")
    seg = load_segmenter(tiny["dir"] / "instance.json", device="cpu")
    with pytest.raises(ValueError, match="uint8"):
        seg.predict_batch(np.zeros((1, 64, 64, 3), np.float32))
    with pytest.raises(ValueError, match="B, H, W, 3"):
        seg.predict_batch(np.zeros((64, 64, 3), np.uint8))
    assert seg.predict_batch(np.zeros((0, 64, 64, 3), np.uint8)) == []
    with pytest.raises(UsageError, match="cannot override"):
        load_segmenter(tiny["dir"] / "instance.json", device="cpu", num_queries=3)


def test_mixed_precision_path_runs_close_to_fp32(tiny):
    """The AMP path (CUDA fp16 in production) exercised on CPU with bfloat16 autocast."""
    seg = load_segmenter(tiny["dir"] / "semantic.json", device="cpu")
    assert seg.amp is False  # never on CPU by default
    t = _tiles(1, 64, 64)
    ref_logits, _ = seg.forward(t)
    seg.amp, seg._amp_dtype = True, torch.bfloat16
    logits, masks = seg.forward(t)
    assert logits.dtype == torch.float32 and torch.isfinite(masks).all()
    assert (logits.softmax(-1) - ref_logits.softmax(-1)).abs().max() < 0.1


def test_device_selection():
    from tilesegcli.device import select_device

    assert select_device("cpu").type == "cpu"
    assert select_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(UsageError, match="must be auto"):
        select_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(UsageError, match="CUDA is not available"):
            select_device("cuda:0")


def test_official_golden_checkpoint_end_to_end(aff_fixtures, tmp_path):
    """uint8 tiles -> AFFSegmenter -> logits/masks == the official code's, from the official file."""
    ckpt = aff_fixtures / "seg_checkpoint.pth"
    card = _card("instance", name="golden")
    card["weights"] = {"url": None, "filename": "seg_checkpoint.pth", "format": "detectron2",
                       "ignore_keys": ["criterion.empty_weight"]}
    (tmp_path / "golden.json").write_text(json.dumps(card))
    seg = load_segmenter(tmp_path / "golden.json", weights=ckpt, device="cpu")
    io = torch.load(aff_fixtures / "seg_io.pt", weights_only=True)
    tiles = io["input_uint8"][1:].permute(0, 2, 3, 1).numpy()  # one image keeps CI fast
    logits, masks = seg.forward(tiles)
    torch.testing.assert_close(logits, io["pred_logits"][1:], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(masks, io["pred_masks"][1:], atol=1e-4, rtol=1e-4)
