"""Stride-2 mask features for small objects (a tileseg extension of the AFF-Mask2Former head).

Mask2Former predicts each query's mask as the dot product of its mask embedding with per-pixel
features; in AFF those features live on the stride-4 tokens of the first stage, so a nucleus of
10-16 px is only 3-4 feature cells wide and its mask cannot be sharper than that. Like the
high-resolution mask branches of instance models for small objects (the stride-2 FPN level of
CondInst/SOLO-style mask heads, or HoVer-Net's full-resolution decoder), ``HiResMaskFeatures``
adds a light convolutional stem on the image at stride 2 and fuses it with the upsampled stride-4
mask features; the fused map replaces the stride-4 one only for the output masks (the masked
attention still works on tokens). Off by default (``hires_dim=0``): official checkpoints have no
such weights.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from tilesegcli.nn.point_ops import point2img


def _conv(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False),
                         nn.GroupNorm(min(8, cout), cout), nn.GELU())


class HiResMaskFeatures(nn.Module):
    """(images (B, 3, H, W), stride-4 token mask features) -> (B, mask_dim, 2h, 2w) features on a
    stride-2 grid, h, w = the stride-4 canvas. Residual: at initialisation (last conv zero) the
    output is exactly the bilinear upsampling of the stride-4 features."""

    stride = 2

    def __init__(self, mask_dim: int, dim: int = 32) -> None:
        super().__init__()
        self.stem = nn.Sequential(_conv(3, dim // 2), _conv(dim // 2, dim, 2), _conv(dim, dim))
        self.fuse = nn.Sequential(_conv(mask_dim + dim, mask_dim),
                                  nn.Conv2d(mask_dim, mask_dim, 1))
        nn.init.zeros_(self.fuse[-1].weight)
        nn.init.zeros_(self.fuse[-1].bias)

    def forward(self, images: torch.Tensor, mask_features: torch.Tensor, mask_pos: torch.Tensor,
                canvas_hw: tuple[int, int]) -> torch.Tensor:
        h, w = canvas_hw
        low = point2img(mask_features.permute(0, 2, 1), mask_pos, canvas_hw)  # (B, D, h, w)
        up = F.interpolate(low, size=(2 * h, 2 * w), mode="bilinear", align_corners=False)
        ih, iw = images.shape[-2:]
        x = F.pad(images, (0, max(0, 4 * w - iw), 0, max(0, 4 * h - ih)))[..., : 4 * h, : 4 * w]
        s = self.stem(x.to(up.dtype))
        return up + self.fuse(torch.cat([up, s], 1))


def masks_from_embed(embed: torch.Tensor, feats: torch.Tensor) -> torch.Tensor:
    """(B, Q, D) mask embeddings x (B, D, h, w) features -> (B, Q, h, w) mask logits."""
    return torch.einsum("bqd,bdhw->bqhw", embed, feats.to(embed.dtype))
