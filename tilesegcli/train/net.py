"""The trainable network: AFF + Mask2Former (``tilesegcli.nn``) plus training-only parts.

Owns :class:`TrainNet`: the ``AFFMask2Former`` model exactly as a card builds it (so its
state dict is what ships), the Mask2Former ``SetCriterion`` (Hungarian matching, deep supervision
on every decoder layer), and an auxiliary dense head on the pixel decoder's stride-4 mask features
predicting foreground and instance boundaries. The dense head gives every pixel a gradient from
the first step, which the set loss alone does not while the queries are still unmatched noise
(the slow-convergence problem of DETR-style decoders; cf. the auxiliary semantic losses of
K-Net/Mask DINO and the foreground/contour branches of nuclei models). It is dropped on export.
Also builds the model card dict for a training configuration.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from tilesegcli.nn.inputs import channel_stats, normalise

if TYPE_CHECKING:
    from tilesegcli.train.config import TrainConfig
    from tilesegcli.train.data import Patch


def build_model(arch: dict[str, Any]) -> nn.Module:
    """The network of a card's ``architecture`` (same call as ``tilesegcli.segmenters.aff_m2f``)."""
    from tilesegcli.nn.aff_m2f import build_aff_m2f

    bkw = {k: tuple(v) if isinstance(v, list) else v for k, v in arch.get("backbone_kwargs", {}).items()}
    return build_aff_m2f(str(arch["backbone"]), backbone_kwargs=bkw, **dict(arch.get("head_kwargs", {})))


def boundary_map(masks: np.ndarray) -> np.ndarray:
    """(K, H, W) bool instance masks -> (H, W) bool inner boundary pixels of any instance."""
    from scipy.ndimage import binary_erosion

    out = np.zeros(masks.shape[1:], bool)
    for m in masks:
        out |= m & ~binary_erosion(m)
    return out


