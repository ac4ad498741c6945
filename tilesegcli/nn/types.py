"""Typed outputs passed between networks (backbone -> pixel decoder -> decoder)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch


def stage_channels(widths: Sequence[int]) -> dict[str, int]:
    """The level names a backbone's stage widths go by: ``{"res2": C0, ..., "res5": C3}``."""
    return {f"res{i + 2}": int(c) for i, c in enumerate(widths)}


@dataclass
class PointLevel:
    """One stage's tokens. feat: (B, N, C); pos: (B, N, 2) float (x, y) in stride-4 grid units,
    in the stage's official token order."""

    feat: torch.Tensor
    pos: torch.Tensor


@dataclass
class BackboneOutput:
    """SEG backbone outputs res2..res5 (after norm0..norm3) on a common stride-4 canvas (h, w)."""

    levels: dict[str, PointLevel]  # keys "res2", "res3", "res4", "res5"
    canvas_hw: tuple[int, int]
