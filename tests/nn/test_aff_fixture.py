"""Equality of tilesegcli.nn.aff with the official AutoFocusFormer (golden fixtures in ../shared).

Tokens are compared as sets keyed by position (rows sorted by (y, x), positions exact, features within
the fixture README's atol=rtol=1e-4) and in the official token order through the `order` arrays.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tilesegcli.nn.aff import build_aff, load_official_backbone
from tilesegcli.nn.types import BackboneOutput

TOL = dict(atol=1e-4, rtol=1e-4)


def _load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def _sorted(pos: torch.Tensor, feat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    perm = (pos[..., 1] * 100000 + pos[..., 0]).argsort(dim=1)
    return (pos.gather(1, perm[..., None].expand(-1, -1, 2)),
            feat.gather(1, perm[..., None].expand(-1, -1, feat.shape[2])))


def _check_level(pos: torch.Tensor, feat: torch.Tensor, ref_pos: torch.Tensor, ref_feat: torch.Tensor,
                 order: torch.Tensor) -> None:
    assert pos.shape == ref_pos.shape and feat.shape == ref_feat.shape
    p, f = _sorted(pos, feat)
    assert torch.equal(p, ref_pos), "token sets differ"
    torch.testing.assert_close(f, ref_feat, **TOL)
    # Official token order: sorted rows re-ordered by `order` must equal ours row for row.
    assert torch.equal(ref_pos.gather(1, order[..., None].expand(-1, -1, 2)), pos), "token order differs"
    torch.testing.assert_close(ref_feat.gather(1, order[..., None].expand(-1, -1, feat.shape[2])), feat, **TOL)


def _official(aff_fixtures: Path, variant: str) -> tuple[torch.nn.Module, dict, dict]:
    """The fixture model of ``variant`` ("cls" / "seg") with the official weights loaded, in eval
    mode, and the fixture's ``<variant>_io.pt`` and ``<variant>_debug.pt`` contents."""
    model = build_aff("aff_fixture", variant=variant).eval()
    load_official_backbone(model, aff_fixtures / f"{variant}_checkpoint.pth", variant)
    return model, _load(aff_fixtures / f"{variant}_io.pt"), _load(aff_fixtures / f"{variant}_debug.pt")


@pytest.fixture(scope="module")
def cls_run(aff_fixtures: Path):
    model, io, debug = _official(aff_fixtures, "cls")
    with torch.no_grad():
        inter = model.forward_intermediates(io["input"])
        logits = model(io["input"])
        pooled = model.forward_pooled(io["input"])
    return io, debug, inter, logits, pooled


@pytest.fixture(scope="module")
def seg_run(aff_fixtures: Path):
    model, io, debug = _official(aff_fixtures, "seg")
    with torch.no_grad():
        out = model(io["input"])
        inter = model.forward_intermediates(io["input"])
    return io, debug, out, inter


def test_cls_logits_and_pooled(cls_run) -> None:
    io, _, _, logits, pooled = cls_run
    torch.testing.assert_close(logits, io["logits"], **TOL)
    torch.testing.assert_close(pooled, io["pooled"], **TOL)


def test_cls_stages(cls_run) -> None:
    io, dbg, inter, _, _ = cls_run
    assert [s.feat.shape[1] for s in inter["stages"]] == [3136, 784, 196, 49]
    for got, ref in zip(inter["stages"], io["stages"], strict=True):
        _check_level(got.pos, got.feat, ref["pos"], ref["feat"], ref["order"])
    pe = dbg["patch_embed"]
    _check_level(inter["patch_embed"].pos, inter["patch_embed"].feat, pe["pos"], pe["feat"], pe["order"])


def test_cls_merged(cls_run) -> None:
    io, dbg, inter, _, _ = cls_run
    for i, (got, ref) in enumerate(zip(inter["merged"], dbg["merged"], strict=True)):
        _check_level(got.pos, got.feat, io["stages"][i + 1]["pos"], ref["feat"], ref["order"])


def test_seg_levels(seg_run) -> None:
    io, _, out, _ = seg_run
    assert isinstance(out, BackboneOutput)
    assert out.canvas_hw == tuple(io["spatial_shape"])
    assert list(out.levels) == ["res2", "res3", "res4", "res5"]
    for key, lvl in out.levels.items():
        _check_level(lvl.pos, lvl.feat, io[f"{key}_pos"], io[key], io[f"{key}_order"])


def test_seg_merged(seg_run) -> None:
    io, dbg, _, inter = seg_run
    for i, (got, ref) in enumerate(zip(inter["merged"], dbg["merged"], strict=True)):
        _check_level(got.pos, got.feat, io[f"res{i + 3}_pos"], ref["feat"], ref["order"])


def test_seg_batch_of_one_matches(aff_fixtures: Path, seg_run) -> None:
    """Image 0 alone gives the same levels as in the batch of two (no state cached between calls)."""
    io, _, out, _ = seg_run
    model = build_aff("aff_fixture", variant="seg").eval()
    load_official_backbone(model, aff_fixtures / "seg_checkpoint.pth")
    with torch.no_grad():
        single = model(io["input"][1:2])
    for key, lvl in single.levels.items():
        ref = out.levels[key]
        p, f = _sorted(lvl.pos, lvl.feat)
        rp, rf = _sorted(ref.pos[1:2], ref.feat[1:2])
        assert torch.equal(p, rp)
        torch.testing.assert_close(f, rf, **TOL)
