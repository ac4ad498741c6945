"""What a network is given: uint8 RGB tiles normalised with a card's mean/std (0-255 scale) and
zero-padded at the bottom/right to its size divisibility (zero = the mean colour once normalised;
callers crop outputs back to the tile). One rule for inference (``segmenters.aff_m2f``, ``segmenters.dense``),
the AFF + Mask2Former model itself and training (``train.net``).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F


def channel_stats(mean: Sequence[float], std: Sequence[float],
                  device: torch.device | str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``mean`` and ``std`` as (1, 3, 1, 1) float32 tensors, ready to broadcast over BCHW."""
    return (torch.tensor(mean, dtype=torch.float32, device=device).view(1, 3, 1, 1),
            torch.tensor(std, dtype=torch.float32, device=device).view(1, 3, 1, 1))


def normalise(rgb_bchw: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) RGB on the 0-255 scale -> float (x - mean) / std."""
    return (rgb_bchw.float() - mean) / std


def pad_to_multiple(x: torch.Tensor, divisor: int) -> torch.Tensor:
    """Zero-pad the last two dimensions at the bottom/right up to multiples of ``divisor``."""
    h, w = x.shape[-2:]
    ph, pw = -h % max(1, divisor), -w % max(1, divisor)
    return F.pad(x, (0, pw, 0, ph)) if ph or pw else x


def tiles_to_input(tiles: np.ndarray, mean: torch.Tensor, std: torch.Tensor, divisor: int,
                   device: torch.device) -> torch.Tensor:
    """(B, H, W, 3) uint8 tiles -> the normalised, padded (B, 3, H', W') float input on
    ``device`` (``mean``/``std`` from :func:`channel_stats` on that device)."""
    x = torch.from_numpy(np.ascontiguousarray(tiles)).to(device, non_blocking=True)
    return pad_to_multiple(normalise(x.permute(0, 3, 1, 2), mean, std), divisor)
