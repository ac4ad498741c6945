"""Focal Transformer: focal attention against a naive per-window reference, dense feature shapes
for odd sizes, published parameter counts, gradients, determinism, key renaming, overfitting."""

from __future__ import annotations

import math

import pytest
import torch
from nn._helpers import assert_overfits_toy_task, n_params

from tilesegcli.nn.focal import (
    MODEL_BUILDERS,
    FocalBlock,
    build_focal,
    build_focal_backbone,
    checkpoint_filter_fn,
    focal_test,
)

pytestmark = pytest.mark.usefixtures("one_thread")


def _naive_focal(blk: FocalBlock, y: torch.Tensor, ws: int, e: int, fw: int) -> torch.Tensor:
    """Per-window loop: window tokens, the four diagonal (+-e, +-e) shifted copies of the window
    minus its own tokens (wrapping at the map edge), and the fw x fw mean-pooled windows around it
    that exist. All position biases are zero in the caller."""
    attn = blk.attn
    b_, h, w, c = y.shape
    nh, nw = h // ws, w // ws
    heads = attn.heads
    wq, wk, wv = attn.qkv.weight.chunk(3)
    bq, bk, bv = attn.qkv.bias.chunk(3)
    pooled = y.view(b_, nh, ws, nw, ws, c).mean((2, 4))
    out = torch.zeros_like(y)
    for b in range(b_):
        for a in range(nh):
            for cc in range(nw):
                r0, c0 = a * ws, cc * ws
                qtok = y[b, r0:r0 + ws, c0:c0 + ws].reshape(-1, c)
                keys = [qtok]
                for dy, dx in ((e, e), (e, -e), (-e, e), (-e, -e)):
                    for r in range(ws):
                        for s in range(ws):
                            sy, sx = r + dy, s + dx
                            if 0 <= sy < ws and 0 <= sx < ws:
                                continue
                            keys.append(y[b, (r0 + sy) % h, (c0 + sx) % w][None])
                for i in range(a - fw // 2, a + fw // 2 + 1):
                    for j in range(cc - fw // 2, cc + fw // 2 + 1):
                        if 0 <= i < nh and 0 <= j < nw:
                            keys.append(pooled[b, i, j][None])
                kx = torch.cat(keys)
                q = (qtok @ wq.T + bq).view(-1, heads, c // heads).transpose(0, 1)
                k = (kx @ wk.T + bk).view(-1, heads, c // heads).transpose(0, 1)
                v = (kx @ wv.T + bv).view(-1, heads, c // heads).transpose(0, 1)
                att = (q @ k.transpose(-1, -2) * attn.scale).softmax(-1)
                o = (att @ v).transpose(0, 1).reshape(-1, c)
                out[b, r0:r0 + ws, c0:c0 + ws] = attn.proj(o).view(ws, ws, c)
    return out


def test_focal_attention_matches_naive_reference() -> None:
    torch.manual_seed(0)
    ws, e, fw = 4, 1, 3
    blk = FocalBlock(8, num_heads=2, window_size=ws, expand_size=e, focal_level=2,
                     focal_window=fw, pool="mean")
    with torch.no_grad():
        blk.attn.rpb_local.zero_()
        blk.attn.rpb_neighbors.zero_()
        blk.attn.rpb_pooled[0].zero_()
        y = torch.randn(2, 8, 12, 8)
        got = blk.attn(y, blk._pooled(y))
        want = _naive_focal(blk, y, ws, e, fw)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    # the number of keys per window: 16 own + 4*16 - 4*9 ring + up to 9 pooled
    assert blk.attn.keep_rolled.numel() == 4 * ws * ws - 4 * (ws - e) ** 2


def test_fc_pooling_starts_as_mean_pooling() -> None:
    torch.manual_seed(0)
    kw = dict(num_heads=2, window_size=4, expand_size=1, focal_level=2, focal_window=3)
    fc, mean = FocalBlock(8, pool="fc", **kw), FocalBlock(8, pool="mean", **kw)
    y = torch.randn(1, 8, 12, 8)
    torch.testing.assert_close(fc._pooled(y)[0], mean._pooled(y)[0])


def test_position_bias_changes_output() -> None:
    torch.manual_seed(0)
    blk = FocalBlock(8, num_heads=2, window_size=4, expand_size=1, focal_level=2, focal_window=3)
    y = torch.randn(1, 8, 8, 8)
    with torch.no_grad():
        a = blk.attn(y, blk._pooled(y))
        blk.attn.rpb_local.add_(torch.randn_like(blk.attn.rpb_local))
        b = blk.attn(y, blk._pooled(y))
    assert not torch.allclose(a, b)


@pytest.mark.parametrize("hw", [(1, 1), (37, 53), (64, 64), (29, 100)])
def test_dense_features_and_logits_any_size(hw: tuple[int, int]) -> None:
    torch.manual_seed(0)
    net = focal_test(num_classes=4).eval()
    x = torch.randn(1, 3, *hw)
    with torch.no_grad():
        feats = net.backbone(x)
        y = net(x)
        up = net(x, upsample=True)
    h, w = math.ceil(hw[0] / 4), math.ceil(hw[1] / 4)
    assert list(feats) == ["res2", "res3", "res4", "res5"]
    for i, name in enumerate(feats):
        assert feats[name].shape == (1, net.backbone.dims[i], h, w), name
        h, w = math.ceil(h / 2), math.ceil(w / 2)
    assert y.shape == (1, 4, math.ceil(hw[0] / 4), math.ceil(hw[1] / 4))
    assert up.shape == (1, 4, *hw)
    assert torch.isfinite(up).all()


def test_three_focal_levels_with_cropped_subwindows() -> None:
    # window 7 -> level-2 sub-windows of 3 px: the map is centre-cropped (official behaviour)
    torch.manual_seed(0)
    net = build_focal("test", 3, window_size=7, focal_windows=(7, 5, 3, 1),
                      expand_sizes=(3, 3, 3, 3), focal_levels=(3, 3, 3, 3)).eval()
    with torch.no_grad():
        y = net(torch.randn(1, 3, 61, 90))
    assert y.shape == (1, 3, 16, 23)
    assert len(net.backbone.layers[0].blocks[0].attn.rpb_pooled) == 2


# microsoft/Focal-Transformer README (ImageNet-1K, 224, no conv embedding): Focal-T 28.9M,
# Focal-S 51.1M, Focal-B 89.8M. The official count at 224 has no neighbour table in stage 4
# (its 7x7 map equals the window, so expand_size is set to 0 there), has a single final norm and
# a Linear(C, 1000) classifier; our backbone has one output norm per stage instead.
@pytest.mark.parametrize("size,millions", [("tiny", 28.9), ("small", 51.1), ("base", 89.8)])
def test_param_counts_match_paper(size: str, millions: float) -> None:
    bb = build_focal_backbone(size, expand_sizes=(3, 3, 3, 0))
    n = n_params(bb) - sum(n_params(m) for m in list(bb.out_norms)[:3]) + bb.dims[-1] * 1000 + 1000
    assert round(n / 1e6, 1) == millions


# same README, "Use Conv: Yes" rows (overlapping conv patch embedding / downsampling)
@pytest.mark.parametrize("size,millions", [("tiny", 30.8), ("small", 53.1), ("base", 93.3)])
def test_conv_embed_param_counts_match_paper(size: str, millions: float) -> None:
    bb = build_focal_backbone(size, expand_sizes=(3, 3, 3, 0), conv_embed=True)
    n = n_params(bb) - sum(n_params(m) for m in list(bb.out_norms)[:3]) + bb.dims[-1] * 1000 + 1000
    assert round(n / 1e6, 1) == millions


def test_conv_embed_keeps_feature_sizes() -> None:
    net = build_focal("test", 2, conv_embed=True).eval()
    with torch.no_grad():
        feats = net.backbone(torch.randn(1, 3, 37, 53))
    assert [tuple(f.shape[-2:]) for f in feats.values()] == [(10, 14), (5, 7), (3, 4), (2, 2)]


def test_exact_tiny_count_is_stable() -> None:
    bb = build_focal_backbone("tiny", expand_sizes=(3, 3, 3, 0))
    n = n_params(bb) - sum(n_params(m) for m in list(bb.out_norms)[:3]) + 768 * 1000 + 1000
    assert n == 28_880_380


def test_gradients_flow_to_every_parameter() -> None:
    torch.manual_seed(0)
    net = focal_test(num_classes=3).train()
    x = torch.randn(2, 3, 45, 38, requires_grad=True)
    net(x, upsample=True).square().mean().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    for name, p in net.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


def test_determinism_and_train_eval() -> None:
    torch.manual_seed(5)
    a = focal_test(num_classes=3)
    torch.manual_seed(5)
    b = focal_test(num_classes=3)
    x = torch.randn(2, 3, 40, 40)
    a.eval()
    b.eval()
    with torch.no_grad():
        torch.testing.assert_close(a(x), b(x), rtol=0, atol=0)
        single = a(x[:1])
        torch.testing.assert_close(single, a(x)[:1], rtol=1e-4, atol=1e-5)
    # stochastic depth and dropout: train-mode outputs vary, eval-mode ones do not
    c = build_focal("test", 3, drop_path_rate=0.5, dropout=0.5).train()
    with torch.no_grad():
        assert not torch.allclose(c(x), c(x))
        c.eval()
        torch.testing.assert_close(c(x), c(x), rtol=0, atol=0)


def test_checkpoint_filter_maps_official_keys() -> None:
    net = build_focal("tiny", 150)
    ours = net.state_dict()
    official = {
        "patch_embed.proj.weight": (96, 3, 4, 4),
        "patch_embed.norm.bias": (96,),
        "layers.0.blocks.0.attn.relative_position_bias_table": (169, 3),
        "layers.0.blocks.0.attn.relative_position_bias_table_to_neighbors": (1, 3, 49, 132),
        "layers.0.blocks.1.attn.relative_position_bias_table_to_windows.0": (3, 169),
        "layers.3.blocks.1.attn.relative_position_bias_table_to_windows.0": (24, 49),
        "layers.2.blocks.5.pool_layers.0.weight": (1, 49),
        "layers.1.blocks.0.attn.qkv.weight": (576, 192),
        "layers.0.downsample.proj.weight": (192, 96, 2, 2),
        "layers.2.downsample.norm.weight": (768,),
        "norm.weight": (768,),
        "layers.0.blocks.0.attn.relative_position_index": (49, 49),
        "layers.0.blocks.0.attn.valid_ind_rolled": (132,),
        "head.weight": (1000, 768),
    }
    sd = {k: torch.zeros(s) for k, s in official.items()}
    mapped = checkpoint_filter_fn({"model": sd}, net)
    assert len(mapped) == len(official) - 3  # two index buffers and the ImageNet head dropped
    for k, v in mapped.items():
        assert ours[k].shape == v.shape, k
    assert "backbone.out_norms.3.weight" in mapped
    assert "backbone.layers.2.blocks.5.pool.0.weight" in mapped
    assert "backbone.layers.0.blocks.1.attn.rpb_pooled.0" in mapped
    # detection/segmentation checkpoints: backbone.* prefix and per-stage norms
    seg = checkpoint_filter_fn({"backbone.norm1.weight": torch.zeros(192)}, net)
    assert list(seg) == ["backbone.out_norms.1.weight"]
    with pytest.raises(ValueError, match="shape"):
        checkpoint_filter_fn({"patch_embed.proj.weight": torch.zeros(128, 3, 4, 4)}, net)


def test_builders() -> None:
    assert set(MODEL_BUILDERS) == {"focal_tiny", "focal_small", "focal_base", "focal_test"}
    with pytest.raises(ValueError, match="unknown Focal size"):
        build_focal("huge")


def test_tiny_variant_overfits_toy_segmentation() -> None:
    assert_overfits_toy_task(focal_test, lr=3e-3)


def test_gather_plan_equals_official_unfold_at_every_level() -> None:
    # the cached token index must pick exactly what the official unfold (zero padded, stride
    # 2**k, kept corner) would give, for the first and a strided second pooled level
    from tilesegcli.nn.focal import FocalAttention

    torch.manual_seed(0)
    att = FocalAttention(6, num_heads=2, window_size=4, expand_size=1, focal_level=3,
                         focal_window=3)
    h, w = 12, 16
    maps = [torch.randn(1, 3, 4, 6), torch.randn(1, 6, 8, 6)]  # (B, h_k, w_k, C)
    index, off = att._gather_plan(h, w, [m.shape[1:3] for m in maps], torch.device("cpu"))
    fine = torch.randn(1, h * w, 6)
    src = torch.cat([fine, torch.zeros(1, 1, 6)] + [m.reshape(1, -1, 6) for m in maps], 1)
    got = src[0, index]  # nW, N, C
    n_fine = 16 + att.keep_rolled.numel()
    start = n_fine
    for lvl, m in enumerate(maps):
        want = att._unfold(m.permute(0, 3, 1, 2), lvl)  # nW, tokens, C
        n = want.shape[1]
        torch.testing.assert_close(got[:, start:start + n], want)
        # off-map tokens are exactly the zero-padded ones of the unfold
        ones = att._unfold(torch.ones(1, 1, *m.shape[1:3]), lvl)[:, :, 0]
        assert torch.equal(off[:, start:start + n], ones == 0)
        start += n
    assert start == index.shape[1]
    assert not off[:, :n_fine].any()
