"""Mask2Former inference: semantic / instance / panoptic results from raw predictions (AFF-REFERENCE §3.3).

Owns the standard Mask2Former semantics on one image's ``pred_logits`` (Q, K+1) and stride-4
``pred_masks`` (Q, h, w) mask logits:
* masks are bilinearly upsampled (align_corners=False) to the padded input (4h, 4w), cropped to
  the input size and optionally resized to an output size (detectron2 ``sem_seg_postprocess``);
* semantic: sum_q softmax(class)[:K] x sigmoid(mask) -> (K, H, W) probabilities;
* instance: top-k over Q x K class scores, mask = logit > 0, score x mean sigmoid inside the mask;
  also as a label image where the highest score wins on overlap;
* panoptic: keep queries with score > object_mask_threshold, argmax of score x prob, drop segments
  whose visible part is < overlap_threshold of their mask, merge stuff segments of one class.
Work is done in query chunks so memory stays O(H x W x chunk), not O(Q x H x W).
Class indices are the model's 0-based indices over its K classes (no background shift).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

_CHUNK = 16  # queries upsampled at once


def upsample_masks(
    mask_logits: torch.Tensor, input_hw: tuple[int, int], output_hw: tuple[int, int] | None = None,
    stride: int = 4,
) -> torch.Tensor:
    """(Q, h, w) logits at ``stride`` -> (Q, H, W): upsample to (s*h, s*w), crop to input_hw,
    resize to output_hw."""
    q, h, w = mask_logits.shape
    up = F.interpolate(mask_logits[None].float(), size=(stride * h, stride * w), mode="bilinear",
                       align_corners=False)
    up = up[:, :, : input_hw[0], : input_hw[1]]
    if output_hw is not None and tuple(output_hw) != tuple(input_hw):
        up = F.interpolate(up, size=tuple(output_hw), mode="bilinear", align_corners=False)
    return up[0]


def _chunks(n: int):
    for s in range(0, n, _CHUNK):
        yield s, min(n, s + _CHUNK)


def semantic_inference(
    pred_logits: torch.Tensor,
    pred_masks: torch.Tensor,
    input_hw: tuple[int, int],
    output_hw: tuple[int, int] | None = None,
    *,
    resize_probs: bool = True,
    stride: int = 4,
) -> torch.Tensor:
    """Per-class probabilities (K, H, W) = einsum(softmax(cls)[:, :K], sigmoid(upsampled mask)).

    With an output size, ``resize_probs=True`` resizes the probabilities (official behaviour of
    semantic-only models); False resizes the mask logits first (official when instance or
    panoptic inference is also on)."""
    cls = F.softmax(pred_logits.float(), dim=-1)[:, :-1]
    mask_hw = input_hw if resize_probs else output_hw
    out = None
    for s, e in _chunks(pred_masks.shape[0]):
        m = upsample_masks(pred_masks[s:e], input_hw, mask_hw, stride).sigmoid()
        part = torch.einsum("qc,qhw->chw", cls[s:e], m)
        out = part if out is None else out + part
    assert out is not None
    if resize_probs and output_hw is not None and tuple(output_hw) != tuple(input_hw):
        out = F.interpolate(out[None], size=tuple(output_hw), mode="bilinear",
                            align_corners=False)[0]
    return out


@dataclass
class Instances:
    """Instance predictions of one image, sorted by descending score.

    labels: (H, W) int32, 0 = none, i = instance i (1-based, highest score wins on overlap);
    classes (N,) int64 and scores (N,) float32 of instances 1..N. Instances left without any
    visible pixel are dropped, so every label 1..N occurs.
    """

    labels: np.ndarray
    classes: np.ndarray
    scores: np.ndarray


def instance_candidates(
    pred_logits: torch.Tensor, topk: int = 100
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Top-k (query, class) pairs over Q x K softmax scores -> (query idx, class idx, class score)."""
    scores = F.softmax(pred_logits.float(), dim=-1)[:, :-1]
    q, k = scores.shape
    top_scores, flat = scores.flatten().topk(min(topk, q * k), sorted=True)
    return torch.div(flat, k, rounding_mode="floor"), flat % k, top_scores


