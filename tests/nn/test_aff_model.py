"""Unit tests of the AFF modules (no ../shared needed): ops equivalence, shapes, gradients, loading."""

from __future__ import annotations

import pytest
import torch

from tilesegcli.errors import WeightsError
from tilesegcli.nn.aff import (
    AFF_CONFIGS,
    BasicLayer,
    aff_out_channels,
    build_aff,
    checkpoint_filter_fn,
    load_official_backbone,
)
from tilesegcli.nn.aff_ops import (
    neighbourhood_attention,
    plan_attention,
    plan_clusters,
    plan_global,
)
from tilesegcli.nn.clustering import cluster_neighbourhood, space_filling_cluster
from tilesegcli.nn.types import BackboneOutput


def _grid(h: int, w: int) -> torch.Tensor:
    ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    return torch.stack([xs, ys], 2).reshape(1, -1, 2).float()


@pytest.mark.parametrize("n,clamp,m", [(203, None, 8), (256, 3, 8), (250, None, 24)])
def test_plan_attention_equals_per_token_gather(n: int, clamp: int | None, m: int) -> None:
    """The cluster-blocked kernel equals the plain gather formula (values and gradients)."""
    g = torch.Generator().manual_seed(n)
    pos = _grid(16, 16)[:, torch.randperm(256, generator=g)[:n]].expand(2, -1, -1).contiguous()
    order, mean, mask = space_filling_cluster(pos, m, 16, 16)
    pos = pos.gather(1, order.unsqueeze(2).expand(-1, -1, 2))
    member, nb_mask, nearest = cluster_neighbourhood(pos, mean, mask, m, 4)
    c, h = 12, 3
    q = torch.randn(2, n, c, generator=g, requires_grad=True)
    kv = torch.randn(2, n, 2 * c, generator=g, requires_grad=True)
    pe = torch.nn.Linear(5, h)
    bk, bv = torch.randn(c, generator=g), torch.randn(c, generator=g)
    fast = plan_attention(q, kv, plan_clusters(pos, nearest, m, clamp), pe, bk, bv, h)
    ref = neighbourhood_attention(q, kv, pos, member, nb_mask, pe, bk, bv, h, clamp)
    torch.testing.assert_close(fast, ref, atol=1e-5, rtol=1e-5)
    w = torch.randn_like(ref)
    g_fast = torch.autograd.grad((fast * w).sum(), [q, kv, pe.weight])
    g_ref = torch.autograd.grad((ref * w).sum(), [q, kv, pe.weight])
    for a, b in zip(g_fast, g_ref, strict=True):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
    # Global attention: everybody attends to everybody.
    idx = torch.arange(n).view(1, 1, n).expand(2, n, n)
    fast = plan_attention(q, kv, plan_global(pos, clamp), pe, bk, bv, h)
    ref = neighbourhood_attention(q, kv, pos, idx, None, pe, bk, bv, h, clamp)
    torch.testing.assert_close(fast, ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("hw", [(100, 140), (67, 93)])
def test_seg_any_input_size(hw: tuple[int, int]) -> None:
    torch.manual_seed(0)
    model = build_aff("aff_fixture", variant="seg").eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, *hw))
    assert isinstance(out, BackboneOutput)
    h, w = -(-hw[0] // 4), -(-hw[1] // 4)  # padded to a multiple of 4, then stride 4
    assert out.canvas_hw == (h, w)
    n = h * w
    for i, (key, lvl) in enumerate(out.levels.items()):
        assert key == f"res{i + 2}"
        assert lvl.feat.shape == (1, n, model.out_channels[key]) and lvl.pos.shape == (1, n, 2)
        assert torch.equal(lvl.pos, lvl.pos.round()) and bool((lvl.pos >= 0).all())
        assert bool((lvl.pos[..., 0] < w).all()) and bool((lvl.pos[..., 1] < h).all())
        assert len({tuple(p) for p in lvl.pos[0].tolist()}) == n  # distinct tokens
        assert torch.isfinite(lvl.feat).all()
        n = int(n * 0.25)
    # every deeper token is also a token of the level above
    res2 = {tuple(p) for p in out.levels["res2"].pos[0].tolist()}
    assert {tuple(p) for p in out.levels["res5"].pos[0].tolist()} <= res2


def test_no_state_between_calls() -> None:
    torch.manual_seed(1)
    model = build_aff("aff_fixture", variant="seg").eval()
    x_small, x_big = torch.randn(1, 3, 64, 96), torch.randn(2, 3, 128, 128)
    with torch.no_grad():
        first = model(x_small).levels["res4"].feat
        model(x_big)
        again = model(x_small).levels["res4"].feat
    assert torch.equal(first, again)


def test_stage_permutation_invariance_as_sets() -> None:
    """Shuffling a stage's input tokens leaves its outputs unchanged as sets (no sort-key ties)."""
    torch.manual_seed(2)
    layer = BasicLayer(16, 24, 8, 48, 2, 2, 2.0, 4.0, 0.25, True, 0.0, 0.0, [0.0, 0.0], 0.0, 511).eval()
    g = torch.Generator().manual_seed(7)
    # A stage-2-like token set: all multiples of 4 (reserve) plus random others, on a 32x32 canvas.
    pos = _grid(32, 32)
    keep = (pos[0, :, 0] % 4 == 0) & (pos[0, :, 1] % 4 == 0)
    keep |= torch.rand(1024, generator=g) < 0.2
    pos = pos[:, keep]
    feat = torch.randn(1, pos.shape[1], 16, generator=g)
    perm = torch.randperm(pos.shape[1], generator=g)
    with torch.no_grad():
        a = layer(pos, feat, 32, 32, stride=4)
        b = layer(pos[:, perm], feat[:, perm], 32, 32, stride=4)

    def as_set(p: torch.Tensor, f: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        o = (p[0, :, 1] * 1000 + p[0, :, 0]).argsort()
        return p[0, o], f[0, o]

    for (pa, fa), (pb, fb) in [((a[0], a[1]), (b[0], b[1])), ((a[2], a[3]), (b[2], b[3]))]:
        sa, sb = as_set(pa, fa), as_set(pb, fb)
        assert torch.equal(sa[0], sb[0])
        torch.testing.assert_close(sa[1], sb[1], atol=1e-5, rtol=1e-5)


def test_training_mode_gradients_reach_prob_net() -> None:
    torch.manual_seed(3)
    model = build_aff("aff_fixture", variant="seg", drop_path_rate=0.2).train()
    out = model(torch.randn(2, 3, 64, 64))
    loss = sum(lvl.feat.square().mean() for lvl in out.levels.values())
    loss.backward()
    for i in range(3):
        grad = model.layers[i].prob_net.weight.grad
        assert grad is not None and float(grad.abs().sum()) > 0
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert missing == []


def test_cls_variant_and_configs() -> None:
    torch.manual_seed(4)
    model = build_aff("aff_fixture", variant="cls").eval()
    with torch.no_grad():
        logits = model(torch.randn(2, 3, 96, 96))
    assert logits.shape == (2, 10)
    assert set(AFF_CONFIGS) >= {
        "aff_mini", "aff_mini_1_5th", "aff_tiny", "aff_tiny_1_5th", "aff_small", "aff_small_1_5th",
        "aff_base_22k", "aff_base_22kto1k", "aff_base_22kto1k_384", "aff_fixture",
    }
    mini = build_aff("aff_mini", variant="cls", num_classes=1000)
    assert sum(p.numel() for p in mini.parameters()) == 6_754_451  # official README count
    assert build_aff("aff_mini").out_channels == {"res2": 32, "res3": 128, "res4": 256, "res5": 384}
    assert aff_out_channels("aff_tiny") == build_aff("aff_tiny").out_channels
    b384 = build_aff("aff_base_22kto1k_384", alpha=8.0)
    assert b384.layers[0].cluster_size == 24 and b384.layers[0].nbhd_size == 144
    assert b384.layers[0].downsample.alpha == 8.0
    with pytest.raises(KeyError):
        build_aff("aff_huge")


def test_checkpoint_loading_rules(tmp_path) -> None:
    torch.manual_seed(5)
    seg = build_aff("aff_fixture", variant="seg")
    cls = build_aff("aff_fixture", variant="cls")
    det = {f"backbone.{k}": v for k, v in seg.state_dict().items()}
    det["sem_seg_head.predictor.query_feat.weight"] = torch.zeros(3, 4)
    det["criterion.empty_weight"] = torch.ones(4)
    torch.save({"model": det}, tmp_path / "seg.pth")
    fresh = build_aff("aff_fixture", variant="seg")
    load_official_backbone(fresh, tmp_path / "seg.pth", "seg")
    for k, v in seg.state_dict().items():
        assert torch.equal(fresh.state_dict()[k], v)
    assert set(checkpoint_filter_fn({"model": det}, fresh)) == set(seg.state_dict())
    # ImageNet (CLS) weights into a SEG model: norm/head dropped, fresh norm0..3 kept.
    torch.save({"model": cls.state_dict()}, tmp_path / "cls.pth")
    load_official_backbone(build_aff("aff_fixture", variant="seg"), tmp_path / "cls.pth")
    load_official_backbone(build_aff("aff_fixture", variant="cls"), tmp_path / "cls.pth", "cls")
    # Errors are WeightsError: a SEG file has no classifier; a missing key; a mismatched variant.
    with pytest.raises(WeightsError):
        load_official_backbone(build_aff("aff_fixture", variant="cls"), tmp_path / "seg.pth")
    broken = dict(det)
    del broken["backbone.layers.0.blocks.0.attn.q.weight"]
    with pytest.raises(WeightsError):
        load_official_backbone(build_aff("aff_fixture", variant="seg"), {"model": broken})
    with pytest.raises(WeightsError):
        load_official_backbone(seg, tmp_path / "seg.pth", "cls")
    with pytest.raises(WeightsError):
        load_official_backbone(seg, tmp_path / "missing.pth")


def test_autocast_bf16_runs() -> None:
    """AMP-safe code path: under autocast the backbone runs and gives finite features."""
    torch.manual_seed(6)
    model = build_aff("aff_fixture", variant="seg").eval()
    x = torch.randn(1, 3, 96, 128)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x)
    assert [lvl.feat.shape[1] for lvl in out.levels.values()] == [768, 192, 48, 12]
    for lvl in out.levels.values():
        assert torch.isfinite(lvl.feat.float()).all()
        assert lvl.pos.dtype == torch.float32 and torch.equal(lvl.pos, lvl.pos.round())


@pytest.mark.parametrize("hw", [(2, 3), (8, 8), (13, 17), (4, 200)])
def test_tiny_and_thin_inputs(hw: tuple[int, int]) -> None:
    """Inputs where stages become global or hold one token still run (the official code cannot)."""
    torch.manual_seed(7)
    model = build_aff("aff_fixture", variant="seg").eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, *hw))
    assert out.canvas_hw == (-(-hw[0] // 4), -(-hw[1] // 4))
    for lvl in out.levels.values():
        assert lvl.feat.shape[1] >= 1 and torch.isfinite(lvl.feat).all()


def test_fast_paths_equal_reference_paths(monkeypatch) -> None:
    """At a size where every fast path is active (local knn, candidate clusters, cluster-blocked
    attention), the backbone equals brute-force knn + per-token gather attention."""
    import tilesegcli.nn.aff as aff
    from tilesegcli.nn import clustering

    torch.manual_seed(8)
    model = build_aff("aff_fixture", variant="seg").eval()
    x = torch.randn(1, 3, 320, 352)
    with torch.no_grad():
        fast = model(x)

    def brute_nearest(pos, mean, m, nnc):
        return clustering.knn(pos, mean, nnc, force="brute")[0]

    def ref_plan(pos, nearest, m, clamp):
        return ("local", pos, nearest, m, clamp)

    def ref_global(pos, clamp):
        return ("global", pos, None, None, clamp)

    def ref_attention(q, kv, plan, pos_embed, blank_k, blank_v, heads, *args):
        kind, pos, nearest, m, clamp = plan
        b, n, _ = pos.shape
        if kind == "global":
            idx, mask = torch.arange(n).view(1, 1, n).expand(b, n, n), None
        else:
            slots = (nearest.unsqueeze(3) * m + torch.arange(m)).reshape(b, n, -1)
            idx, mask = torch.where(slots < n, slots, 0), (slots < n).float()
        return neighbourhood_attention(q, kv, pos, idx, mask, pos_embed, blank_k, blank_v, heads, clamp)

    monkeypatch.setattr(aff, "nearest_clusters", brute_nearest)
    monkeypatch.setattr(aff, "plan_clusters", ref_plan)
    monkeypatch.setattr(aff, "plan_global", ref_global)
    monkeypatch.setattr(aff, "plan_attention", ref_attention)
    monkeypatch.setattr(clustering, "_nearest_other_d2", lambda p, r: clustering.knn(p, p, 2, force="brute")[1][..., 1])
    with torch.no_grad():
        ref = model(x)
    for key, lvl in fast.levels.items():
        assert torch.equal(lvl.pos, ref.levels[key].pos), key
        torch.testing.assert_close(lvl.feat, ref.levels[key].feat, atol=1e-4, rtol=1e-4)


def test_batch_independent_mode_matches_single_images() -> None:
    torch.manual_seed(9)
    model = build_aff("aff_fixture", variant="seg").eval()
    model.set_batch_independent(True)
    x = torch.randn(3, 3, 96, 80)
    x[1] *= 3.0  # different content -> different ratios / importance
    with torch.no_grad():
        batch = model(x)
        for i in range(3):
            single = model(x[i : i + 1])
            for key, lvl in single.levels.items():
                assert torch.equal(lvl.pos[0], batch.levels[key].pos[i])
                torch.testing.assert_close(lvl.feat[0], batch.levels[key].feat[i], atol=1e-5, rtol=1e-5)
