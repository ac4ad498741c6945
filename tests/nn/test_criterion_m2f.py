"""Mask2Former criterion: Hungarian matching is optimal; the loss trains a tiny model."""

from __future__ import annotations

import itertools

import pytest
import torch
from torch import nn

from tilesegcli.nn.criterion import HungarianMatcher, SetCriterion, point_sample


def _targets(g: torch.Generator, b: int, n: int, k: int, hw: int = 16) -> list[dict]:
    out = []
    for _ in range(b):
        masks = torch.rand(n, hw, hw, generator=g) > 0.6
        out.append({"labels": torch.randint(0, k, (n,), generator=g), "masks": masks})
    return out


@pytest.mark.parametrize("q,n,seed", [(4, 3, 0), (5, 2, 1), (5, 5, 2), (3, 1, 3)])
def test_matching_equals_bruteforce(q: int, n: int, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    k = 3
    outputs = {"pred_logits": torch.randn(1, q, k + 1, generator=g),
               "pred_masks": torch.randn(1, q, 8, 8, generator=g)}
    tgt = _targets(g, 1, n, k)
    m = HungarianMatcher(num_points=50)
    cost = m.cost_matrix(outputs["pred_logits"][0], outputs["pred_masks"][0], tgt[0],
                         torch.Generator().manual_seed(99))
    (rows, cols), = m(outputs, tgt, torch.Generator().manual_seed(99))
    got = float(cost[rows, cols].sum())
    best = min(sum(float(cost[p[j], j]) for j in range(n))
               for p in itertools.permutations(range(q), n))
    assert len(rows) == n and sorted(cols.tolist()) == list(range(n))
    assert got == pytest.approx(best, abs=1e-5)


def test_point_sample_matches_bilinear_centres() -> None:
    img = torch.arange(16.0).view(1, 1, 4, 4)
    # the centre of pixel (x=1, y=2) in normalised coordinates
    coords = torch.tensor([[[1.5 / 4, 2.5 / 4]]])
    assert point_sample(img, coords).item() == pytest.approx(9.0)


def test_no_object_is_downweighted_and_empty_targets_work() -> None:
    crit = SetCriterion(2, num_points=20)
    outputs = {"pred_logits": torch.zeros(1, 3, 3, requires_grad=True),
               "pred_masks": torch.zeros(1, 3, 4, 4, requires_grad=True)}
    losses = crit(outputs, [{"labels": torch.zeros(0, dtype=torch.long),
                             "masks": torch.zeros(0, 8, 8, dtype=torch.bool)}])
    assert losses["loss_mask"].item() == 0.0
    losses["loss"].backward()
    assert crit.empty_weight.tolist() == pytest.approx([1.0, 1.0, 0.1])


class _Tiny(nn.Module):
    def __init__(self, q: int, k: int) -> None:
        super().__init__()
        self.enc = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 1))
        self.query = nn.Parameter(torch.randn(q, 16))
        self.cls = nn.Linear(16, k + 1)

    def forward(self, x: torch.Tensor) -> dict:
        f = self.enc(x)
        masks = torch.einsum("qc,bchw->bqhw", self.query, f)
        logits = self.cls(self.query).expand(x.shape[0], -1, -1)
        return {"pred_logits": logits, "pred_masks": masks,
                "aux_outputs": [{"pred_logits": logits, "pred_masks": masks}]}


def test_loss_falls_on_tiny_problem() -> None:
    torch.set_num_threads(1)  # tiny tensors: threads only add overhead (conftest resets it)
    torch.manual_seed(0)
    k = 2
    # image = colour-coded masks of two objects; the model must segment and classify them
    tg = []
    for b in range(2):
        masks = torch.zeros(2, 16, 16, dtype=torch.bool)
        masks[0, 2 + b : 8 + b, 3:9] = True
        masks[1, 9:14, 8 + b : 15] = True
        tg.append({"labels": torch.tensor([b % k, 1 - b % k]), "masks": masks})
    imgs = torch.stack([torch.stack([t["masks"][0].float(), t["masks"][1].float(),
                                     torch.zeros(16, 16)]) for t in tg])
    model = _Tiny(5, k)
    crit = SetCriterion(k, num_points=64)
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    history = []
    for _ in range(50):
        losses = crit(model(imgs), tg, torch.Generator().manual_seed(1))
        opt.zero_grad()
        losses["loss"].backward()
        opt.step()
        history.append(losses["loss"].item())
    assert {"loss_ce", "loss_mask", "loss_dice", "loss_ce_0", "loss_dice_0"} <= set(losses)
    assert history[-1] < 0.5 * history[0], history


def test_targets_of_different_sizes_are_padded() -> None:
    crit = SetCriterion(2, num_points=30)
    outputs = {"pred_logits": torch.randn(2, 3, 3), "pred_masks": torch.randn(2, 3, 8, 8)}
    t = [{"labels": torch.tensor([0]), "masks": torch.ones(1, 32, 32, dtype=torch.bool)},
         {"labels": torch.tensor([1]), "masks": torch.ones(1, 30, 28, dtype=torch.bool)}]
    losses = crit(outputs, t, torch.Generator().manual_seed(0))
    assert torch.isfinite(losses["loss"])
