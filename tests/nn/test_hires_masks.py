"""Stride-2 mask features (``hires_dim``): shapes, residual start, post-processing stride."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from tilesegcli.nn.aff_m2f import build_aff_m2f  # noqa: E402
from tilesegcli.nn.postprocess import instance_inference, postprocess_batch  # noqa: E402

HEAD = dict(num_classes=1, num_queries=6, hidden_dim=32, conv_dim=32, mask_dim=32, nheads=2,
            dim_feedforward=64, enc_layers=1, dec_layers=3, shepard_power=4.0,
            shepard_power_learnable=False)


def _model(hires: int) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_aff_m2f("aff_fixture", hires_dim=hires, **HEAD).eval()


def test_stride2_masks_start_as_upsampled_stride4(one_thread: None) -> None:
    lo, hi = _model(0), _model(16)
    missing, unexpected = hi.load_state_dict(lo.state_dict(), strict=False)
    assert not unexpected and all(k.startswith("sem_seg_head.hires.") for k in missing)
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        a, b = lo(x, with_aux=True), hi(x, with_aux=True)
    assert a["mask_stride"] == 4 and b["mask_stride"] == 2
    assert a["pred_masks"].shape == (2, 6, 16, 24) and b["pred_masks"].shape == (2, 6, 32, 48)
    assert len(b["aux_outputs"]) == 2 and b["aux_outputs"][0]["pred_masks"].shape == (2, 6, 32, 48)
    torch.testing.assert_close(a["pred_logits"], b["pred_logits"])
    # fuse starts at zero: the stride-2 logits are the bilinear upsampling of the stride-4 ones
    # (the dot product with the query embedding commutes with the interpolation)
    up = torch.nn.functional.interpolate(a["pred_masks"], scale_factor=2, mode="bilinear",
                                         align_corners=False)
    torch.testing.assert_close(b["pred_masks"], up, atol=1e-4, rtol=1e-4)
    assert "mask_embed" not in b and "aux_mask_embed" not in b


def test_stride_reaches_full_resolution_masks(one_thread: None) -> None:
    hi = _model(16)
    with torch.no_grad():
        torch.nn.init.normal_(hi.sem_seg_head.hires.fuse[-1].weight, std=0.5)
        out = hi(torch.randn(1, 3, 64, 64), with_aux=False)
    res = postprocess_batch(out, (64, 64), task="instance", topk=6)
    assert res[0].labels.shape == (64, 64)
    # the same call with the wrong stride would produce twice the size before cropping
    inst = instance_inference(out["pred_logits"][0], out["pred_masks"][0], (64, 64), topk=6,
                              stride=2)
    assert (inst.labels == res[0].labels).all()
    with pytest.raises(ValueError, match="images"):
        hi.sem_seg_head(hi.backbone(torch.randn(1, 3, 64, 64)))
