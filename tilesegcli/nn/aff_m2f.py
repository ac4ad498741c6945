"""AFF-Mask2Former: AutoFocusFormer backbone + point-cloud Mask2Former head, builders and loader.

Owns: ``AFFMask2FormerHead`` (pixel decoder + masked-attention decoder, official
``sem_seg_head.*`` key names), ``AFFMask2Former`` (backbone + head; images -> predictions),
``build_aff_m2f`` (the head's keyword arguments, with ``HEAD_PRESETS`` for the official ADE20K /
Cityscapes / COCO configs and the fixture's tiny config) and ``load_official_checkpoint``
(strict loading of detectron2 files ``{'model': ...}`` with ``backbone.`` / ``sem_seg_head.``
prefixes, ignoring only named non-model keys).

The backbone comes from ``tilesegcli.nn.aff``: any module whose forward maps
(B, 3, H, W) normalised images to a ``BackboneOutput`` works.

    >>> model = build_aff_m2f_preset("aff_mini", "coco_instance")   # or build_aff_m2f(...)
    >>> load_official_checkpoint(model, "coco_ins/aff_mini.pth").eval()
    >>> x = model.normalize(rgb_uint8_bchw)                           # detectron2 mean/std
    >>> out = model(x, with_aux=False)                                # inference: no aux masks
    >>> res = postprocess_batch(out, x.shape[-2:], task="instance")   # nn/postprocess.py
    >>> loss = SetCriterion(80)(model(x), targets)["loss"]            # training (nn/criterion.py)
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

import torch
from torch import nn

from tilesegcli.errors import WeightsError
from tilesegcli.nn.hires import HiResMaskFeatures, masks_from_embed
from tilesegcli.nn.hv import HVHead
from tilesegcli.nn.inputs import channel_stats, normalise, pad_to_multiple
from tilesegcli.nn.m2f_decoder import MultiScaleMaskedTransformerDecoder
from tilesegcli.nn.pixel_decoder import MSDeformAttnPixelDecoder, PixelDecoderOutput
from tilesegcli.nn.types import BackboneOutput, stage_channels
from tilesegcli.specs import IMAGENET_MEAN, IMAGENET_STD

#: detectron2 PIXEL_MEAN / PIXEL_STD (RGB, 0-255 scale) used by every official SEG config.
PIXEL_MEAN, PIXEL_STD = IMAGENET_MEAN, IMAGENET_STD

#: Keys of official files that are not model parameters and are skipped on load.
IGNORED_CHECKPOINT_KEYS = frozenset({"criterion.empty_weight", "pixel_mean", "pixel_std"})

_HEAD_COMMON: dict[str, Any] = dict(
    num_queries=100, hidden_dim=256, conv_dim=256, mask_dim=256, nheads=8,
    dim_feedforward=2048, enc_layers=6, dec_layers=10,
    shepard_power=6.0, shepard_power_learnable=True,
)

#: Official head configs (AFF-REFERENCE §3.4) plus the golden fixture's tiny head.
#: ``alpha`` is the backbone's downsampling importance weight used with that head.
HEAD_PRESETS: dict[str, dict[str, Any]] = {
    "ade20k_semantic": {**_HEAD_COMMON, "num_classes": 150, "alpha": 4.0},
    "cityscapes_instance": {**_HEAD_COMMON, "num_classes": 8, "alpha": 8.0},
    "cityscapes_panoptic": {**_HEAD_COMMON, "num_classes": 19, "alpha": 8.0},
    # AFF-Base (aff_base_22kto1k_384) Cityscapes configs use 250 queries / detections
    "cityscapes_instance_base": {**_HEAD_COMMON, "num_classes": 8, "alpha": 8.0,
                                 "num_queries": 250},
    "cityscapes_panoptic_base": {**_HEAD_COMMON, "num_classes": 19, "alpha": 8.0,
                                 "num_queries": 250},
    "coco_instance": {**_HEAD_COMMON, "num_classes": 80, "alpha": 4.0,
                      "shepard_power": 4.0, "shepard_power_learnable": False},
    "fixture": dict(num_classes=3, num_queries=12, hidden_dim=32, conv_dim=32, mask_dim=32,
                    nheads=2, dim_feedforward=64, enc_layers=2, dec_layers=4,
                    shepard_power=6.0, shepard_power_learnable=True, alpha=4.0),
}


def dense_head(mask_dim: int) -> nn.Sequential:
    """Per-token foreground + boundary logits from the mask features (training's auxiliary head;
    shipped as ``fg_head`` for the foreground gate): same layers, same state-dict keys."""
    return nn.Sequential(nn.Linear(mask_dim, mask_dim), nn.GELU(), nn.Linear(mask_dim, 2))


class AFFMask2FormerHead(nn.Module):
    """``sem_seg_head``: BackboneOutput -> {pred_logits, pred_masks, aux_outputs}."""

    def __init__(
        self,
        in_channels: dict[str, int],
        *,
        num_classes: int,
        num_queries: int = 100,
        conv_dim: int = 256,
        mask_dim: int = 256,
        hidden_dim: int = 256,
        nheads: int = 8,
        dim_feedforward: int = 2048,
        enc_layers: int = 6,
        dec_layers: int = 10,
        shepard_power: float = 6.0,
        shepard_power_learnable: bool = True,
        hires_dim: int = 0,
        pe_extent: float | None = None,
        fg_head: bool = False,
        hv_head: bool = False,
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        # tileseg extension (nn/hires.py): stride-2 output masks; 0 = official stride-4 head
        self.hires = HiResMaskFeatures(mask_dim, hires_dim) if hires_dim else None
        self.mask_stride = 2 if hires_dim else 4
        self.pixel_decoder = MSDeformAttnPixelDecoder(
            in_channels, conv_dim=conv_dim, mask_dim=mask_dim, nheads=nheads,
            enc_layers=enc_layers, shepard_power=shepard_power,
            shepard_power_learnable=shepard_power_learnable,
        )
        self.predictor = MultiScaleMaskedTransformerDecoder(
            conv_dim, num_classes=num_classes, hidden_dim=hidden_dim, num_queries=num_queries,
            nheads=nheads, dim_feedforward=dim_feedforward, dec_layers=dec_layers,
            mask_dim=mask_dim,
        )
        # tileseg extension: position embeddings on a fixed scale (None: official, per max)
        self.pixel_decoder.pe_extent = self.predictor.pe_extent = pe_extent
        # tileseg extension: the dense foreground/boundary head training has (train/net.py), kept
        # for inference: ``pred_fg`` (B, 2, h, w) logits on the stride-4 canvas (fg, boundary)
        self.fg_head = dense_head(mask_dim) if fg_head else None
        # tileseg extension (nn/hv.py): nucleus + horizontal/vertical distance maps on the
        # stride-2 mask features, ``pred_hv`` (B, 3, 2h, 2w); needs the stride-2 features
        if hv_head and self.hires is None:
            raise ValueError("hv_head needs the stride-2 mask features (hires_dim > 0)")
        self.hv_head = HVHead(mask_dim) if hv_head else None

    def forward(self, feats: BackboneOutput, with_aux: bool = True,
                images: torch.Tensor | None = None, hv_rows: int | None = None) -> dict:
        pd = self.pixel_decoder(feats)
        return self.decode(pd, with_aux=with_aux, images=images, hv_rows=hv_rows)

    def decode(self, pd: PixelDecoderOutput, *, with_aux: bool = True,
               images: torch.Tensor | None = None, hv_rows: int | None = None) -> dict:
        """Pixel-decoder output -> predictions (``mask_stride`` says the masks' stride).
        ``hv_rows``: the HoVer maps of the first ``hv_rows`` images only (None: all; 0: none),
        for inference that needs them of one flip view."""
        out = self.predictor(pd.multi_scale_features, pd.multi_scale_pos, pd.mask_features,
                             pd.mask_pos, pd.canvas_hw, with_aux=with_aux,
                             return_embed=self.hires is not None)
        if self.hires is not None:
            if images is None:
                raise ValueError("this head (hires_dim > 0) needs the input images")
            fmap = self.hires(images, pd.mask_features, pd.mask_pos, pd.canvas_hw)
            out["pred_masks"] = masks_from_embed(out.pop("mask_embed"), fmap)
            for aux, emb in zip(out["aux_outputs"], out.pop("aux_mask_embed"), strict=True):
                aux["pred_masks"] = masks_from_embed(emb, fmap)
            if self.hv_head is not None and hv_rows != 0:
                out["pred_hv"] = self.hv_head(fmap if hv_rows is None else fmap[:hv_rows])
        if self.fg_head is not None:
            from tilesegcli.nn.point_ops import point2img

            fg = self.fg_head(pd.mask_features).permute(0, 2, 1)
            out["pred_fg"] = point2img(fg, pd.mask_pos, pd.canvas_hw)
        out["mask_stride"] = self.mask_stride
        return out


class AFFMask2Former(nn.Module):
    """Backbone + head. forward(images (B, 3, H, W) normalised float) ->
    pred_logits (B, Q, K+1), pred_masks (B, Q, ceil(H/4), ceil(W/4)) mask logits (twice that
    size, ``mask_stride`` 2, for a head with ``hires_dim``),
    aux_outputs [{pred_logits, pred_masks}] * (dec_layers - 1) (empty if with_aux=False, which
    skips the intermediate dense masks; use it for inference)."""

    def __init__(self, backbone: nn.Module, sem_seg_head: AFFMask2FormerHead, *,
                 size_divisibility: int = 0, batch_independent: bool = False) -> None:
        super().__init__()
        self.backbone = backbone
        self.sem_seg_head = sem_seg_head
        # official inference pads to a multiple of 32 (detectron2 SIZE_DIVISIBILITY); 0 = off
        self.size_divisibility = size_divisibility
        self.set_batch_independent(batch_independent)
        self.num_classes = sem_seg_head.num_classes
        self.pixel_mean = PIXEL_MEAN
        self.pixel_std = PIXEL_STD

    def set_batch_independent(self, on: bool = True) -> None:
        """Official code makes an image's output depend on its batch mates twice: the backbone's
        clustering key uses the largest ratio over the batch, and the head scales the point sine
        embeddings by the max coordinate over the batch. ``on`` makes both per image (identical to
        official for batch size 1)."""
        if hasattr(self.backbone, "set_batch_independent"):
            self.backbone.set_batch_independent(on)
        self.sem_seg_head.pixel_decoder.pe_per_image = on
        self.sem_seg_head.predictor.pe_per_image = on

    def forward(self, images: torch.Tensor, with_aux: bool = True,
                hv_rows: int | None = None) -> dict:
        images = pad_to_multiple(images, self.size_divisibility)
        return self.sem_seg_head(self.backbone(images), with_aux=with_aux, images=images,
                                 hv_rows=hv_rows)

    def normalize(self, rgb_uint8: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) uint8 RGB -> the normalised float input of ``forward``."""
        mean, std = channel_stats(self.pixel_mean, self.pixel_std, rgb_uint8.device)
        return normalise(rgb_uint8, mean, std)


def _backbone_channels(backbone: nn.Module, name: str) -> dict[str, int]:
    for attr in ("out_channels", "embed_dim", "embed_dims", "num_features"):
        v = getattr(backbone, attr, None)
        if isinstance(v, dict):
            return {k: int(v[k]) for k in ("res2", "res3", "res4", "res5")}
        if isinstance(v, list | tuple) and len(v) == 4:
            return stage_channels(v)
    raise ValueError(f"cannot tell the stage widths of backbone {name!r}")


def build_aff_m2f(
    backbone: str | nn.Module,
    *,
    alpha: float | None = None,
    size_divisibility: int = 0,
    batch_independent: bool = False,
    backbone_kwargs: dict[str, Any] | None = None,
    **head: Any,
) -> AFFMask2Former:
    """Build backbone (``tilesegcli.nn.aff.build_aff(name, variant="seg", ...)``) + head.

    ``head``: the keyword arguments of ``AFFMask2FormerHead`` (``num_classes`` required; the
    defaults there are the official head config); wrong ones raise TypeError before anything is
    built. ``backbone`` may also be an already built module returning ``BackboneOutput``.
    ``alpha`` (downsampling importance weight: 4 for ADE20K/COCO, 8 for Cityscapes) and any
    ``backbone_kwargs`` are passed to the backbone builder. Defaults = official head config.
    ``size_divisibility=32`` zero-pads inputs like official detectron2 inference (then masks
    cover the padded size; ``postprocess`` crops). ``batch_independent``: see
    ``AFFMask2Former.set_batch_independent``.
    """
    inspect.signature(AFFMask2FormerHead).bind({}, **head)
    if isinstance(backbone, str):
        from tilesegcli.nn.aff import build_aff

        kw = dict(backbone_kwargs or {})
        if alpha is not None:
            kw["alpha"] = alpha
        name = backbone
        bb = build_aff(backbone, variant="seg", **kw)
    else:
        name, bb = type(backbone).__name__, backbone
    sem_seg_head = AFFMask2FormerHead(_backbone_channels(bb, name), **head)
    return AFFMask2Former(bb, sem_seg_head, size_divisibility=size_divisibility,
                          batch_independent=batch_independent)


def build_aff_m2f_preset(backbone: str | nn.Module, preset: str, **overrides: Any) -> AFFMask2Former:
    """``build_aff_m2f`` with a ``HEAD_PRESETS`` entry (e.g. "ade20k_semantic") and overrides."""
    if preset not in HEAD_PRESETS:
        raise ValueError(f"unknown head preset {preset!r}; known: {sorted(HEAD_PRESETS)}")
    return build_aff_m2f(backbone, **{**HEAD_PRESETS[preset], **overrides})


def checkpoint_filter_fn(state: dict[str, Any]) -> dict[str, torch.Tensor]:
    """Official detectron2 file contents -> our state dict (same key names, non-model keys out)."""
    sd = state.get("model", state) if isinstance(state, dict) else state
    if not isinstance(sd, dict):
        raise WeightsError("checkpoint holds no state dict ('model' entry)")
    out = {}
    for k, v in sd.items():
        k = k[len("module."):] if k.startswith("module.") else k
        if k in IGNORED_CHECKPOINT_KEYS:
            continue
        if not isinstance(v, torch.Tensor):
            raise WeightsError(f"checkpoint entry {k!r} is not a tensor")
        out[k] = v
    return out


def load_official_checkpoint(model: AFFMask2Former, path: str | Path) -> AFFMask2Former:
    """Load an official AFF-Mask2Former checkpoint strictly (weights_only=True); returns model.

    Accepts ``{'model': sd, ...trainer state...}`` or a bare state dict. Raises ``WeightsError``
    with a one-line message when the file is unreadable/unsafe or keys/shapes do not match.
    """
    try:
        state = torch.load(Path(path), map_location="cpu", weights_only=True)
    except FileNotFoundError as e:
        raise WeightsError(f"checkpoint not found: {path}") from e
    except Exception as e:  # unpickling refused, truncated file, not a torch file
        raise WeightsError(f"cannot load checkpoint {path}: {type(e).__name__}: {e}") from e
    sd = checkpoint_filter_fn(state)
    own = model.state_dict()
    missing = sorted(set(own) - set(sd))
    unexpected = sorted(set(sd) - set(own))
    if missing or unexpected:
        raise WeightsError(
            f"checkpoint {path} does not fit the model: {len(missing)} missing "
            f"(e.g. {missing[:3]}), {len(unexpected)} unexpected (e.g. {unexpected[:3]})"
        )
    bad = [k for k, v in sd.items() if tuple(v.shape) != tuple(own[k].shape)]
    if bad:
        k = bad[0]
        raise WeightsError(
            f"checkpoint {path}: {len(bad)} shape mismatches, e.g. {k}: "
            f"{tuple(sd[k].shape)} vs model {tuple(own[k].shape)}"
        )
    model.load_state_dict(sd, strict=True)
    return model