class TrainNet(nn.Module):
    def __init__(self, cfg: TrainConfig) -> None:
        super().__init__()
        from tilesegcli.nn.criterion import HungarianMatcher, SetCriterion

        self.cfg = cfg
        self.model = build_model(cfg.architecture)
        hk = cfg.architecture["head_kwargs"]
        self.num_classes = int(hk["num_classes"])
        mask_dim = int(hk.get("mask_dim", 256))
        from tilesegcli.nn.aff_m2f import dense_head

        # a network that ships a foreground head (fine-tuned from a card with a gate) trains that
        # head with the auxiliary dense loss: a separate one would leave the shipped head as it
        # was while the features under it change
        shipped = getattr(self.model.sem_seg_head, "fg_head", None)
        self.dense = shipped if shipped is not None else dense_head(mask_dim)
        matcher = HungarianMatcher(cfg.class_weight, cfg.mask_weight, cfg.dice_weight,
                                   num_points=cfg.match_points)
        self.criterion = SetCriterion(
            self.num_classes, matcher=matcher, class_weight=cfg.class_weight, mask_weight=cfg.mask_weight,
            dice_weight=cfg.dice_weight, eos_coef=cfg.no_object_weight, num_points=cfg.num_points,
            deep_supervision=True)
        mean, std = channel_stats(cfg.mean, cfg.std)
        self.register_buffer("mean", mean, persistent=False)
        self.register_buffer("std", std, persistent=False)
        if cfg.hv_only:  # only the HoVer-style head learns; the rest is the network as given
            for name, p in self.named_parameters():
                p.requires_grad_(name.startswith("model.sem_seg_head.hv_head."))
            # its features as inference computes them (per image, see set_batch_independent)
            self.model.set_batch_independent(True)

    def train(self, mode: bool = True) -> TrainNet:
        super().train(mode)
        if self.cfg.hv_only:  # frozen parts stay in inference mode (as they will ship)
            self.model.eval()
            self.model.sem_seg_head.hv_head.train(mode)
        return self

    def shared_state(self, sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """``sd`` (TrainNet keys) as this net must load it: where the auxiliary dense head is the
        shipped foreground head (one module under both names), both names take the shipped
        head's tensors; a checkpoint from before they were one (e.g. an ``hv_only`` run, whose
        ``dense`` never trained) would otherwise overwrite the gate with its ``dense``."""
        fg = "model.sem_seg_head.fg_head."
        if self.dense is not getattr(self.model.sem_seg_head, "fg_head", None) or not any(
                k.startswith(fg) for k in sd):
            return sd
        return {**{k: v for k, v in sd.items() if not k.startswith("dense.")},
                **{"dense." + k[len(fg):]: v for k, v in sd.items() if k.startswith(fg)}}

    def num_params(self) -> int:
        return int(sum(p.numel() for p in self.model.parameters()))

    def param_groups(self, lr: float, wd: float, backbone_mult: float) -> list[dict]:
        """Backbone at lr * backbone_mult; no weight decay on norms, biases and embeddings."""
        groups: dict[tuple[bool, bool], list] = {}
        for name, p in self.named_parameters():
            if not p.requires_grad:
                continue
            bb = name.startswith("model.backbone.")
            no_wd = p.ndim <= 1 or "embed" in name.split(".")[-2] or "norm" in name
            groups.setdefault((bb, no_wd), []).append(p)
        return [{"params": ps, "lr": lr * (backbone_mult if bb else 1.0),
                 "weight_decay": 0.0 if no_wd else wd}
                for (bb, no_wd), ps in sorted(groups.items())]

    def forward_train(self, x: torch.Tensor) -> tuple[dict, torch.Tensor]:
        from tilesegcli.nn.point_ops import point2img

        head = self.model.sem_seg_head
        pd = head.pixel_decoder(self.model.backbone(x))
        out = head.decode(pd, images=x)
        dense = point2img(self.dense(pd.mask_features).permute(0, 2, 1), pd.mask_pos, pd.canvas_hw)
        return out, dense

    def hv_losses(self, batch: list[Patch], x: torch.Tensor, out: dict | None
                  ) -> tuple[torch.Tensor, dict[str, float]]:
        """The HoVer-style head's loss (``nn.hv.hv_loss``) on a batch; ``out`` the network's
        outputs (None: run the frozen network without gradients up to the stride-2 features)."""
        from tilesegcli.nn.hv import hv_loss, hv_targets

        head = self.model.sem_seg_head
        if out is None:
            with torch.no_grad():
                pd = head.pixel_decoder(self.model.backbone(x))
                fmap = head.hires(x, pd.mask_features, pd.mask_pos, pd.canvas_hw)
            pred = head.hv_head(fmap)
        else:
            pred = out["pred_hv"]
        h, w = x.shape[2:]
        pred = F.interpolate(pred, scale_factor=2, mode="bilinear", align_corners=False)[..., :h, :w]
        dev = x.device
        fg = torch.as_tensor(np.stack([p.masks.any(0) if len(p.masks) else np.zeros((h, w), bool)
                                       for p in batch]), device=dev).float()
        hv = torch.as_tensor(np.stack([hv_targets(p.masks) if len(p.masks)
                                       else np.zeros((2, h, w), np.float32) for p in batch]),
                             device=dev)
        valid = torch.as_tensor(np.stack([p.valid for p in batch]), device=dev).float()
        return hv_loss(pred.float(), fg, hv, valid)

    def losses(self, batch: list[Patch], device: torch.device) -> tuple[torch.Tensor, dict[str, float]]:
        """Weighted total loss of a batch and the parts for logging."""
        imgs = torch.from_numpy(np.stack([p.image for p in batch])).to(device)
        x = normalise(imgs.permute(0, 3, 1, 2), self.mean, self.std)
        if self.cfg.hv_only:
            loss, logs = self.hv_losses(batch, x, None)
            return self.cfg.hv_weight * loss, logs
        out, dense = self.forward_train(x)
        targets = [{"labels": torch.as_tensor(p.classes - 1, dtype=torch.int64, device=device),
                    "masks": torch.as_tensor(p.masks, device=device)} for p in batch]
        crit = self.criterion(out, targets)
        total = crit["loss"]
        logs = {k: float(crit[k].detach()) for k in ("loss_ce", "loss_mask", "loss_dice")}
        logs["m2f"] = float(total.detach())
        if self.cfg.aux_dense_weight > 0:
            h, w = imgs.shape[1:3]
            fg = torch.as_tensor(np.stack([p.masks.any(0) if len(p.masks) else np.zeros((h, w), bool)
                                           for p in batch]), device=device).float()
            bd = torch.as_tensor(np.stack([boundary_map(p.masks) for p in batch]), device=device).float()
            valid = torch.as_tensor(np.stack([p.valid for p in batch]), device=device).float()
            up = F.interpolate(dense, size=(dense.shape[2] * 4, dense.shape[3] * 4), mode="bilinear",
                               align_corners=False)[:, :, :h, :w]
            bce_fg = (F.binary_cross_entropy_with_logits(up[:, 0], fg, reduction="none") * valid).sum()
            bce_fg = bce_fg / valid.sum().clamp_min(1)
            pf = up[:, 0].sigmoid() * valid
            dice_fg = 1 - (2 * (pf * fg).sum() + 1) / (pf.sum() + fg.sum() + 1)
            bce_bd = (F.binary_cross_entropy_with_logits(up[:, 1], bd, reduction="none",
                                                         pos_weight=torch.tensor(3.0, device=device))
                      * valid).sum() / valid.sum().clamp_min(1)
            aux = bce_fg + dice_fg + bce_bd
            total = total + self.cfg.aux_dense_weight * aux
            logs["dense"] = float(aux.detach())
        if self.cfg.hv_weight > 0:
            hvl, hv_logs = self.hv_losses(batch, x, out)
            total = total + self.cfg.hv_weight * hvl
            logs.update(hv_logs)
        return total, logs


def build_net(cfg: TrainConfig) -> TrainNet:
    return TrainNet(cfg)


def card_dict(cfg: TrainConfig, name: str, *, weights_file: str, sha256: str | None, size: int | None,
              description: str, licence: str, metrics: dict[str, Any] | None = None,
              extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """A zoo card (format 1) for a model trained with ``cfg``; weights bundled next to it."""
    from tilesegcli.train.source import POSTPROCESS_FIELDS
    from tilesegcli.zoo import CARD_FORMAT

    d: dict[str, Any] = {
        "format": CARD_FORMAT,
        "name": name,
        "description": description,
        "task": "instance",
        "architecture": cfg.architecture,
        "classes": list(cfg.class_names),
        "background": "implicit",
        "input": {"mean": list(cfg.mean), "std": list(cfg.std), "size_divisibility": 32},
        "train_resolution": [cfg.tile, cfg.tile],
        "mpp": cfg.mpp,
        "mpp_unit": cfg.mpp_unit,
        "tile_size": cfg.tile,
        "overlap": cfg.overlap,
        "min_area": cfg.min_area,
        "postprocess": {"top_k": int(cfg.architecture["head_kwargs"].get("num_queries", 100)),
                        **{k: getattr(cfg, k) for k in POSTPROCESS_FIELDS}},
        "weights": {"url": None, "sha256": sha256, "size": size, "filename": weights_file,
                    "bundled": True, "format": "safetensors", "ignore_keys": []},
        "licence": licence,
        "metrics": metrics or {},
    }
    d.update(extra or {})
    return d
