"""The HoVer-style head: its targets, its maps through the flip views, and the split of merged
nuclei; and training it alone on a frozen network."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from tilesegcli.nn.hv import hv_targets  # noqa: E402
from tilesegcli.nn.hv_split import HVSplit  # noqa: E402
from tilesegcli.nn.postprocess import view_transforms  # noqa: E402
from tilesegcli.segmenters.aff_m2f import unview_map  # noqa: E402


def _disc(shape: tuple[int, int], cy: float, cx: float, r: float) -> np.ndarray:
    yy, xx = np.ogrid[:shape[0], :shape[1]]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r


def test_targets_run_from_minus_one_to_one_across_each_instance() -> None:
    m = np.zeros((1, 20, 30), bool)
    m[0, 5:10, 4:15] = True  # 11 px wide, 5 px high
    t = hv_targets(m)
    assert t.shape == (2, 20, 30) and not t[:, ~m[0]].any()
    np.testing.assert_allclose(t[0, 7, 4:15], np.linspace(-1, 1, 11), atol=1e-6)
    np.testing.assert_allclose(t[1, 5:10, 8], np.linspace(-1, 1, 5), atol=1e-6)
    # a one-pixel-wide instance has no offsets
    assert not hv_targets(np.eye(8, dtype=bool)[None][:, :1])[:, 0].any()


@pytest.mark.parametrize("view", range(8))
def test_unview_maps_the_views_targets_back_to_the_tiles(view: int) -> None:
    """The maps of a flipped/transposed tile, mapped back, are the tile's own maps: the head's
    views can be averaged."""
    shape = (24, 24)
    masks = np.stack([_disc(shape, 8, 6, 4) | _disc(shape, 9, 9, 3), _disc(shape, 17, 15, 5)])
    masks[0] &= ~masks[1]
    transposed, dims = view_transforms(8)[view]
    mv = torch.from_numpy(masks)[None]  # (1, K, H, W): as the (B, C, H, W) input
    mv = mv.transpose(2, 3) if transposed else mv
    mv = mv.flip(dims) if dims else mv
    seen = torch.from_numpy(hv_targets(mv[0].numpy()))
    prob = mv[0].any(0, keepdim=True).float()
    back = unview_map("hv", torch.cat([prob, seen])[None], transposed, dims)[0]
    own = hv_targets(masks)
    np.testing.assert_allclose(back[1:].numpy(), own, atol=1e-6)
    np.testing.assert_array_equal(back[0].numpy() > 0, masks.any(0))


def _ideal_maps(masks: np.ndarray) -> torch.Tensor:
    """What a perfect head gives for ``masks``: (3, H/2, W/2) on the stride-2 grid."""
    t = np.concatenate([masks.any(0, keepdims=True).astype(np.float32), hv_targets(masks)])
    return torch.nn.functional.avg_pool2d(torch.from_numpy(t)[None], 2)[0]


def test_split_cuts_a_merged_pair_and_leaves_single_nuclei_alone() -> None:
    shape = (64, 64)
    a, b = _disc(shape, 20, 20, 8), _disc(shape, 20, 34, 8)
    b &= ~a
    c = _disc(shape, 46, 40, 9)
    maps = _ideal_maps(np.stack([a, b, c]))
    labels = np.zeros(shape, np.int32)
    labels[a | b], labels[c] = 1, 2  # Mask2Former merged a and b
    out, cls, sc = HVSplit().apply(labels, np.array([1, 1]), np.array([0.9, 0.8], np.float32), maps)
    assert len(sc) == 3 and list(cls) == [1, 1, 1] and list(np.round(sc, 2)) == [0.9, 0.8, 0.9]

    def iou(x: np.ndarray, y: np.ndarray) -> float:
        return float((x & y).sum() / (x | y).sum())

    pieces = [out == k for k in (1, 3)]
    assert sorted(round(max(iou(p, a), iou(p, b)), 1) >= 0.8 for p in pieces) == [True, True]
    assert iou(pieces[0], pieces[1]) == 0 and (out == 2).sum() == c.sum()
    # nothing to split: unchanged
    single = np.where(c, 1, 0).astype(np.int32)
    out1, _, sc1 = HVSplit().apply(single, np.array([1]), np.array([0.5], np.float32), maps)
    np.testing.assert_array_equal(out1, single)
    assert len(sc1) == 1


def test_trim_drops_pixels_the_nucleus_map_calls_background() -> None:
    shape = (32, 32)
    a = _disc(shape, 16, 16, 6)
    maps = _ideal_maps(a[None])
    labels = np.where(_disc(shape, 16, 16, 10), 1, 0).astype(np.int32)  # an oversized mask
    out, _, _ = HVSplit(trim=0.5).apply(labels, np.array([1]), np.array([0.9], np.float32), maps)
    assert abs(int((out == 1).sum()) - int(a.sum())) < 0.15 * a.sum()
    assert not (out[~_disc(shape, 16, 16, 8)]).any()


@pytest.fixture(scope="module")
def hv_cards(tmp_path_factory) -> Path:
    from tilesegcli.nn.aff_m2f import build_aff_m2f

    from ..zoo.test_segmenter import _card, _head

    d = tmp_path_factory.mktemp("hv")
    torch.manual_seed(3)
    head = {**_head(), "hires_dim": 16, "hv_head": True}
    model = build_aff_m2f("aff_fixture", backbone_kwargs={"alpha": 4.0}, **head).eval()
    with torch.no_grad():
        model.sem_seg_head.predictor.class_embed.bias.mul_(0).add_(torch.tensor([2.0, 1.0, 0.5, -1.0]))
        for p in model.sem_seg_head.hv_head.parameters():
            p.normal_(0, 0.5)
    torch.save({"model": dict(model.state_dict())}, d / "ckpt.pth")
    card = _card("instance")
    card["architecture"]["head_kwargs"] = head
    card["weights"]["ignore_keys"] = []
    for views, split in ((1, False), (8, False), (1, True)):
        c = {**card, "name": f"hv-{views}-{split}",
             "postprocess": {**card["postprocess"], "flip_views": views, "hv_post": split,
                             "hv_edge": 0.05}}
        (d / f"v{views}s{split}.json").write_text(json.dumps(c))
    return d


def test_head_maps_are_the_mean_of_the_views_mapped_back(hv_cards: Path) -> None:
    from tilesegcli.zoo import load_segmenter

    from ..zoo.test_segmenter import _tiles

    tiles = _tiles(2, 64, 64)
    one = load_segmenter(str(hv_cards / "v1sFalse.json"), device="cpu")
    eight = load_segmenter(str(hv_cards / "v8sFalse.json"), device="cpu")
    _, _, m8 = eight.forward_maps(tiles)
    assert m8 is not None and m8["hv"].shape == (2, 3, 32, 32)
    maps = []
    for transposed, dims in view_transforms(8):
        x = torch.from_numpy(tiles).permute(0, 3, 1, 2)  # as the network's input
        x = x.transpose(2, 3) if transposed else x
        x = x.flip(dims) if dims else x
        _, _, mo = one.forward_maps(np.ascontiguousarray(x.permute(0, 2, 3, 1).numpy()))
        maps.append(unview_map("hv", mo["hv"], transposed, dims))
    torch.testing.assert_close(m8["hv"], torch.stack(maps).mean(0), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("agree", [0.0, 2.0])
def test_hv_views_averages_the_maps_of_the_first_views_only(hv_cards: Path, agree: float) -> None:
    """``hv_views`` k: the HoVer maps of views 0..k-1 (k = 5 crosses into the transposed batch),
    everything else as with all views; with ``view_agreement`` (2.0: every tile gets all views)
    too."""
    from tilesegcli.zoo import load_card, load_segmenter

    from ..zoo.test_segmenter import _tiles

    tiles = _tiles(2, 64, 64)
    card = load_card(str(hv_cards / "v8sFalse.json")).with_overrides(view_agreement=agree)
    every = load_segmenter(card, device="cpu")
    lg, mk, ref = every.forward_maps(tiles)
    one = load_segmenter(str(hv_cards / "v1sFalse.json"), device="cpu")
    views = []
    for transposed, dims in view_transforms(8):
        x = torch.from_numpy(tiles).permute(0, 3, 1, 2)
        x = x.transpose(2, 3) if transposed else x
        x = x.flip(dims) if dims else x
        _, _, mo = one.forward_maps(np.ascontiguousarray(x.permute(0, 2, 3, 1).numpy()))
        views.append(unview_map("hv", mo["hv"], transposed, dims))
    for k in (1, 2, 5):
        seg = load_segmenter(card.with_overrides(hv_views=k), device="cpu")
        assert seg.hv_views == k
        lg_k, mk_k, maps = seg.forward_maps(tiles)
        torch.testing.assert_close(lg_k, lg)
        torch.testing.assert_close(mk_k, mk)
        assert set(maps) == set(ref)
        for key in set(ref) - {"hv"}:
            torch.testing.assert_close(maps[key], ref[key])
        torch.testing.assert_close(maps["hv"], torch.stack(views[:k]).mean(0), atol=1e-5, rtol=1e-5)


def test_split_in_predict_batch_equals_the_split_of_the_plain_result(hv_cards: Path) -> None:
    from tilesegcli.zoo import load_segmenter

    from ..zoo.test_segmenter import _tiles

    tiles = _tiles(3, 64, 64)
    plain = load_segmenter(str(hv_cards / "v1sFalse.json"), device="cpu")
    split = load_segmenter(str(hv_cards / "v1sTrue.json"), device="cpu")
    _, _, maps = plain.forward_maps(tiles)
    got = split.predict_batch(tiles)
    n_more = 0
    for i, (a, b) in enumerate(zip(plain.predict_batch(tiles), got, strict=True)):
        ref = HVSplit(edge=0.05).apply(a.labels, a.instance_classes, a.instance_scores,
                                      maps["hv"][i])
        ref_res = split._instances(*ref)
        np.testing.assert_array_equal(b.labels, ref_res.labels)
        n_more += b.num_instances - a.num_instances
    assert n_more >= 0


def test_hv_only_training_changes_the_head_and_nothing_else(tmp_path: Path) -> None:
    from tilesegcli.train.checkpoint import load_training_state
    from tilesegcli.train.loop import train

    from ..train.test_train_loop import TINY_ARCH, _cfg

    arch = {**TINY_ARCH, "head_kwargs": {**TINY_ARCH["head_kwargs"], "hires_dim": 16}}
    base = _cfg(tmp_path, "base", 1).with_updates(architecture=arch)
    run0 = train(base)
    cfg = base.with_updates(out_dir=str(tmp_path / "hv"), hv_weight=1.0, hv_only=True, steps=3,
                            init_from=str(run0 / "last.pt"))
    assert cfg.architecture["head_kwargs"]["hv_head"] is True
    before = load_training_state(run0 / "last.pt")["model"]
    after = load_training_state(train(cfg) / "last.pt")["model"]
    changed = {k for k in after if k in before and not torch.equal(after[k], before[k])}
    assert changed == set()  # everything the base network had is frozen
    new = [k for k in after if k not in before]
    assert new and all(k.startswith("model.sem_seg_head.hv_head.") for k in new)
    log = [json.loads(x) for x in (tmp_path / "hv" / "train_log.jsonl").read_text().splitlines()]
    assert any("hv_msge" in r for r in log if r.get("event") == "train")


def test_gate_and_add_use_the_nucleus_map() -> None:
    shape = (64, 64)
    a, b = _disc(shape, 16, 16, 7), _disc(shape, 44, 44, 7)
    maps = _ideal_maps(np.stack([a, b]))
    labels = np.zeros(shape, np.int32)
    labels[a] = 1
    labels[_disc(shape, 16, 48, 6)] = 2  # on background: the nucleus map says no
    out, cls, sc = HVSplit(gate=0.5).apply(labels, np.array([1, 1]), np.array([0.9, 0.8]), maps)
    assert (out == 1).sum() == a.sum() and not (out == 2).any() and len(sc) == 2
    # b has no instance: added, with its mean nucleus probability as score, as new_class
    out, cls, sc = HVSplit(gate=0.5, add=0.2).apply(labels, np.array([1, 1]),
                                                    np.array([0.9, 0.8]), maps, new_class=3)
    assert len(sc) == 3 and cls[2] == 3 and 0.5 < sc[2] <= 1.0
    got = out == 3
    assert (got & b).sum() / (got | b).sum() > 0.8 and (out == 1).sum() == a.sum()
    # nothing found by Mask2Former: the HoVer instances alone
    out, cls, sc = HVSplit(add=0.2).apply(np.zeros(shape, np.int32), np.zeros(0, np.int64),
                                          np.zeros(0, np.float32), maps)
    assert len(sc) == 2 and {int(out[16, 16]), int(out[44, 44])} == {1, 2}


def test_training_configs_carry_every_hover_stage_key_with_the_cards_defaults() -> None:
    """A trained card's ``postprocess`` is written from the training configuration: every key of
    the stage must be a field there, with the default a card gets without it."""
    from tilesegcli.nn.hv_split import postprocess_defaults
    from tilesegcli.train.config import TrainConfig
    from tilesegcli.train.source import POSTPROCESS_FIELDS

    cfg = TrainConfig()
    for key, default in postprocess_defaults().items():
        assert key in POSTPROCESS_FIELDS
        assert getattr(cfg, key) == default, key
