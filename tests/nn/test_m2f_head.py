"""AFF Mask2Former head on synthetic tokens: shapes, trainability, official key names."""

from __future__ import annotations

import pytest
import torch

from tilesegcli.nn.aff_m2f import HEAD_PRESETS, AFFMask2FormerHead
from tilesegcli.nn.criterion import SetCriterion
from tilesegcli.nn.types import BackboneOutput, PointLevel

CH = {"res2": 16, "res3": 32, "res4": 48, "res5": 64}


def _tokens(seed: int, b: int = 2, h: int = 16, w: int = 20) -> BackboneOutput:
    """res2 = every cell (random order); deeper levels = nested random subsets."""
    g = torch.Generator().manual_seed(seed)
    levels = {}
    per_img = [torch.randperm(h * w, generator=g) for _ in range(b)]
    n = h * w
    for name in ("res2", "res3", "res4", "res5"):
        cells = torch.stack([p[:n] for p in per_img])
        pos = torch.stack([cells % w, cells // w], dim=-1).float()
        levels[name] = PointLevel(torch.randn(b, n, CH[name], generator=g), pos)
        n //= 4
    return BackboneOutput(levels, (h, w))


def _head(**kw) -> AFFMask2FormerHead:
    cfg = {k: v for k, v in HEAD_PRESETS["fixture"].items() if k != "alpha"}
    cfg.update(kw)
    return AFFMask2FormerHead(CH, **cfg)


def test_head_shapes_and_dense_masks() -> None:
    torch.manual_seed(0)
    head = _head().eval()
    feats = _tokens(0)
    with torch.no_grad():
        out = head(feats)
    assert out["pred_logits"].shape == (2, 12, 4)
    assert out["pred_masks"].shape == (2, 12, 16, 20)
    assert len(out["aux_outputs"]) == 3
    # dense mask at cell (x, y) equals the mask logit of the res2 token there
    assert torch.isfinite(out["pred_masks"]).all()


def test_head_is_trainable_end_to_end() -> None:
    torch.manual_seed(1)
    head = _head()
    feats = _tokens(1)
    out = head(feats)
    masks = torch.zeros(1, 64, 80, dtype=torch.bool)
    masks[0, 10:30, 20:50] = True
    tg = [{"labels": torch.tensor([1]), "masks": masks}] * 2
    loss = SetCriterion(3, num_points=100)(out, tg)["loss"]
    loss.backward()
    pd = head.pixel_decoder
    for p in (pd.transformer.encoder.layers[0].self_attn.sampling_offsets.weight,
              pd.transformer.encoder.layers[0].self_attn.shepard_power,
              pd.layer_1[0].weight_net[0].weight, pd.input_proj[0][0].weight,
              head.predictor.query_feat.weight):
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0


def test_coco_head_has_fixed_shepard_power_and_no_key() -> None:
    head = _head(shepard_power=4.0, shepard_power_learnable=False)
    assert not any("shepard_power" in k for k in head.state_dict())
    assert head.pixel_decoder.transformer.encoder.layers[0].self_attn.shepard_power == 2.0
    learn = _head()
    keys = set(learn.state_dict())
    assert "pixel_decoder.transformer.encoder.layers.0.self_attn.shepard_power" in keys
    assert "predictor.mask_embed.layers.2.weight" in keys
    assert "pixel_decoder.layer_1.0.weight_net.1.weight" in keys


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_full_model_checkpoint_roundtrip_and_errors(tmp_path) -> None:
    import pickle

    from tilesegcli.errors import WeightsError
    from tilesegcli.nn.aff_m2f import build_aff_m2f_preset, load_official_checkpoint

    torch.manual_seed(0)
    src = build_aff_m2f_preset("aff_fixture", "fixture").eval()
    sd = dict(src.state_dict())
    sd["criterion.empty_weight"] = torch.ones(4)
    good = tmp_path / "model_final.pth"
    torch.save({"model": sd, "iteration": 5}, good)
    torch.manual_seed(1)
    dst = build_aff_m2f_preset("aff_fixture", "fixture").eval()
    load_official_checkpoint(dst, good)
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        a, b = src(x), dst(x)
    assert torch.equal(a["pred_masks"], b["pred_masks"])
    assert a["pred_masks"].shape == (1, 12, 16, 24)

    bad_sd = {k: v for k, v in sd.items() if k != "sem_seg_head.predictor.query_feat.weight"}
    torch.save({"model": bad_sd}, tmp_path / "missing.pth")
    torch.save({"model": {**sd, "sem_seg_head.extra": torch.ones(1)}}, tmp_path / "extra.pth")
    shape_sd = dict(sd)
    shape_sd["sem_seg_head.predictor.class_embed.bias"] = torch.ones(9)
    torch.save({"model": shape_sd}, tmp_path / "shape.pth")

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    (tmp_path / "evil.pth").write_bytes(pickle.dumps({"model": Evil()}))
    for name in ("missing.pth", "extra.pth", "shape.pth", "evil.pth", "absent.pth"):
        with pytest.raises(WeightsError):
            load_official_checkpoint(dst, tmp_path / name)


def test_without_aux_gives_same_final_outputs() -> None:
    torch.manual_seed(2)
    head = _head().eval()
    feats = _tokens(2)
    with torch.no_grad():
        full = head(feats)
        lean = head(feats, with_aux=False)
    assert lean["aux_outputs"] == []
    torch.testing.assert_close(lean["pred_logits"], full["pred_logits"], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(lean["pred_masks"], full["pred_masks"], atol=1e-5, rtol=1e-5)


def test_batch_independent_and_size_divisibility() -> None:
    from tilesegcli.nn.aff_m2f import build_aff_m2f_preset

    torch.manual_seed(3)
    model = build_aff_m2f_preset("aff_fixture", "fixture", batch_independent=True,
                                 size_divisibility=32).eval()
    x = torch.randn(2, 3, 60, 90)
    with torch.no_grad():
        both = model(x, with_aux=False)
        alone = model(x[1:], with_aux=False)
    assert both["pred_masks"].shape == (2, 12, 16, 24)  # padded to 64 x 96
    torch.testing.assert_close(both["pred_masks"][1:], alone["pred_masks"], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(both["pred_logits"][1:], alone["pred_logits"], atol=1e-5, rtol=1e-5)


def test_tiny_input_runs() -> None:
    from tilesegcli.nn.aff_m2f import build_aff_m2f_preset

    torch.manual_seed(4)
    model = build_aff_m2f_preset("aff_fixture", "fixture").eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, 32, 32))
    assert out["pred_masks"].shape == (1, 12, 8, 8) and torch.isfinite(out["pred_masks"]).all()


def test_sampling_checkpoint_gives_same_gradients() -> None:
    grads = []
    for ckpt in (True, False):
        torch.manual_seed(5)
        head = _head()
        for layer in head.pixel_decoder.transformer.encoder.layers:
            layer.self_attn.checkpoint_sampling = ckpt
        out = head(_tokens(5))
        (out["pred_masks"].square().mean() + out["pred_logits"].square().mean()).backward()
        attn = head.pixel_decoder.transformer.encoder.layers[0].self_attn
        grads.append([attn.sampling_offsets.weight.grad.clone(), attn.shepard_power.grad.clone(),
                      attn.value_proj.weight.grad.clone()])
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b)


def test_official_mini_ade20k_parameter_counts() -> None:
    """AFF-REFERENCE §4: SEG AFF-Mini/ADE20K has 6.37M backbone + 19.43M head parameters."""
    from tilesegcli.nn.aff_m2f import build_aff_m2f_preset

    m = build_aff_m2f_preset("aff_mini", "ade20k_semantic")
    nb = sum(p.numel() for p in m.backbone.parameters())
    nh = sum(p.numel() for p in m.sem_seg_head.parameters())
    assert round(nb / 1e6, 2) == 6.37 and round(nh / 1e6, 2) == 19.43
    assert m.sem_seg_head.predictor.class_embed.out_features == 151
    coco = build_aff_m2f_preset("aff_mini", "coco_instance")
    assert not any("shepard_power" in k for k in coco.state_dict())