def instance_inference(
    pred_logits: torch.Tensor,
    pred_masks: torch.Tensor,
    input_hw: tuple[int, int],
    output_hw: tuple[int, int] | None = None,
    *,
    topk: int = 100,
    score_threshold: float = 0.0,
    stride: int = 4,
    min_visible: float = 0.0,
    cleanup_radius: int = -1,
    mask_threshold: float = 0.5,
) -> Instances:
    """Mask2Former instance inference, painted into one label image (highest score wins).

    ``min_visible`` > 0 (a tileseg option; 0 = official behaviour) drops an instance when less
    than that fraction of its own mask stays visible after painting — the duplicate masks of a
    set predictor then vanish instead of leaving slivers; its pixels become background.
    ``cleanup_radius`` >= 0 (tileseg option; -1 = off) then tidies every instance
    (:func:`clean_instances`). ``mask_threshold``: mask probability above which a pixel is
    foreground (0.5 = official)."""
    qidx, classes, cls_scores = instance_candidates(pred_logits, topk)
    qs = torch.unique(qidx)
    slot = torch.zeros(pred_masks.shape[0], dtype=torch.long)
    slot[qs] = torch.arange(len(qs))
    # per distinct query: foreground (logit > 0) at output size, kept as bool, and mask score =
    # mean sigmoid inside the foreground
    mask_score = torch.zeros(pred_masks.shape[0])
    fg_all: torch.Tensor | None = None
    p = min(max(float(mask_threshold), 1e-6), 1 - 1e-6)
    cut = math.log(p / (1 - p))  # the logit of mask_threshold (0 for 0.5)
    for s, e in _chunks(len(qs)):
        m = upsample_masks(pred_masks[qs[s:e]], input_hw, output_hw, stride)
        fg = m > cut
        if fg_all is None:
            fg_all = torch.empty((len(qs), *m.shape[-2:]), dtype=torch.bool)
        fg_all[s:e] = fg
        fgf = fg.flatten(1)
        mask_score[qs[s:e]] = (m.sigmoid().flatten(1) * fgf).sum(1) / (fgf.sum(1) + 1e-6)
    hw = tuple(fg_all.shape[-2:]) if fg_all is not None else tuple(output_hw or input_hw)
    scores = cls_scores * mask_score[qidx]
    order = torch.argsort(scores, descending=True, stable=True)
    order = order[scores[order] > score_threshold]
    qidx, classes, scores = qidx[order], classes[order], scores[order]
    # a pixel belongs to the highest-scored instance covering it: paint from the lowest score up
    labels = torch.zeros(hw, dtype=torch.int32)
    if fg_all is not None:
        for i in range(len(order) - 1, -1, -1):
            labels.masked_fill_(fg_all[slot[qidx[i]]], i + 1)
    visible = torch.bincount(labels.flatten().long(), minlength=len(order) + 1)
    if min_visible > 0 and fg_all is not None and len(order):
        own = fg_all.flatten(1).sum(1)[slot[qidx]]
        hidden = visible[1:] < min_visible * own
        if bool(hidden.any()):
            drop = torch.zeros(len(order) + 1, dtype=torch.bool)
            drop[1:] = hidden
            labels = torch.where(drop[labels.long()], 0, labels)
            visible[1:][hidden] = 0
    keep = visible[1:] > 0
    remap = torch.zeros(len(order) + 1, dtype=torch.int32)
    remap[1:][keep] = torch.arange(1, int(keep.sum()) + 1, dtype=torch.int32)
    labels_np = remap[labels.long()].numpy()
    classes_np = classes[keep].numpy().astype(np.int64)
    scores_np = scores[keep].numpy().astype(np.float32)
    if cleanup_radius >= 0 and len(scores_np):
        labels_np, kept = clean_instances(labels_np, cleanup_radius)
        classes_np, scores_np = classes_np[kept], scores_np[kept]
    return Instances(labels_np, classes_np, scores_np)


#: flips of the test-time views, in order: identity, left-right, up-down, both (dims of (B, C, H, W))
FLIP_VIEWS: tuple[tuple[int, ...], ...] = ((), (3,), (2,), (2, 3))
#: view counts a card may ask for (``flip_views``); 8 adds the same four flips of the transposed
#: tile (all 8 dihedral views)
VIEW_COUNTS = (1, 2, 4, 8)


def view_transforms(views: int) -> list[tuple[bool, tuple[int, ...]]]:
    """(transpose H and W first?, flipped dims) of each of ``views`` test-time views."""
    return [(i >= 4, FLIP_VIEWS[i % 4]) for i in range(views)]


