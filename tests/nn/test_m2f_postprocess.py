"""Mask2Former inference modes against dense reference formulas on synthetic predictions."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from tilesegcli.nn.postprocess import (
    clean_instances,
    instance_inference,
    panoptic_inference,
    semantic_inference,
    upsample_masks,
)


def _preds(seed: int, q: int = 20, k: int = 3, h: int = 6, w: int = 5):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(q, k + 1, generator=g) * 3, torch.randn(q, h, w, generator=g) * 4


def test_upsample_crop_and_resize() -> None:
    m = torch.randn(2, 6, 5)
    up = upsample_masks(m, (22, 19))
    ref = F.interpolate(m[None], size=(24, 20), mode="bilinear", align_corners=False)[0]
    torch.testing.assert_close(up, ref[:, :22, :19])
    assert upsample_masks(m, (22, 19), (11, 7)).shape == (2, 11, 7)


def test_semantic_equals_dense_einsum() -> None:
    logits, masks = _preds(0)
    got = semantic_inference(logits, masks, (24, 20))
    ref = torch.einsum("qc,qhw->chw", F.softmax(logits, -1)[:, :-1],
                       upsample_masks(masks, (24, 20)).sigmoid())
    torch.testing.assert_close(got, ref)
    assert got.shape == (3, 24, 20)


def test_instance_label_image_highest_score_wins() -> None:
    logits, masks = _preds(1)
    res = instance_inference(logits, masks, (24, 20), topk=10)
    up = upsample_masks(masks, (24, 20))
    prob = F.softmax(logits, -1)[:, :-1]
    flat_scores, flat = prob.flatten().topk(10)
    q, c = flat // 3, flat % 3
    fg = (up[q] > 0).float()
    mscore = (up[q].sigmoid() * fg).flatten(1).sum(1) / (fg.flatten(1).sum(1) + 1e-6)
    score = flat_scores * mscore
    # reference: per pixel, the highest-scored candidate whose mask covers it
    cover = torch.where(fg.bool(), score[:, None, None], torch.tensor(-1.0))
    best_score, best = cover.max(0)
    n = len(res.scores)
    assert n == len(res.classes) and n > 0
    assert np.all(np.diff(res.scores) <= 0)
    assert set(np.unique(res.labels)) <= set(range(n + 1))
    for i in range(1, n + 1):
        assert (res.labels == i).any()
    lab = torch.from_numpy(res.labels)
    assert torch.equal(lab == 0, best_score < 0)
    chosen_scores = torch.from_numpy(res.scores)[(lab[lab > 0] - 1).long()]
    torch.testing.assert_close(chosen_scores, best_score[lab > 0])
    # classes follow their candidates
    for i in range(n):
        j = int(torch.nonzero(torch.isclose(score, torch.tensor(res.scores[i])))[0])
        assert int(c[j]) == int(res.classes[i])


def test_instance_threshold_and_empty() -> None:
    logits, masks = _preds(2)
    res = instance_inference(logits, masks, (24, 20), topk=10, score_threshold=2.0)
    assert len(res.scores) == 0 and res.labels.shape == (24, 20) and res.labels.max() == 0
    assert res.labels.dtype == np.int32


def test_instance_min_visible_drops_hidden_duplicates() -> None:
    # 1 class; query 0: a big confident disc; query 1: a slightly shifted duplicate, less sure;
    # query 2: a separate object. Masks at stride 4 on a 32 x 32 input.
    yy, xx = torch.meshgrid(torch.arange(8.0), torch.arange(8.0), indexing="ij")
    masks = torch.full((3, 8, 8), -8.0)
    masks[0][(yy - 3) ** 2 + (xx - 3) ** 2 <= 5] = 8.0
    masks[1][(yy - 3) ** 2 + (xx - 4) ** 2 <= 5] = 8.0
    masks[2][(yy - 6.5) ** 2 + (xx - 6.5) ** 2 <= 1] = 8.0
    logits = torch.tensor([[4.0, 0.0], [1.0, 0.0], [3.0, 0.0]])
    base = instance_inference(logits, masks, (32, 32), topk=3)
    assert len(base.scores) == 3  # the duplicate survives as a sliver
    sliver = (base.labels == 3).sum() if base.scores[2] < base.scores[1] else (base.labels == 2).sum()
    res = instance_inference(logits, masks, (32, 32), topk=3, min_visible=0.5)
    assert len(res.scores) == 2 and sliver > 0
    assert (res.labels > 0).sum() == (base.labels > 0).sum() - sliver
    np.testing.assert_array_equal(res.scores, base.scores[[0, 1]] if base.scores[1] > base.scores[2]
                                  else base.scores[[0, 2]])


def test_clean_instances_fill_largest_piece_and_priority() -> None:
    lab = np.zeros((20, 30), np.int32)
    lab[2:10, 2:10] = 1
    lab[5, 5] = 0  # a hole in instance 1
    lab[15:17, 2:4] = 1  # a stray fragment of instance 1
    lab[2:10, 12:20] = 2
    lab[4:8, 14:18] = 0  # instance 2 is a ring: its hole is filled
    lab[12:14, 25:27] = 3
    out, kept = clean_instances(lab, radius=0)
    assert kept.tolist() == [True, True, True] and out.max() == 3
    assert (out[2:10, 2:10] == 1).all() and (out[15:17, 2:4] == 0).all()
    assert (out[2:10, 12:20] == 2).all()
    # an instance never grows into another: 1's hole is filled only where no one else is
    lab2 = np.zeros((10, 10), np.int32)
    lab2[1:8, 1:8] = 1
    lab2[3:5, 3:5] = 2  # 2 sits inside 1 (1 has higher priority but 2 owns those pixels)
    out2, kept2 = clean_instances(lab2, radius=0)
    assert kept2.all() and (out2[3:5, 3:5] == 2).all() and (out2 == 1).sum() == 49 - 4
    # radius 0 keeps the larger piece only; closing with radius 1 joins the two pieces
    lab3 = np.zeros((9, 12), np.int32)
    lab3[3:6, 1:5] = 1
    lab3[3:6, 6:10] = 1
    assert (clean_instances(lab3, radius=0)[0] == 1).sum() == 12
    assert (clean_instances(lab3, radius=1)[0] == 1).sum() == 25  # the middle row bridges
    empty, k = clean_instances(np.zeros((4, 4), np.int32))
    assert empty.max() == 0 and k.size == 0


def test_instance_mask_threshold() -> None:
    logits, masks = _preds(4)
    a = instance_inference(logits, masks, (24, 20), topk=10)
    b = instance_inference(logits, masks, (24, 20), topk=10, mask_threshold=0.5)
    np.testing.assert_array_equal(a.labels, b.labels)
    # a stricter cut shrinks the covered area; each kept pixel's mask probability exceeds it
    c = instance_inference(logits, masks, (24, 20), topk=10, mask_threshold=0.9)
    assert 0 < (c.labels > 0).sum() < (a.labels > 0).sum()
    up = upsample_masks(masks, (24, 20)).sigmoid()
    assert bool((up.amax(0)[torch.from_numpy(c.labels > 0)] > 0.9).all())


def test_instance_inference_cleanup_keeps_scores_aligned() -> None:
    logits, masks = _preds(3)
    a = instance_inference(logits, masks, (24, 20), topk=10)
    b = instance_inference(logits, masks, (24, 20), topk=10, cleanup_radius=0)
    assert len(b.scores) == b.labels.max() <= len(a.scores)
    assert set(b.scores.tolist()) <= set(a.scores.tolist())
    assert np.all(np.diff(b.scores) <= 0)


def test_panoptic_stuff_merge_and_overlap() -> None:
    k = 3  # classes 0, 1 stuff; 2 thing
    logits = torch.full((4, k + 1), -10.0)
    logits[0, 0] = logits[1, 0] = logits[2, 2] = 10.0
    logits[3, 3] = 10.0  # no-object query
    masks = torch.full((4, 4, 4), -10.0)
    masks[0, :2] = 10.0  # top half: stuff class 0
    masks[1, 2:, :2] = 10.0  # bottom-left: stuff class 0 again -> merged into one segment
    masks[2, 2:, 2:] = 10.0  # bottom-right: thing
    res = panoptic_inference(logits, masks, (16, 16), thing_classes={2})
    ids = {d["id"]: d for d in res.info}
    assert len(ids) == 2
    top, bl, br = res.segments[0, 0], res.segments[12, 0], res.segments[12, 12]
    assert top == bl and ids[int(top)]["category_id"] == 0 and not ids[int(top)]["isthing"]
    assert ids[int(br)]["category_id"] == 2 and ids[int(br)]["isthing"]


def test_postprocess_batch_dispatch() -> None:
    from tilesegcli.nn.postprocess import Instances, Panoptic, postprocess_batch

    logits, masks = _preds(3)
    out = {"pred_logits": torch.stack([logits, logits]), "pred_masks": torch.stack([masks, masks])}
    sem = postprocess_batch(out, (22, 19), task="semantic")
    assert len(sem) == 2 and sem[0].shape == (3, 22, 19)
    assert isinstance(postprocess_batch(out, (22, 19), task="instance")[1], Instances)
    assert isinstance(postprocess_batch(out, (22, 19), task="panoptic")[0], Panoptic)


def test_semantic_resize_order() -> None:
    logits, masks = _preds(4)
    a = semantic_inference(logits, masks, (24, 20), (12, 10))
    b = semantic_inference(logits, masks, (24, 20), (12, 10), resize_probs=False)
    ref_a = F.interpolate(semantic_inference(logits, masks, (24, 20))[None], size=(12, 10),
                          mode="bilinear", align_corners=False)[0]
    torch.testing.assert_close(a, ref_a)
    assert b.shape == (3, 12, 10) and not torch.allclose(a, b)
