"""Mask2Former training loss: Hungarian matching + class CE + point-sampled BCE and dice.

Owns ``HungarianMatcher`` (costs on ``num_points`` uniformly random points shared by predictions
and targets, solved with scipy ``linear_sum_assignment``) and ``SetCriterion`` (cross-entropy with
the no-object class down-weighted by ``eos_coef``; sigmoid BCE and dice on points chosen by
uncertainty sampling: ``oversample_ratio`` x points drawn, the ``importance_sample_ratio`` most
uncertain kept, the rest uniform; deep supervision over every ``aux_outputs`` entry).

Predictions: ``pred_logits`` (B, Q, K+1), ``pred_masks`` (B, Q, h, w) logits at any resolution.
Targets: one dict per image with ``labels`` (N,) int64 in [0, K) and ``masks`` (N, H, W) (bool or
float, the padded image size); points are sampled in normalised [0, 1] coordinates, so mask and
prediction resolutions need not agree.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment
from torch import nn


def point_sample(inp: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
    """Bilinear samples of inp (N, C, H, W) at coords (N, P, 2) in [0, 1] (x, y) -> (N, C, P)."""
    out = F.grid_sample(inp, 2.0 * coords.unsqueeze(2) - 1.0, align_corners=False)
    return out.squeeze(3)


def uncertain_point_coords(
    logits: torch.Tensor,
    num_points: int,
    oversample_ratio: float,
    importance_sample_ratio: float,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Points where the mask logit is closest to 0, plus uniform ones: (N, 1, h, w) -> (N, P, 2)."""
    n = logits.shape[0]
    n_sampled = int(num_points * oversample_ratio)
    coords = torch.rand(n, n_sampled, 2, device=logits.device, generator=generator)
    uncertainty = -point_sample(logits, coords).abs()[:, 0]  # (N, n_sampled)
    n_important = int(importance_sample_ratio * num_points)
    n_random = num_points - n_important
    top = torch.topk(uncertainty, k=n_important, dim=1).indices
    picked = torch.gather(coords, 1, top.unsqueeze(-1).expand(-1, -1, 2))
    if n_random > 0:
        rnd = torch.rand(n, n_random, 2, device=logits.device, generator=generator)
        picked = torch.cat([picked, rnd], dim=1)
    return picked


def dice_loss(inputs: torch.Tensor, targets: torch.Tensor, num_masks: float) -> torch.Tensor:
    p = inputs.sigmoid().flatten(1)
    num = 2 * (p * targets).sum(-1)
    den = p.sum(-1) + targets.sum(-1)
    return (1 - (num + 1) / (den + 1)).sum() / num_masks


def sigmoid_ce_loss(inputs: torch.Tensor, targets: torch.Tensor, num_masks: float) -> torch.Tensor:
    loss = F.binary_cross_entropy_with_logits(inputs, targets, reduction="none")
    return loss.mean(1).sum() / num_masks


