"""HoVer-style dense head: nucleus probability + horizontal/vertical distance maps.

Mask2Former's queries find nuclei well but merge touching ones and draw some masks too large; the
standard cure in nuclei segmentation (Graham et al., HoVer-Net, 2019) is a dense map of each
pixel's horizontal and vertical offset from its nucleus' centre of mass, normalised to [-1, 1]
within every nucleus: the maps flip sign at the centre and change steeply where two nuclei touch,
so the gradient of the maps outlines each nucleus, and a marker-controlled watershed separates
touching ones.

Owns :class:`HVHead` (a small dilated conv stack on the head's stride-2 mask features; output
(B, 3, 2h, 2w): nucleus logit, horizontal map, vertical map), :func:`hv_targets` (training targets
from instance masks) and :func:`hv_loss` (BCE + Dice on the nucleus map, MSE + gradient MSE on the
distance maps, as HoVer-Net trains them). The post-processing that uses the maps lives in
``tilesegcli.nn.hv_split``.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


def _block(cin: int, cout: int, dilation: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=dilation, dilation=dilation, bias=False),
                         nn.GroupNorm(min(8, cout), cout), nn.GELU())


class HVHead(nn.Module):
    """(B, mask_dim, H2, W2) stride-2 features -> (B, 3, H2, W2): nucleus logit, h map, v map
    (h = horizontal offset from the nucleus centre along the image's x axis, v along y)."""

    def __init__(self, in_dim: int, dim: int = 64) -> None:
        super().__init__()
        self.body = nn.Sequential(_block(in_dim, dim, 1), _block(dim, dim, 2), _block(dim, dim, 4),
                                  _block(dim, dim, 1))
        self.out = nn.Conv2d(dim, 3, 1)

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        return self.out(self.body(feats.float()))


def hv_targets(masks: np.ndarray) -> np.ndarray:
    """(K, H, W) bool instance masks -> (2, H, W) float32 h and v maps: within each instance,
    x - cx (and y - cy) divided by its largest magnitude on that side of the centre, so each map
    runs from -1 to 1 across the instance; 0 outside instances."""
    out = np.zeros((2, *masks.shape[1:]), np.float32)
    for m in masks:
        ys, xs = np.nonzero(m)
        if len(ys) == 0:
            continue
        for c, coord in enumerate((xs, ys)):
            d = coord.astype(np.float32) - coord.mean(dtype=np.float64).astype(np.float32)
            pos, neg = d > 0, d < 0
            if pos.any():
                d[pos] /= d[pos].max()
            if neg.any():
                d[neg] /= -d[neg].min()
            out[c, ys, xs] = d
    return out


_SOBEL = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]]) / 8.0


def sobel(maps: torch.Tensor) -> torch.Tensor:
    """(B, 2, H, W) h, v maps -> (B, 2, H, W): d h / d x and d v / d y (3x3 Sobel, replicate
    padding; scaled to the change of the map over two pixels)."""
    k = torch.stack([_SOBEL, _SOBEL.t()])[:, None].to(maps)
    return F.conv2d(F.pad(maps, (1, 1, 1, 1), mode="replicate"), k, groups=2) * 2.0


def hv_loss(pred: torch.Tensor, fg: torch.Tensor, hv: torch.Tensor, valid: torch.Tensor
            ) -> tuple[torch.Tensor, dict[str, float]]:
    """HoVer-Net's losses on full-resolution maps. pred (B, 3, H, W) head output upsampled to
    the patch; fg (B, H, W) nucleus pixels; hv (B, 2, H, W) targets; valid (B, H, W) labelled
    pixels. Nucleus map: BCE + Dice; distance maps: MSE over labelled pixels + 2 x MSE of their
    gradients over nucleus pixels."""
    n_valid = valid.sum().clamp_min(1)
    bce = (F.binary_cross_entropy_with_logits(pred[:, 0], fg, reduction="none") * valid).sum()
    bce = bce / n_valid
    p = pred[:, 0].sigmoid() * valid
    dice = 1 - (2 * (p * fg).sum() + 1) / (p.sum() + fg.sum() + 1)
    d = pred[:, 1:] - hv
    mse = (d.square() * valid[:, None]).sum() / (2 * n_valid)
    inside = (fg * valid)[:, None]
    g = sobel(pred[:, 1:]) - sobel(hv)
    msge = (g.square() * inside).sum() / (2 * inside.sum()).clamp_min(1)
    total = bce + dice + mse + 2.0 * msge
    return total, {"hv_bce": float(bce.detach()), "hv_dice": float(dice.detach()),
                   "hv_mse": float(mse.detach()), "hv_msge": float(msge.detach())}
