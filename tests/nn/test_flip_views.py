"""Test-time flips of instance models (card ``postprocess.flip_views``): the mask vote on a hand
case, and on the bundled model that the merged result is flip-equivariant."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from tilesegcli.errors import UsageError  # noqa: E402
from tilesegcli.nn.postprocess import vote_views  # noqa: E402

SLIDE = Path(__file__).resolve().parents[2] / "examples" / "cmu-1-small-region.svs"


def _logits(scores: list[float]) -> torch.Tensor:
    """(N, 2) logits of one class whose softmax class probability is each score."""
    s = torch.tensor(scores)
    return torch.stack([s.log(), (1 - s).log()], 1)


def test_vote_views_hand_case() -> None:
    # view 1: object A (score 0.9) and object B (0.8); view 2: A again, shifted by one column
    # (IoU 12/20 = 0.6 with A), score 0.7, and an empty candidate (score 0.01, ignored)
    m = torch.full((4, 4, 8), -10.0)
    m[0, 0:4, 0:4] = 10.0  # A, view 1
    m[1, 0:2, 6:8] = 10.0  # B, view 1
    m[2, 0:4, 1:5] = 10.0  # A, view 2
    lg, mk = vote_views(_logits([0.9, 0.8, 0.7, 0.01]), m, views=2)
    assert lg.shape == (2, 2) and mk.shape == (2, 4, 8)
    p = torch.softmax(lg, -1)[:, 0]
    assert math.isclose(float(p[0]), (0.9 + 0.7) / 2, rel_tol=1e-5)  # found in both views
    assert math.isclose(float(p[1]), 0.8 / 2, rel_tol=1e-5)  # one view only: halved
    prob = mk.sigmoid()
    # merged A: score-weighted mean of the two masks (0.9 / 1.6 where only view 1 has it)
    assert math.isclose(float(prob[0, 0, 2]), 1.0, abs_tol=1e-4)
    assert math.isclose(float(prob[0, 0, 0]), 0.9 / 1.6, abs_tol=1e-4)
    assert math.isclose(float(prob[0, 0, 4]), 0.7 / 1.6, abs_tol=1e-4)
    assert float(prob[1, 0, 7]) > 0.99 and float(prob[1, 0, 0]) < 1e-3


def test_vote_views_one_vote_per_view() -> None:
    # view 1 predicts A twice (0.9, 0.8), view 2 once (0.6): votes 0.9 + 0.6, not 0.9 + 0.8 + 0.6
    m = torch.full((4, 4, 4), -10.0)
    m[:3, 0:3, 0:3] = 10.0
    lg = _logits([0.9, 0.8, 0.6, 0.01])
    lg, mk = vote_views(lg, m, views=2)
    assert len(lg) == 1
    assert math.isclose(float(torch.softmax(lg, -1)[0, 0]), (0.9 + 0.6) / 2, rel_tol=1e-5)


def test_vote_views_keeps_classes_apart() -> None:
    m = torch.full((2, 4, 4), -10.0)
    m[:, 0:3, 0:3] = 10.0  # same mask, two classes
    lg = torch.tensor([[3.0, -3.0, -3.0], [-3.0, 3.0, -3.0]])
    out, _ = vote_views(lg, m, views=2)
    assert len(out) == 2 and sorted(out[:, :2].argmax(1).tolist()) == [0, 1]


def _default_segmenter_and_tile(views: int, **overrides: object):  # noqa: ANN202
    """The default model with ``views`` test-time views (and any other card ``overrides``) and
    one 128 px tile of bundled tissue."""
    from tilesegcli.zoo import DEFAULT_MODEL, card_names, load_segmenter

    if DEFAULT_MODEL not in card_names() or not SLIDE.exists():
        pytest.skip("default model or bundled slide not present")
    import openslide

    with openslide.OpenSlide(str(SLIDE)) as s:
        region = np.asarray(s.read_region((1000, 1200), 0, (64, 64)).convert("RGB"))
    # the model works at twice the slide's resolution
    tile = np.repeat(np.repeat(region, 2, 0), 2, 1)
    return load_segmenter(DEFAULT_MODEL, device="cpu", flip_views=views, **overrides), tile


def test_bundled_model_with_flips_is_flip_equivariant(one_thread: None) -> None:
    seg, tile = _default_segmenter_and_tile(4)
    assert seg.flip_views == 4
    res = seg.predict_batch(np.stack([tile, tile[:, ::-1]]))
    a, b = res[0].labels > 0, res[1].labels[:, ::-1] > 0
    assert a.sum() > 500  # nuclei found
    assert (a & b).sum() / (a | b).sum() > 0.98
    assert len(res[0].instance_scores) == len(res[1].instance_scores)
    from tilesegcli.zoo import DEFAULT_MODEL, load_segmenter

    with pytest.raises(UsageError, match="flip_views"):
        load_segmenter(DEFAULT_MODEL, device="cpu", flip_views=3)


def test_eight_views_are_the_dihedral_group() -> None:
    """flip_views 8 lists 8 distinct views (the four flips of the tile and of its transpose), each
    undone by flipping then transposing back; the segmenter's use of them is tested on the model
    below."""
    from tilesegcli.nn.postprocess import view_transforms

    x = torch.arange(2 * 3 * 4 * 6, dtype=torch.float32).reshape(2, 3, 4, 6)
    seen = set()
    for t, d in view_transforms(8):
        y = x.transpose(2, 3) if t else x
        y = y.flip(d) if d else y
        seen.add(tuple(y[0, 0].flatten().tolist()))
        back = y.flip(d) if d else y
        assert torch.equal(back.transpose(2, 3) if t else back, x)
    assert len(seen) == 8


def test_bundled_model_eight_views_transpose_equivariant(one_thread: None) -> None:
    """With all 8 views (the HoVer maps of all of them too: with ``hv_views`` 2 the HoVer stage
    sees the tile in two orientations and its transpose in two others) the output of a transposed
    tile is the transposed output."""
    seg, tile = _default_segmenter_and_tile(8, hv_views=0)
    res = seg.predict_batch(np.stack([tile, np.ascontiguousarray(tile.transpose(1, 0, 2))]))
    a, b = res[0].labels > 0, res[1].labels.T > 0
    assert a.sum() > 500
    assert (a & b).sum() / (a | b).sum() > 0.98
    # a non-square tile (edge of an image): transposed views run as their own batch
    rect = np.ascontiguousarray(tile[:, :96])
    ra = seg.predict_batch(rect[None])[0].labels > 0
    rb = seg.predict_batch(np.ascontiguousarray(rect.transpose(1, 0, 2))[None])[0].labels.T > 0
    assert ra.shape == (128, 96) and ra.sum() > 300
    assert (ra & rb).sum() / (ra | rb).sum() > 0.98


def test_copies_of_two_views_vote_like_two_views() -> None:
    """An early-stopped tile fills views 2..V-1 with copies of views 0 and 1; the vote over those
    V slots equals the vote over the two views (scores and masks)."""
    g = torch.Generator().manual_seed(0)
    lg = torch.randn(2 * 6, 3, generator=g) * 2
    mk = torch.randn(2 * 6, 8, 8, generator=g) * 3
    p2, m2 = vote_views(lg, mk, views=2)
    q = 6
    lg4 = torch.cat([lg[:q], lg[q:], lg[:q], lg[q:]])
    mk4 = torch.cat([mk[:q], mk[q:], mk[:q], mk[q:]])
    p4, m4 = vote_views(lg4, mk4, views=4)
    assert len(p2) > 1
    torch.testing.assert_close(p4, p2)
    torch.testing.assert_close(m4, m2)


def test_view_agreement_counts_matched_instances() -> None:
    from tilesegcli.nn.postprocess import view_agreement

    a = np.zeros((8, 8), np.int32)
    a[:4, :4], a[4:, 4:], a[:4, 4:] = 1, 2, 3
    b = np.where(a == 3, 0, a)  # instance 3 only in the first view
    b[:4, :1] = 0  # a little smaller: still IoU 0.75 > 0.5
    assert view_agreement(a, a) == 1.0
    assert view_agreement(a, b) == pytest.approx(2 * 2 / 5)
    empty = np.zeros_like(a)
    assert view_agreement(empty, empty) == 1.0  # nothing in either: they agree
    assert view_agreement(a, empty) == 0.0
    c = np.where(a == 1, 0, a)
    c[:2, :4] = 1  # half of instance 1: IoU 0.5 is not a match
    assert view_agreement(a, c) == pytest.approx(2 * 2 / 6)


def test_early_stop_views_on_the_bundled_model(one_thread: None) -> None:
    """view_agreement a: tiles whose first two views agree (F1 >= a) skip the other views. With
    a above 1 every tile runs all views and the output is the plain 4-view output; with a tiny
    one every tile stops after two views and its output is the 2-view output."""
    seg, tile = _default_segmenter_and_tile(4)
    tiles = np.stack([tile, tile[::-1], np.full_like(tile, 240)])  # the last: blank glass
    plain = seg.predict_batch(tiles)
    post = dict(seg.card.postprocess)
    try:
        object.__setattr__(seg.card, "postprocess", {**post, "view_agreement": 1.5})
        seg.views_run = 0
        full = seg.predict_batch(tiles)
        assert seg.views_run == 3 * 4
        for a, b in zip(plain, full, strict=True):
            np.testing.assert_array_equal(a.labels, b.labels)
        object.__setattr__(seg.card, "postprocess", {**post, "view_agreement": 0.01})
        seg.views_run = 0
        early = seg.predict_batch(tiles)
        assert seg.views_run == 3 * 2
        ref = load_two_view_segmenter().predict_batch(tiles)
        assert len(ref[0].instance_scores) >= 3
        for a, b in zip(ref, early, strict=True):
            np.testing.assert_array_equal(a.labels, b.labels)
            np.testing.assert_allclose(a.instance_scores, b.instance_scores, rtol=1e-5)
    finally:
        object.__setattr__(seg.card, "postprocess", post)


def load_two_view_segmenter():  # noqa: ANN201
    from tilesegcli.zoo import DEFAULT_MODEL, load_segmenter

    return load_segmenter(DEFAULT_MODEL, device="cpu", flip_views=2)
