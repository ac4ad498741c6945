"""SeaFormer: shapes for any input size, gradients, published parameter counts, determinism,
train/eval behaviour, official key renaming, and that the tiny variant learns a toy task."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from nn._helpers import assert_overfits_toy_task, n_params

from tilesegcli.nn.seaformer import (
    MODEL_BUILDERS,
    SeaAttention,
    build_seaformer,
    checkpoint_filter_fn,
    seaformer_test,
    seaformer_tiny,
)

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("hw", [(1, 1), (37, 53), (65, 33), (64, 64)])
def test_output_shape_any_size(hw: tuple[int, int]) -> None:
    torch.manual_seed(0)
    net = seaformer_test(num_classes=5).eval()
    x = torch.randn(2, 3, *hw)
    with torch.no_grad():
        y = net(x)
        up = net(x, upsample=True)
    # three stride-2 convs with padding: ceil division at every step
    h8, w8 = hw
    for _ in range(3):
        h8, w8 = math.ceil(h8 / 2), math.ceil(w8 / 2)
    assert y.shape == (2, 5, h8, w8)
    assert up.shape == (2, 5, *hw)
    assert torch.isfinite(y).all()


def test_published_tiny_runs_on_odd_input() -> None:
    net = seaformer_tiny(num_classes=7).eval()
    with torch.no_grad():
        y = net(torch.randn(1, 3, 75, 41))
    assert y.shape == (1, 7, 10, 6)


# Published sizes (fudan-zvg/SeaFormer): seaformer-seg/README.md lists ADE20K models (150 classes,
# backbone + LightHead) of 1.7 / 4.0 / 8.6 / 14.0 M params; seaformer-cls/README.md lists the
# ImageNet models (backbone + Linear(C_last, 1000)) of 1.8 / 4.1 / 8.7 / 14.0 M.
@pytest.mark.parametrize("size,seg_m,cls_m", [("tiny", 1.7, 1.8), ("small", 4.0, 4.1),
                                              ("base", 8.6, 8.7), ("large", 14.0, 14.0)])
def test_param_counts_match_paper(size: str, seg_m: float, cls_m: float) -> None:
    net = build_seaformer(size, num_classes=150)
    assert round(n_params(net) / 1e6, 1) == seg_m
    c_last = net.backbone.out_channels[-1]
    assert round((n_params(net.backbone) + c_last * 1000 + 1000) / 1e6, 1) == cls_m


def test_exact_tiny_count_is_stable() -> None:
    # our exact count for SeaFormer-T + LightHead(150); any structural drift changes it
    assert n_params(seaformer_tiny(num_classes=150)) == 1_667_318


def test_gradients_flow() -> None:
    torch.manual_seed(0)
    net = seaformer_test(num_classes=3).train()
    x = torch.randn(2, 3, 40, 24, requires_grad=True)
    net(x, upsample=True).square().mean().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    grads = {n: p.grad for n, p in net.named_parameters()}
    assert all(g is not None and torch.isfinite(g).all() for g in grads.values())
    nonzero = sum(int(g.abs().sum() > 0) for g in grads.values())
    # the SEA "global" projections start with BN weight 0 (as officially), so the axial branch
    # receives gradient only after the first update; everything else must be live
    assert nonzero / len(grads) > 0.75
    assert grads["head.classifier.weight"].abs().sum() > 0
    assert grads["backbone.stem.0.c.weight"].abs().sum() > 0


def test_axial_branch_learns_after_the_zero_init_gates_open() -> None:
    # proj and proj_row both start at BN weight 0: the position embeddings see gradient from
    # the third update on
    torch.manual_seed(0)
    net = seaformer_test(num_classes=3).train()
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    x = torch.randn(2, 3, 32, 32)
    for _ in range(3):
        opt.zero_grad()
        net(x).square().mean().backward()
        opt.step()
    g = net.backbone.sea[0][0].attn.pos_rowq.pos_embed.grad
    assert g is not None and g.abs().sum() > 0


def test_determinism_and_eval_batch_independence() -> None:
    torch.manual_seed(1)
    a = seaformer_test(num_classes=4)
    torch.manual_seed(1)
    b = seaformer_test(num_classes=4)
    for pa, pb in zip(a.state_dict().values(), b.state_dict().values(), strict=True):
        assert torch.equal(pa, pb)
    a.eval()
    x = torch.randn(3, 3, 29, 31)
    with torch.no_grad():
        y1, y2 = a(x), a(x)
        single = a(x[1:2])
    assert torch.equal(y1, y2)
    torch.testing.assert_close(single, y1[1:2], rtol=1e-4, atol=1e-5)


def test_train_mode_uses_batch_statistics() -> None:
    torch.manual_seed(2)
    net = seaformer_test(num_classes=4)
    x = torch.randn(3, 3, 32, 32)
    net.train()
    with torch.no_grad():
        yt = net(x)
    net.eval()
    with torch.no_grad():
        ye = net(x)
    assert not torch.allclose(yt, ye)  # BN: batch stats vs running stats
    assert net.backbone.stem[0].bn.num_batches_tracked.item() == 1


def test_unknown_size_rejected() -> None:
    with pytest.raises(ValueError, match="unknown SeaFormer size"):
        build_seaformer("huge")
    assert set(MODEL_BUILDERS) == {f"seaformer_{s}" for s in
                                   ("tiny", "small", "base", "large", "test")}


def test_checkpoint_filter_maps_official_keys() -> None:
    net = seaformer_tiny(num_classes=150)
    ours = net.state_dict()
    # official mmseg key names with shapes that follow from the official SeaFormer-T config
    official = {
        "backbone.smb1.stem_block.0.c.weight": (16, 3, 3, 3),
        "backbone.smb1.layer1.conv.0.c.weight": (16, 1, 3, 3),  # t=1: no expansion conv
        "backbone.smb1.layer2.conv.0.c.weight": (64, 16, 1, 1),
        "backbone.smb2.layer1.conv.2.c.weight": (48, 1, 5, 5),  # 16 in x t=3
        "backbone.smb5.layer1.conv.4.bn.running_var": (160,),
        "backbone.trans1.transformer_blocks.0.attn.to_q.c.weight": (64, 128, 1, 1),
        "backbone.trans1.transformer_blocks.1.attn.pos_emb_rowq.pos_embed": (1, 64, 16),
        "backbone.trans2.transformer_blocks.1.attn.pos_emb_columnk.pos_embed": (1, 96, 16),
        "backbone.trans2.transformer_blocks.0.attn.proj_encode_column.1.bn.weight": (192,),
        "backbone.trans2.transformer_blocks.0.attn.dwconv.c.weight": (384, 1, 3, 3),
        "backbone.trans2.transformer_blocks.0.mlp.dwconv.bias": (640,),
        "decode_head.fuse1.local_embedding.conv.weight": (64, 32, 1, 1),
        "decode_head.fuse2.global_act.bn.bias": (96,),
        "decode_head.linear_fuse.conv.weight": (96, 1, 1, 1),
        "decode_head.conv_seg.weight": (150, 96, 1, 1),
        "auxiliary_head.conv_seg.weight": (150, 32, 1, 1),
    }
    sd = {k: torch.zeros(s) for k, s in official.items()}
    mapped = checkpoint_filter_fn({"state_dict": sd}, net)
    assert len(mapped) == len(official) - 1  # auxiliary head dropped
    for k, v in mapped.items():
        assert ours[k].shape == v.shape
    assert "backbone.mv2.1.0.conv.2.c.weight" in mapped
    assert "backbone.sea.1.1.attn.pos_colk.pos_embed" in mapped
    assert "head.fuse.0.local.c.weight" in mapped
    with pytest.raises(ValueError, match="shape"):
        checkpoint_filter_fn({"decode_head.conv_seg.weight": torch.zeros(19, 96, 1, 1)}, net)


def test_tiny_variant_overfits_toy_segmentation() -> None:
    assert_overfits_toy_task(seaformer_test, lr=1e-2)


def _naive_sea(m: SeaAttention, x: torch.Tensor) -> torch.Tensor:
    """Squeeze axial attention written per head and per axis with explicit einsums."""
    q, k, v = m.to_q(x), m.to_k(x), m.to_v(x)
    kd, heads = m.key_dim, m.heads
    d = m.dh // heads
    outs = []
    for axis, pq, pk in ((3, m.pos_rowq, m.pos_rowk), (2, m.pos_colq, m.pos_colk)):
        qs, ks, vs = q.mean(axis), k.mean(axis), v.mean(axis)  # B, C, N
        n = qs.shape[-1]
        pe_q = F.interpolate(pq.pos_embed, size=n, mode="linear", align_corners=False)
        pe_k = F.interpolate(pk.pos_embed, size=n, mode="linear", align_corners=False)
        qs, ks = qs + pe_q, ks + pe_k
        per_head = []
        for h in range(heads):
            qh, kh = qs[:, h * kd:(h + 1) * kd], ks[:, h * kd:(h + 1) * kd]
            vh = vs[:, h * d:(h + 1) * d]
            a = torch.einsum("bci,bcj->bij", qh, kh).mul(kd**-0.5).softmax(-1)
            per_head.append(torch.einsum("bij,bcj->bci", a, vh))
        outs.append(torch.cat(per_head, 1))
    row = m.proj_row(outs[0][..., None])
    col = m.proj_col(outs[1][:, :, None, :])
    gate = F.relu6(m.proj(v + row + col) + 3) / 6
    detail = m.pwconv(F.relu6(m.dwconv(torch.cat([q, k, v], 1))))
    return gate * detail


def test_sea_attention_matches_naive_reference() -> None:
    torch.manual_seed(0)
    m = SeaAttention(dim=12, key_dim=4, num_heads=3).eval()
    with torch.no_grad():
        for mod in m.modules():  # open the zero-initialised gates, randomise BN statistics
            if isinstance(mod, torch.nn.BatchNorm2d):
                mod.weight.uniform_(0.5, 1.5)
                mod.bias.uniform_(-0.2, 0.2)
                mod.running_mean.uniform_(-0.3, 0.3)
                mod.running_var.uniform_(0.5, 2.0)
        x = torch.randn(2, 12, 5, 9)
        torch.testing.assert_close(m(x), _naive_sea(m, x), rtol=1e-5, atol=1e-6)
        # the axial branch matters: changing one row of the input changes every output row
        x2 = x.clone()
        x2[:, :, 0] += 1.0
        assert (m(x2) - m(x))[:, :, 4].abs().amax() > 1e-4