def view_agreement(labels_a: np.ndarray, labels_b: np.ndarray, iou: float = 0.5) -> float:
    """How well two views of one tile agree: the F1 of matching their instances (label images
    1..N, both mapped back to the tile), a pair matching when its IoU exceeds ``iou`` (at most one
    partner each, as IoU > 0.5 guarantees); 1.0 when neither has any instance."""
    a, b = np.asarray(labels_a).ravel(), np.asarray(labels_b).ravel()
    na, nb = int(a.max(initial=0)), int(b.max(initial=0))
    if na + nb == 0:
        return 1.0
    if na == 0 or nb == 0:
        return 0.0
    inter = np.bincount(a * (nb + 1) + b, minlength=(na + 1) * (nb + 1)).reshape(na + 1, nb + 1)
    area_a, area_b = inter.sum(1), inter.sum(0)
    union = area_a[1:, None] + area_b[None, 1:] - inter[1:, 1:]
    matched = int((inter[1:, 1:] > iou * union).sum())
    return 2.0 * matched / (na + nb)


def vote_views(
    pred_logits: torch.Tensor, pred_masks: torch.Tensor, views: int, iou_threshold: float = 0.5,
    min_score: float = 0.05,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Merge the predictions of ``views`` passes over flipped copies of one tile (a tileseg option).

    Input: the passes' candidates concatenated, (V*Q, K+1) class logits and (V*Q, h, w) mask
    logits already flipped back. Greedily from the highest class score, a candidate and every
    unused candidate of its class whose mask (logit > 0) overlaps it with IoU > ``iou_threshold``
    form one object: its mask probability is the score-weighted mean of theirs and its class
    probability is the sum over views of each view's best score in the group / ``views`` — an
    object found in one view only is down-weighted, one found in all keeps its mean score, and a
    view's duplicate queries add no votes. Candidates scoring below ``min_score``
    are ignored. Returns (G, K+1) logits (log-probabilities) and (G, h, w) mask logits for
    :func:`instance_inference` (top-k = G)."""
    probs = F.softmax(pred_logits.float(), dim=-1)
    k = probs.shape[1] - 1
    score, cls = probs[:, :k].max(1)
    view = torch.arange(len(score)) // max(1, len(score) // views)
    # most queries predict "no object": drop them before the pairwise IoU (per tile, hot path)
    cand = torch.nonzero(score >= min_score).flatten()
    score, cls, view = score[cand], cls[cand], view[cand]
    prob = pred_masks[cand].float().sigmoid()
    fg = (prob > 0.5).flatten(1).float()
    area = fg.sum(1)
    inter = fg @ fg.T
    iou = inter / (area[:, None] + area[None, :] - inter).clamp_min(1.0)
    same = (cls[:, None] == cls[None, :]) & (iou > iou_threshold)
    used = torch.zeros(len(score), dtype=torch.bool)
    out_p, out_m = [], []
    for i in torch.argsort(score, descending=True, stable=True).tolist():
        if used[i]:
            continue
        grp = same[i] & ~used
        grp[i] = True
        used |= grp
        w = score[grp]
        row = torch.zeros(k + 1)
        best = torch.zeros(views).scatter_reduce(0, view[grp], w, reduce="amax")
        row[cls[i]] = float(best.sum()) / views
        row[k] = 1.0 - row[cls[i]]
        out_p.append(row)
        out_m.append((prob[grp] * w[:, None, None]).sum(0) / w.sum())
    if not out_p:
        return pred_logits[:0].float(), pred_masks[:0].float()
    p = torch.stack(out_p).clamp(1e-6, 1.0)
    m = torch.stack(out_m).clamp(1e-6, 1 - 1e-6)
    return p.log(), torch.log(m / (1 - m))


def clean_instances(labels: np.ndarray, radius: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """Tidy an instance label image (1..N in priority order, as ``instance_inference`` paints
    it): each instance is closed with a disk of ``radius`` px, its holes filled and only its
    largest connected piece kept — the usual clean-up of nuclei post-processing (compact,
    hole-free objects; stray fragments dropped). An instance grows only into background, never
    into another instance. Returns (relabelled image 1..M, bool (N,) of the instances kept)."""
    from scipy import ndimage as ndi

    n = int(labels.max(initial=0))
    out = np.zeros_like(labels)
    kept = np.zeros(n, bool)
    if n == 0:
        return out, kept
    r = max(0, int(radius))
    yy, xx = np.mgrid[-r:r + 1, -r:r + 1]
    disk = (yy ** 2 + xx ** 2) <= r * r
    boxes = ndi.find_objects(labels)
    h, w = labels.shape
    nxt = 1
    for i, sl in enumerate(boxes, start=1):
        if sl is None:
            continue
        y0, y1 = max(0, sl[0].start - r - 1), min(h, sl[0].stop + r + 1)
        x0, x1 = max(0, sl[1].start - r - 1), min(w, sl[1].stop + r + 1)
        m = labels[y0:y1, x0:x1] == i
        if r:
            m = ndi.binary_closing(np.pad(m, r), structure=disk)[r:-r, r:-r]
        m = ndi.binary_fill_holes(m)
        free = (labels[y0:y1, x0:x1] == 0) | (labels[y0:y1, x0:x1] == i)
        m &= free & (out[y0:y1, x0:x1] == 0)
        comp, k = ndi.label(m)
        if k == 0:
            continue
        if k > 1:
            m = comp == (1 + int(np.argmax(np.bincount(comp.ravel())[1:])))
        out[y0:y1, x0:x1][m] = nxt
        kept[i - 1] = True
        nxt += 1
    return out, kept


@dataclass
class Panoptic:
    """segments: (H, W) int32 segment ids (0 = void); info: [{id, category_id, isthing}]."""

    segments: np.ndarray
    info: list[dict]


def panoptic_inference(
    pred_logits: torch.Tensor,
    pred_masks: torch.Tensor,
    input_hw: tuple[int, int],
    output_hw: tuple[int, int] | None = None,
    *,
    thing_classes: set[int] | frozenset[int] = frozenset(),
    object_mask_threshold: float = 0.8,
    overlap_threshold: float = 0.8,
    stride: int = 4,
) -> Panoptic:
    """Mask2Former panoptic inference (stuff = classes not in ``thing_classes``)."""
    num_classes = pred_logits.shape[-1] - 1
    scores, labels = F.softmax(pred_logits.float(), dim=-1).max(-1)
    keep = labels.ne(num_classes) & (scores > object_mask_threshold)
    kq = torch.nonzero(keep).flatten()
    hw = upsample_masks(pred_masks[:1], input_hw, output_hw, stride).shape[-2:]
    seg = torch.zeros(hw, dtype=torch.int32)
    info: list[dict] = []
    if len(kq) == 0:
        return Panoptic(seg.numpy(), info)
    masks = torch.cat([upsample_masks(pred_masks[kq[s:e]], input_hw, output_hw, stride).sigmoid()
                       for s, e in _chunks(len(kq))])
    cur_scores, cur_classes = scores[kq], labels[kq]
    ids = (cur_scores.view(-1, 1, 1) * masks).argmax(0)
    stuff_memory: dict[int, int] = {}
    current = 0
    for k in range(len(kq)):
        cls = int(cur_classes[k])
        isthing = cls in thing_classes
        mask_area = int((ids == k).sum())
        original_area = int((masks[k] >= 0.5).sum())
        mask = (ids == k) & (masks[k] >= 0.5)
        if mask_area > 0 and original_area > 0 and int(mask.sum()) > 0:
            if mask_area / original_area < overlap_threshold:
                continue
            if not isthing:
                if cls in stuff_memory:
                    seg[mask] = stuff_memory[cls]
                    continue
                stuff_memory[cls] = current + 1
            current += 1
            seg[mask] = current
            info.append({"id": current, "isthing": bool(isthing), "category_id": cls})
    return Panoptic(seg.numpy(), info)


def postprocess_batch(
    outputs: dict,
    input_hw: tuple[int, int],
    *,
    task: str,
    output_hw: tuple[int, int] | None = None,
    topk: int = 100,
    score_threshold: float = 0.0,
    thing_classes: set[int] | frozenset[int] = frozenset(),
    object_mask_threshold: float = 0.8,
    overlap_threshold: float = 0.8,
    resize_probs: bool = True,
) -> list:
    """Model outputs of a batch -> per image: task "semantic" -> (K, H, W) float tensor,
    "instance" -> ``Instances``, "panoptic" -> ``Panoptic``. input_hw = the (H, W) given to
    the model (before the backbone's own padding to a multiple of 4)."""
    results: list = []
    stride = int(outputs.get("mask_stride", 4))
    with torch.no_grad():
        for logits, masks in zip(outputs["pred_logits"], outputs["pred_masks"], strict=True):
            if task == "semantic":
                results.append(semantic_inference(logits, masks, input_hw, output_hw,
                                                  resize_probs=resize_probs, stride=stride))
            elif task == "instance":
                results.append(instance_inference(logits, masks, input_hw, output_hw, topk=topk,
                                                  score_threshold=score_threshold, stride=stride))
            elif task == "panoptic":
                results.append(panoptic_inference(
                    logits, masks, input_hw, output_hw, thing_classes=thing_classes,
                    object_mask_threshold=object_mask_threshold,
                    overlap_threshold=overlap_threshold, stride=stride))
            else:
                raise ValueError(f"task must be semantic/instance/panoptic, got {task!r}")
    return results