def pairwise_dice_cost(inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """(Q, P) logits x (N, P) binary -> (Q, N) dice cost."""
    p = inputs.sigmoid()
    num = 2 * p @ targets.T
    den = p.sum(-1)[:, None] + targets.sum(-1)[None, :]
    return 1 - (num + 1) / (den + 1)


def pairwise_bce_cost(inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """(Q, P) logits x (N, P) binary -> (Q, N) mean BCE."""
    p_count = inputs.shape[1]
    pos = F.binary_cross_entropy_with_logits(inputs, torch.ones_like(inputs), reduction="none")
    neg = F.binary_cross_entropy_with_logits(inputs, torch.zeros_like(inputs), reduction="none")
    return (pos @ targets.T + neg @ (1 - targets).T) / p_count


def _pad_to(masks: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """Zero-pad (N, h', w') masks at the bottom/right to (N, h, w), like detectron2 batching."""
    return F.pad(masks, (0, w - masks.shape[-1], 0, h - masks.shape[-2]))


class HungarianMatcher(nn.Module):
    """One-to-one assignment of queries to targets minimising the weighted matching cost."""

    def __init__(self, cost_class: float = 2.0, cost_mask: float = 5.0, cost_dice: float = 5.0,
                 num_points: int = 12544) -> None:
        super().__init__()
        if cost_class == 0 and cost_mask == 0 and cost_dice == 0:
            raise ValueError("all matching costs are 0")
        self.cost_class, self.cost_mask, self.cost_dice = cost_class, cost_mask, cost_dice
        self.num_points = num_points

    def cost_matrix(self, logits: torch.Tensor, masks: torch.Tensor, target: dict,
                    generator: torch.Generator | None = None) -> torch.Tensor:
        """logits (Q, K+1), masks (Q, h, w), target -> (Q, N) cost."""
        prob = logits.softmax(-1)
        cost_class = -prob[:, target["labels"]]
        tgt = target["masks"].to(masks.dtype)
        coords = torch.rand(1, self.num_points, 2, device=masks.device, generator=generator)
        tgt_pts = point_sample(tgt[:, None], coords.expand(tgt.shape[0], -1, -1))[:, 0]
        out_pts = point_sample(masks[:, None], coords.expand(masks.shape[0], -1, -1))[:, 0]
        out_pts, tgt_pts = out_pts.float(), tgt_pts.float()
        return (self.cost_mask * pairwise_bce_cost(out_pts, tgt_pts)
                + self.cost_class * cost_class
                + self.cost_dice * pairwise_dice_cost(out_pts, tgt_pts))

    @torch.no_grad()
    def forward(self, outputs: dict, targets: list[dict],
                generator: torch.Generator | None = None) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per image (query indices, target indices), both int64, sorted by query index."""
        out = []
        for b, t in enumerate(targets):
            if len(t["labels"]) == 0:
                empty = torch.empty(0, dtype=torch.int64)
                out.append((empty, empty))
                continue
            c = self.cost_matrix(outputs["pred_logits"][b], outputs["pred_masks"][b], t, generator)
            rows, cols = linear_sum_assignment(c.cpu().numpy())
            out.append((torch.as_tensor(rows, dtype=torch.int64),
                        torch.as_tensor(np.asarray(cols), dtype=torch.int64)))
        return out


class SetCriterion(nn.Module):
    """Mask2Former loss. forward(outputs, targets) -> dict of unweighted losses ``loss_ce``,
    ``loss_mask``, ``loss_dice`` (+ ``_{i}`` for each aux output) and their weighted sum ``loss``."""

    def __init__(
        self,
        num_classes: int,
        *,
        matcher: HungarianMatcher | None = None,
        class_weight: float = 2.0,
        mask_weight: float = 5.0,
        dice_weight: float = 5.0,
        eos_coef: float = 0.1,
        num_points: int = 12544,
        oversample_ratio: float = 3.0,
        importance_sample_ratio: float = 0.75,
        deep_supervision: bool = True,
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.matcher = matcher or HungarianMatcher(class_weight, mask_weight, dice_weight,
                                                   num_points)
        self.weights = {"loss_ce": class_weight, "loss_mask": mask_weight, "loss_dice": dice_weight}
        self.eos_coef = eos_coef
        self.num_points = num_points
        self.oversample_ratio = oversample_ratio
        self.importance_sample_ratio = importance_sample_ratio
        self.deep_supervision = deep_supervision
        empty_weight = torch.ones(num_classes + 1)
        empty_weight[-1] = eos_coef
        self.register_buffer("empty_weight", empty_weight, persistent=False)

    def _losses(self, outputs: dict, targets: list[dict], num_masks: float,
                generator: torch.Generator | None) -> dict[str, torch.Tensor]:
        indices = self.matcher(outputs, targets, generator)
        logits = outputs["pred_logits"].float()
        b, q, _ = logits.shape
        target_classes = torch.full((b, q), self.num_classes, dtype=torch.int64,
                                    device=logits.device)
        for i, (src, tgt) in enumerate(indices):
            target_classes[i, src.to(logits.device)] = targets[i]["labels"][tgt].to(logits.device)
        loss_ce = F.cross_entropy(logits.transpose(1, 2), target_classes,
                                  self.empty_weight.to(logits.device))
        src_masks = torch.cat([outputs["pred_masks"][i, s] for i, (s, _) in enumerate(indices)])
        tgt_masks = torch.cat([targets[i]["masks"][t] for i, (_, t) in enumerate(indices)])
        if src_masks.shape[0] == 0:
            zero = outputs["pred_masks"].sum() * 0.0
            return {"loss_ce": loss_ce, "loss_mask": zero, "loss_dice": zero}
        src_masks = src_masks[:, None].float()
        tgt_masks = tgt_masks[:, None].to(src_masks)
        with torch.no_grad():
            coords = uncertain_point_coords(src_masks, self.num_points, self.oversample_ratio,
                                            self.importance_sample_ratio, generator)
            point_labels = point_sample(tgt_masks, coords)[:, 0]
        point_logits = point_sample(src_masks, coords)[:, 0]
        return {
            "loss_ce": loss_ce,
            "loss_mask": sigmoid_ce_loss(point_logits, point_labels, num_masks),
            "loss_dice": dice_loss(point_logits, point_labels, num_masks),
        }

    def forward(self, outputs: dict, targets: list[dict],
                generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        num_masks = max(float(sum(len(t["labels"]) for t in targets)), 1.0)
        # masks must share one frame (the padded batch image): pad smaller ones bottom/right
        hmax = max(int(t["masks"].shape[-2]) for t in targets)
        wmax = max(int(t["masks"].shape[-1]) for t in targets)
        targets = [{**t, "masks": _pad_to(t["masks"], hmax, wmax)} for t in targets]
        losses = self._losses(outputs, targets, num_masks, generator)
        if self.deep_supervision:
            for i, aux in enumerate(outputs.get("aux_outputs", [])):
                for k, v in self._losses(aux, targets, num_masks, generator).items():
                    losses[f"{k}_{i}"] = v
        losses["loss"] = sum(self.weights[k.rsplit("_", 1)[0] if k[-1].isdigit() else k] * v
                             for k, v in losses.items())
        return losses
