"""Helpers shared by the SeaFormer / Focal test modules: parameter counts and a toy two-class
segmentation task (built in code, fixed seeds) that a small net must be able to overfit."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F


def n_params(m: torch.nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def toy_batch(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Bright squares (class 1) and blue discs (class 2) on a textured background."""
    g = torch.Generator().manual_seed(seed)
    imgs = torch.rand(n, 3, 32, 32, generator=g) * 0.3
    target = torch.zeros(n, 32, 32, dtype=torch.long)
    yy, xx = torch.meshgrid(torch.arange(32), torch.arange(32), indexing="ij")
    for i in range(n):
        y0, x0 = torch.randint(0, 16, (2,), generator=g).tolist()
        imgs[i, :, y0:y0 + 14, x0:x0 + 14] += 0.7
        target[i, y0:y0 + 14, x0:x0 + 14] = 1
        cy, cx = torch.randint(6, 26, (2,), generator=g).tolist()
        disc = (yy - cy) ** 2 + (xx - cx) ** 2 < 25
        imgs[i, 2, disc] = 1.0
        imgs[i, :2, disc] = 0.0
        target[i, disc] = 2
    return (imgs - 0.5) / 0.25, target


def assert_overfits_toy_task(build: Callable[..., torch.nn.Module], lr: float) -> None:
    """60 AdamW steps of `build(num_classes=3, dropout=0.0)` on 8 toy images must cut the loss
    to under 35 % of its start and reach > 85 % pixel accuracy on them."""
    torch.manual_seed(0)
    net = build(num_classes=3, dropout=0.0).train()
    x, t = toy_batch(8, seed=3)
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=0.0)
    losses = []
    for _ in range(60):
        opt.zero_grad()
        loss = F.cross_entropy(net(x, upsample=True), t)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.35 * losses[0], losses[::10]
    net.eval()
    with torch.no_grad():
        acc = (net(x, upsample=True).argmax(1) == t).float().mean().item()
    assert acc > 0.85
