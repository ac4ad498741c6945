"""Point primitives of the AFF Mask2Former head: exact kNN with the fixture tie rule, gathers."""

from __future__ import annotations

import pytest
import torch

from tilesegcli.nn.point_ops import (
    gather_rows,
    grid_positions,
    knn,
    knn_bruteforce,
    point2img,
    rel_pos_features,
    shepard_weights,
    weighted_gather,
)


def _random_tokens(g: torch.Generator, b: int, h: int, w: int, n: int) -> torch.Tensor:
    out = []
    for _ in range(b):
        cells = torch.randperm(h * w, generator=g)[:n]
        out.append(torch.stack([cells % w, cells // w], dim=1).float())
    return torch.stack(out)


@pytest.mark.parametrize("n,k", [(7, 4), (40, 4), (300, 9), (1000, 4), (64, 64)])
def test_knn_equals_bruteforce_with_ties(n: int, k: int) -> None:
    g = torch.Generator().manual_seed(n * 31 + k)
    db = _random_tokens(g, 2, 37, 53, n)
    for query in (grid_positions(2, (37, 53), torch.device("cpu")), db):
        assert torch.equal(knn(query, db, k), knn_bruteforce(query, db, k))


def test_knn_tie_goes_to_lower_index() -> None:
    # query at (1, 1); four tokens at distance 1 listed in a scrambled order
    db = torch.tensor([[[1.0, 2.0], [0.0, 1.0], [5.0, 5.0], [2.0, 1.0], [1.0, 0.0]]])
    q = torch.tensor([[[1.0, 1.0]]])
    assert knn(q, db, 2).tolist() == [[[0, 1]]]
    assert knn(q, db, 4).tolist() == [[[0, 1, 3, 4]]]


def test_knn_non_integer_falls_back_exactly() -> None:
    g = torch.Generator().manual_seed(3)
    db = torch.rand(1, 50, 2, generator=g) * 10
    q = torch.rand(1, 20, 2, generator=g) * 10
    assert torch.equal(knn(q, db, 5), knn_bruteforce(q, db, 5))


def test_weighted_gather_matches_dense() -> None:
    g = torch.Generator().manual_seed(0)
    feat = torch.randn(2, 30, 5, generator=g)
    idx = torch.randint(0, 30, (2, 11, 4), generator=g)
    w = torch.rand(2, 11, 4, generator=g)
    dense = (gather_rows(feat, idx) * w[..., None]).sum(2)
    torch.testing.assert_close(weighted_gather(feat, idx, w), dense)


def test_shepard_exact_point_dominates() -> None:
    q = torch.tensor([[[2.0, 3.0]]])
    nb = torch.tensor([[[[2.0, 3.0], [3.0, 3.0], [0.0, 0.0], [2.0, 4.0]]]])
    w = shepard_weights(q, nb, 3)
    assert w[0, 0, 0] > 1 - 1e-6 and torch.allclose(w.sum(-1), torch.ones(1, 1))


def test_rel_pos_features_rows() -> None:
    rel = torch.tensor([[3.0, -4.0], [0.0, 0.0], [900.0, 0.0]])
    f = rel_pos_features(rel)
    torch.testing.assert_close(f[0], torch.tensor([3.0, -4.0, 5.0, -0.8, 0.6]))
    assert torch.equal(f[1], torch.zeros(5))
    assert f[2, 0] == 511 and f[2, 2] == 511  # clamped like the official table


def test_point2img_places_tokens() -> None:
    pos = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])
    img = point2img(torch.tensor([[[5.0, 7.0]]]), pos, (2, 2))
    assert img.tolist() == [[[[0.0, 5.0], [7.0, 0.0]]]]


def test_knn_sparse_clustered_database() -> None:
    # sparse tokens bunched in one corner: exercises the block pass and the growing-disk fallback
    g = torch.Generator().manual_seed(11)
    h, w = 96, 120
    pts = torch.unique(torch.randint(0, 30, (1, 400, 2), generator=g), dim=1).float()
    extra = torch.tensor([[[119.0, 95.0], [60.0, 50.0]]])
    db = torch.cat([pts, extra], dim=1)
    q = grid_positions(1, (h, w), torch.device("cpu"))
    ref = knn_bruteforce(q, db, 9)  # stable sort: smaller k = prefix
    for k in (1, 4, 9):
        assert torch.equal(knn(q, db, k), ref[..., :k])


def test_sine_embed_fixed_extent_is_tile_size_independent() -> None:
    import torch

    from tilesegcli.nn.point_ops import sine_embed

    yy, xx = torch.meshgrid(torch.arange(32.0), torch.arange(32.0), indexing="ij")
    small = torch.stack([xx.flatten(), yy.flatten()], -1)[None]
    yy, xx = torch.meshgrid(torch.arange(64.0), torch.arange(64.0), indexing="ij")
    big = torch.stack([xx.flatten(), yy.flatten()], -1)[None]
    in_big = (big[0, :, 0] < 32) & (big[0, :, 1] < 32)
    fixed_s, fixed_b = sine_embed(small, 16, extent=31.0), sine_embed(big, 16, extent=31.0)
    assert torch.allclose(fixed_s[0], fixed_b[0, in_big], atol=1e-6)
    # extent = grid size - 1 is the official per-max normalisation on that grid (up to its 1e-6)
    assert torch.allclose(fixed_s, sine_embed(small, 16), atol=1e-4)
    assert not torch.allclose(sine_embed(small, 16)[0], sine_embed(big, 16)[0, in_big], atol=1e-2)
