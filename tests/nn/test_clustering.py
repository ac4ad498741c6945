"""Unit tests of tilesegcli.nn.clustering: exact knn, balanced clustering, grid prior, centres."""

from __future__ import annotations

import math

import pytest
import torch

from tilesegcli.nn.clustering import (
    choose_centres,
    cluster_neighbourhood,
    grid_prior,
    knn,
    space_filling_cluster,
)


def _reference_knn(q: torch.Tensor, d: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    diff = q.double()[:, :, None] - d.double()[:, None]
    d2 = diff[..., 0] ** 2 + diff[..., 1] ** 2
    order = torch.sort(d2, dim=2, stable=True)[1][..., :k]
    return order, d2.gather(2, order)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_knn_paths_equal_full_sort_with_ties(seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    # Small integer coordinates and means of 8 points -> many exactly equal distances.
    q = torch.randint(0, 24, (2, 700, 2), generator=g).float()
    d = torch.randint(0, 24 * 8, (2, 257, 2), generator=g).float() / 8
    for k in (1, 2, 6, 9):
        ref_i, ref_d = _reference_knn(q, d, k)
        for force in ("brute", "local"):
            i, d2 = knn(q, d, k, force=force)
            assert torch.equal(i, ref_i), (force, k)
            assert torch.equal(d2, ref_d)


def test_knn_local_on_large_sparse_and_clustered_sets() -> None:
    g = torch.Generator().manual_seed(5)
    # Dense blob plus sparse far points: some queries need the brute-force fallback.
    blob = torch.randint(0, 40, (1, 3000, 2), generator=g).float()
    far = torch.randint(0, 1000, (1, 200, 2), generator=g).float()
    pts = torch.cat([blob, far], 1)
    db = torch.unique(pts[0], dim=0)[None]
    i, d2 = knn(pts, db, 6)  # 3200 x ~1600 pairs: above the brute-force size -> local path
    ref_i, ref_d = _reference_knn(pts, db, 6)
    assert torch.equal(i, ref_i) and torch.equal(d2, ref_d)


def test_knn_self_query_second_column_is_nearest_other() -> None:
    pos = torch.tensor([[[0.0, 0.0], [3.0, 4.0], [10.0, 0.0], [0.0, 1.0]]])
    i, d2 = knn(pos, pos, 2)
    assert torch.equal(i[0, :, 0], torch.arange(4))
    assert d2[0, :, 1].tolist() == [1.0, 18.0, 65.0, 1.0]


def test_knn_rejects_k_larger_than_database() -> None:
    with pytest.raises(ValueError):
        knn(torch.zeros(1, 3, 2), torch.zeros(1, 2, 2), 3)


def _grid(h: int, w: int) -> torch.Tensor:
    ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    return torch.stack([xs, ys], 2).reshape(1, -1, 2).float()


def test_space_filling_cluster_invariants_full_grid() -> None:
    pos = _grid(12, 20)
    order, mean, mask = space_filling_cluster(pos, 8, 12, 20)
    n = pos.shape[1]
    assert mask is None and mean.shape == (1, n // 8, 2)
    assert torch.equal(torch.sort(order[0])[0], torch.arange(n))  # a permutation
    p = pos[0, order[0]]
    torch.testing.assert_close(mean[0], p.reshape(-1, 8, 2).mean(1))
    # Balanced clusters of a space-filling scan are compact: bbox side at most a few cells.
    ext = p.reshape(-1, 8, 2).amax(1) - p.reshape(-1, 8, 2).amin(1)
    assert float(ext.max()) <= 7


def test_space_filling_cluster_padding_mask_and_means() -> None:
    g = torch.Generator().manual_seed(3)
    pos = _grid(16, 16)[:, torch.randperm(256, generator=g)[:203]]
    order, mean, mask = space_filling_cluster(pos, 8, 16, 16)
    k = math.ceil(203 / 8)
    assert mask is not None and mask.shape == (1, k, 8)
    assert int(mask.sum()) == 203 and mask[0, :-1].all() and int(mask[0, -1].sum()) == 203 - 8 * (k - 1)
    p = pos[0, order[0]]
    torch.testing.assert_close(mean[0, -1], p[8 * (k - 1):].mean(0))


def test_space_filling_cluster_follows_serpentine_anchor_order() -> None:
    # 8x8 canvas, k = 4 anchors of 4x4: serpentine rows -> TL, TR, BR, BL quadrant order.
    pos = _grid(8, 8)
    order, _, _ = space_filling_cluster(pos, 16, 8, 8)
    p = pos[0, order[0]].reshape(4, 16, 2)
    quad = [(int(c[:, 0].min()) // 4, int(c[:, 1].min()) // 4) for c in p]
    assert quad == [(0, 0), (1, 0), (1, 1), (0, 1)]
    assert all(float((c.amax(0) - c.amin(0)).max()) == 3 for c in p)


def test_space_filling_cluster_sort_is_stable() -> None:
    # Duplicate keys: identical positions must keep their incoming order.
    pos = torch.tensor([[[1.0, 1.0]] * 4 + [[6.0, 6.0]] * 4])
    order, _, _ = space_filling_cluster(pos, 2, 8, 8)
    first = order[0][order[0] < 4]
    assert first.tolist() == [0, 1, 2, 3]


def test_cluster_neighbourhood_members_and_mask() -> None:
    pos = _grid(6, 6)[:, :30]  # 30 tokens, clusters of 8 -> last cluster has 2 padded slots
    order, mean, mask = space_filling_cluster(pos, 8, 6, 6)
    pos = pos.gather(1, order.unsqueeze(2).expand(-1, -1, 2))
    member, nb_mask, nearest = cluster_neighbourhood(pos, mean, mask, 8, 3)
    assert member.shape == (1, 30, 24) and nb_mask is not None
    for i in range(30):
        for j, c in enumerate(nearest[0, i].tolist()):
            slots = torch.arange(c * 8, c * 8 + 8)
            assert torch.equal(member[0, i, j * 8:(j + 1) * 8], torch.where(slots < 30, slots, 0))
            assert torch.equal(nb_mask[0, i, j * 8:(j + 1) * 8], (slots < 30).float())
    d = ((pos[0, :, None] - mean[0, None]) ** 2).sum(-1)
    dn = d.gather(1, nearest[0])
    assert (dn[:, 1:] >= dn[:, :-1]).all()


def test_grid_prior_hand_made() -> None:
    pos = torch.tensor([[[0.0, 0.0], [2.0, 4.0], [3.0, 0.0], [4.0, 2.0]]])
    assert grid_prior(pos, 2).tolist() == [[1.0, 1.0, 0.0, 1.0]]
    # stride >= 4: a = 2^(ceil(log2 d) + 1) from the distance d to the nearest other token.
    pos = torch.tensor([[[0.0, 0.0], [4.0, 0.0], [0.0, 4.0], [4.0, 4.0], [1.0, 1.0], [16.0, 16.0]]])
    # (0,0): d=sqrt2 -> a=4 -> on grid. (4,0): d=sqrt10 -> a=8 -> 4%8 != 0. (1,1): a=4 -> off.
    # (16,16): d=sqrt(288)~17 -> a=64 -> 16%64 != 0.
    assert grid_prior(pos, 4).tolist() == [[1.0, 0.0, 0.0, 0.0, 0.0, 0.0]]
    pos = torch.tensor([[[0.0, 0.0], [8.0, 0.0], [16.0, 0.0], [16.0, 16.0]]])
    assert grid_prior(pos, 8).tolist() == [[1.0, 0.0, 1.0, 0.0]]  # d=8 -> a=16; d=16 -> a=32


def test_choose_centres_reserve_and_ties() -> None:
    # 4x4 grid at stride 2: reserve = positions with x%4 == y%4 == 0 -> (0,0) only on a 4x4 canvas.
    pos = _grid(4, 4)
    imp = torch.zeros(1, 16, 1)
    imp[0, 5] = 0.9  # (1,1)
    imp[0, 15] = 0.9  # (3,3): same score as token 5 -> lower index first
    idx = choose_centres(pos, imp, stride=2, keep=4, alpha=4.0, reserve_on=True, reserve_num=1)
    # scores: even-even tokens get the grid prior 1 (2, 8, 10); 5 and 15 get 3.6.
    assert idx.tolist() == [[2, 5, 15, 0]]
    idx = choose_centres(pos, imp, stride=2, keep=3, alpha=0.1, reserve_on=True, reserve_num=1)
    assert idx.tolist() == [[2, 8, 0]]  # 1.09 < 1: prior wins, ties -> lower index, sorted
    with pytest.raises(ValueError):
        choose_centres(pos, imp, stride=2, keep=4, alpha=4.0, reserve_on=True, reserve_num=2)
    idx = choose_centres(pos, imp, stride=2, keep=2, alpha=4.0, reserve_on=False, reserve_num=0)
    assert idx.tolist() == [[5, 15]]


def test_nearest_other_and_nearest_clusters_equal_plain_knn() -> None:
    from tilesegcli.nn.clustering import _nearest_other_d2, nearest_clusters

    g = torch.Generator().manual_seed(11)
    pos = torch.unique(torch.randint(0, 70, (1500, 2), generator=g), dim=0).float()[None]
    pos = pos[:, torch.randperm(pos.shape[1], generator=g)]
    assert torch.equal(_nearest_other_d2(pos, 4), knn(pos, pos, 2, force="brute")[1][..., 1])
    # A sparse stage-like token set (reserve grid + random tokens) on a 96x96 canvas.
    grid = _grid(96, 96)
    keep = ((grid[0, :, 0] % 8 == 0) & (grid[0, :, 1] % 8 == 0)) | (torch.rand(9216, generator=g) < 0.3)
    pos = grid[:, keep]
    order, mean, _ = space_filling_cluster(pos, 8, 96, 96)
    pos = pos.gather(1, order.unsqueeze(2).expand(-1, -1, 2))
    assert torch.equal(nearest_clusters(pos, mean, 8, 6), knn(pos, mean, 6, force="brute")[0])
