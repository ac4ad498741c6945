"""Point-set geometry of the AutoFocusFormer: exact k-nearest-neighbour search and balanced clustering.

This module owns the discrete decisions of the backbone, each following the official code's rules:

* `knn`: k nearest database points of every query point, squared Euclidean distances computed exactly
  in float64 from float32 coordinates, ties broken toward the LOWER database index. Large problems use
  a spatially local search on a uniform cell grid whose result is provably identical to brute force
  (a query's answer is accepted only when every point outside its searched window is strictly farther
  than its k-th neighbour); the remaining queries fall back to chunked brute force.
* `space_filling_cluster`: the official serpentine-anchor balanced clustering (float32 arithmetic as
  the official code, stable sort), returning the permutation that groups each cluster's tokens.
* `nearest_clusters`: each token's nnc nearest cluster means (= knn, found through candidate
  clusters proposed by the token's own cluster, with an exactness bound); `cluster_neighbourhood`
  expands them to member lists and padding masks (the plain form, used by tests and references).
* `grid_prior` / `choose_centres`: the adaptive-downsampling grid prior (nearest-other-token
  distance from an occupancy canvas) and the centre selection with reserve tokens.

Nothing here keeps state between calls, and nothing needs gradients (all outputs are indices/masks).
`knn` is usable by other point-cloud code (e.g. the pixel decoder) with the same tie rule.
"""

from __future__ import annotations

import math

import torch

# Brute force is used when queries x database is at most this many pairs (per image).
_BRUTE_PAIRS = 1 << 21
# Pairs materialised at once by the chunked searches.
_CHUNK_PAIRS = 1 << 22


def _sq_dist(q: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
    """Exact float64 squared distances between q (..., 2) and d (..., 2) (broadcast)."""
    diff = q.double() - d.double()
    return diff[..., 0] * diff[..., 0] + diff[..., 1] * diff[..., 1]


def _topk_rows(d2: torch.Tensor, idx: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row, the k smallest d2 with ties -> lower idx, ascending. Rows are candidate lists
    (d2 = inf and a large idx for padding); candidate idx must be distinct within a row."""
    kth = d2.topk(k, dim=1, largest=False).values[:, -1:]
    # Everything strictly closer than the k-th distance is in; ties at it are filled by lowest idx.
    key = torch.where(d2 < kth, -1, torch.where(d2 == kth, idx, torch.iinfo(torch.long).max))
    pick = key.topk(k, dim=1, largest=False).indices
    idx, d2 = idx.gather(1, pick), d2.gather(1, pick)
    order = torch.sort(idx, dim=1, stable=True)[1]
    idx, d2 = idx.gather(1, order), d2.gather(1, order)
    order = torch.sort(d2, dim=1, stable=True)[1]
    return idx.gather(1, order), d2.gather(1, order)


def _brute_one(query: torch.Tensor, db: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Chunked brute-force knn of one image: query (nq, 2), db (nd, 2)."""
    nq, nd = query.shape[0], db.shape[0]
    out_i = torch.empty(nq, k, dtype=torch.long, device=query.device)
    out_d = torch.empty(nq, k, dtype=torch.float64, device=query.device)
    step = max(1, _CHUNK_PAIRS // max(nd, 1))
    base = torch.arange(nd, device=query.device)
    for s in range(0, nq, step):
        d2 = _sq_dist(query[s : s + step, None, :], db[None, :, :])
        i, d = _topk_rows(d2, base.expand(d2.shape[0], -1), k)
        out_i[s : s + step] = i
        out_d[s : s + step] = d
    return out_i, out_d


def _local_one(query: torch.Tensor, db: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact knn of one image through a uniform cell grid (5x5 window), brute force for the rest."""
    dev = query.device
    nq, nd = query.shape[0], db.shape[0]
    lo = torch.minimum(query.min(0).values, db.min(0).values).double()
    hi = torch.maximum(query.max(0).values, db.max(0).values).double()
    span = (hi - lo).clamp_min(1.0)
    area = float(span[0] * span[1])
    # About max(1, k/4) points per cell: the k-th neighbour then lies ~1.1 cells away on average,
    # well inside the guaranteed 2 cells of a 5x5 window.
    cell = max(math.sqrt(area * max(1.0, 0.25 * k) / nd), 1e-6)
    ncx = int(float(span[0]) // cell) + 1
    ncy = int(float(span[1]) // cell) + 1

    def cell_of(p: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        c = ((p.double() - lo) / cell).floor().long()
        return c[:, 0].clamp(0, ncx - 1), c[:, 1].clamp(0, ncy - 1)

    dcx, dcy = cell_of(db)
    dcell = dcy * ncx + dcx
    dperm = torch.sort(dcell, stable=True)[1]  # within a cell: ascending db index
    counts = torch.bincount(dcell, minlength=ncx * ncy)
    starts = torch.cumsum(counts, 0) - counts

    qcx, qcy = cell_of(query)
    r = 2
    offs = torch.tensor([(ox, oy) for oy in range(-r, r + 1) for ox in range(-r, r + 1)], device=dev)
    # Distance from each query to the window border; a side on the grid border has nothing beyond it.
    qd = query.double()
    left = torch.where(qcx > r, qd[:, 0] - (lo[0] + (qcx - r).double() * cell), math.inf)
    right = torch.where(qcx < ncx - 1 - r, (lo[0] + (qcx + r + 1).double() * cell) - qd[:, 0], math.inf)
    top = torch.where(qcy > r, qd[:, 1] - (lo[1] + (qcy - r).double() * cell), math.inf)
    bottom = torch.where(qcy < ncy - 1 - r, (lo[1] + (qcy + r + 1).double() * cell) - qd[:, 1], math.inf)
    # A small margin absorbs float64 rounding between the cell assignment and these borders.
    bound = (torch.stack([left, right, top, bottom], 1).min(1).values - 1e-6).clamp_min(0.0)
    bound2 = bound * bound

    out_i = torch.empty(nq, k, dtype=torch.long, device=dev)
    out_d = torch.empty(nq, k, dtype=torch.float64, device=dev)
    ok = torch.zeros(nq, dtype=torch.bool, device=dev)
    # Window cells of every query and their point counts; queries are processed in order of their
    # candidate count so each chunk is padded only to its own widest window.
    cx = qcx[:, None] + offs[None, :, 0]
    cy = qcy[:, None] + offs[None, :, 1]
    inside = (cx >= 0) & (cx < ncx) & (cy >= 0) & (cy < ncy)
    cid = cy.clamp(0, ncy - 1) * ncx + cx.clamp(0, ncx - 1)
    cnt = torch.where(inside, counts[cid], 0)  # (nq, window cells)
    total = cnt.sum(1)
    qorder = torch.sort(total, stable=True)[1]
    s = 0
    while s < nq:
        width = max(int(total[qorder[min(nq - 1, s + 255)]]), 1)
        e = min(nq, s + max(256, _CHUNK_PAIRS // width))
        sel = qorder[s:e]
        width = max(int(total[sel].max()), 1)
        c = cnt[sel]
        cum = torch.cumsum(c, 1)
        j = torch.arange(width, device=dev).expand(sel.numel(), -1).contiguous()
        which = torch.searchsorted(cum, j, right=True).clamp(max=offs.shape[0] - 1)
        prev = (cum - c).gather(1, which)
        at = starts[cid[sel]].gather(1, which) + (j - prev)
        valid = j < total[sel, None]
        cand = torch.where(valid, dperm[at.clamp(0, nd - 1)], nd)
        d2 = _sq_dist(query[sel, None, :], db[cand.clamp(max=nd - 1)])
        d2 = torch.where(valid, d2, math.inf)
        if width < k:  # too few candidates anywhere in the chunk: leave these to brute force
            s = e
            continue
        idx_k, d2_k = _topk_rows(d2, cand, k)
        out_i[sel] = idx_k
        out_d[sel] = d2_k
        ok[sel] = torch.isfinite(d2_k[:, -1]) & (d2_k[:, -1] < bound2[sel])
        s = e
    bad = (~ok).nonzero().squeeze(1)
    if bad.numel():
        bi, bd = _brute_one(query[bad], db, k)
        out_i[bad] = bi
        out_d[bad] = bd
    return out_i, out_d


def knn(
    query: torch.Tensor, database: torch.Tensor, k: int, *, force: str | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """k nearest `database` points of every `query` point, per image.

    query (B, Nq, 2), database (B, Nd, 2) -> (idx (B, Nq, k) int64, squared distance (B, Nq, k) float64),
    ascending distance, ties -> lower database index. Coordinates are cast to float32 first (as the
    official keops search does). `force` = "brute" or "local" selects a path (tests); default automatic.
    """
    if k > database.shape[1]:
        raise ValueError(f"knn: k={k} > database size {database.shape[1]}")
    if query.device.type == "mps":  # no float64 there: decide on the CPU, return to the device
        i, d = knn(query.cpu(), database.cpu(), k, force=force)
        return i.to(query.device), d
    with torch.no_grad():
        q32 = query.detach().float()
        d32 = database.detach().float()
        outs_i, outs_d = [], []
        for b in range(q32.shape[0]):
            small = q32.shape[1] * d32.shape[1] <= _BRUTE_PAIRS
            use_brute = force == "brute" or (force is None and small)
            fn = _brute_one if use_brute else _local_one
            i, d = fn(q32[b], d32[b], k)
            outs_i.append(i)
            outs_d.append(d)
        return torch.stack(outs_i), torch.stack(outs_d)


def space_filling_cluster(
    pos: torch.Tensor, cluster_size: int, h: int, w: int, per_image: bool = False
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Official balanced clustering on serpentine space-filling anchors (stable sort).

    pos (B, n, 2) float positions; h, w: the stride-4 canvas. Returns
    (order (B, n) int64: new token j is old token order[j]; cluster_mean (B, k, 2) float32 of the
    reordered tokens; cluster_mask (B, k, m) float32 with 0 at padding slots, or None if n % m == 0).
    Clusters are consecutive runs of `cluster_size` tokens in the new order. The official sort key
    uses the largest ratio of the whole batch (so ties, and results, can depend on batch mates);
    `per_image=True` takes it per image (identical to official for a batch of one).
    """
    with torch.no_grad():
        p = pos.detach().float()
        b, n, _ = p.shape
        m = cluster_size
        k = int(math.ceil(n / m))
        patch_len = (h * w / k) ** 0.5
        nph = max(1, int(round(h / patch_len)))
        npw = max(1, int(round(w / patch_len)))
        plhw = torch.tensor([w / npw, h / nph], dtype=torch.float32, device=p.device)

        gy, gx = torch.meshgrid(
            torch.arange(nph, device=p.device), torch.arange(npw, device=p.device), indexing="ij"
        )
        key = torch.where(gy % 2 == 1, gy * w + (w - 1 - gx), gy * w + gx).reshape(-1)
        anchor_order = torch.sort(key)[1]  # keys are distinct
        rank_of_cell = torch.empty_like(anchor_order)
        rank_of_cell[anchor_order] = torch.arange(anchor_order.numel(), device=p.device)
        grid = torch.stack([gx, gy], 2).reshape(-1, 2)[anchor_order]
        centres = grid * plhw + plhw / 2 - 0.5
        nump = centres.shape[0]
        prev = torch.empty_like(centres)
        nxt = torch.empty_like(centres)
        if nump >= 2:
            prev[1:] = centres[:-1]
            prev[0] = centres[0] - (centres[1] - centres[0])
            nxt[:-1] = centres[1:]
            nxt[-1] = centres[-1] + (centres[-1] - centres[-2])
        else:  # one anchor: the official code cannot run here; any constant ratio keeps order stable
            prev[:] = centres
            nxt[:] = centres

        cell = (p / plhw).floor().long()
        cell_id = cell[..., 0].clamp(0, npw - 1) + cell[..., 1].clamp(0, nph - 1) * npw
        rank = rank_of_cell[cell_id]  # (b, n)
        d_prev = (p - prev[rank]).pow(2).sum(-1)
        d_next = (p - nxt[rank]).pow(2).sum(-1)
        ratio = d_prev / (d_next + 1e-5)
        top = ratio.amax(1, keepdim=True).unsqueeze(2) if per_image else ratio.max()
        sort_key = rank.unsqueeze(2) * (top + 1) + ratio.unsqueeze(2)  # float32, as official
        order = torch.sort(sort_key.squeeze(2), dim=1, stable=True)[1]

        p_sorted = p.gather(1, order.unsqueeze(2).expand(-1, -1, 2))
        if k * m == n:
            return order, p_sorted.reshape(b, k, m, 2).mean(2), None
        pad = torch.zeros(b, k * m, 2, dtype=p.dtype, device=p.device)
        pad[:, :n] = p_sorted
        mask = torch.zeros(b, k * m, device=p.device, dtype=torch.long)
        mask[:, :n] = 1
        mask = mask.reshape(b, k, m)
        mean = pad.reshape(b, k, m, 2).sum(2) / mask.sum(2, keepdim=True)
        return order, mean, mask.float()


def nearest_clusters(pos: torch.Tensor, mean: torch.Tensor, m: int, nnc: int) -> torch.Tensor:
    """`knn(pos, mean, nnc)` indices for tokens in cluster order (token i belongs to cluster i // m).

    Exact through candidates: each cluster c proposes the K nearest cluster means to its own mean
    (distance D_c to the K-th). Any other cluster j is at least D_c - |p - mean_c| from a member p,
    so p's answer among the candidates is final when its nnc-th distance is strictly below that
    bound; the few remaining tokens use the plain search.
    """
    with torch.no_grad():
        b, n, _ = pos.shape
        k = mean.shape[1]
        big = 3 * nnc + 6
        if big >= k or n * k <= _BRUTE_PAIRS:
            return knn(pos, mean, nnc)[0]
        p32, m32 = pos.detach().float(), mean.detach().float()
        cand, cand_d2 = knn(m32, m32, big)  # (b, k, big)
        own = torch.arange(n, device=pos.device) // m
        out = torch.empty(b, n, nnc, dtype=torch.long, device=pos.device)
        for bi in range(b):
            ci = cand[bi, own]  # (n, big)
            d2 = _sq_dist(p32[bi, :, None, :], m32[bi][ci])
            idx, dk = _topk_rows(d2, ci, nnc)
            r = torch.sqrt(_sq_dist(p32[bi], m32[bi, own]))
            bound = torch.sqrt(cand_d2[bi, own, -1]) - r - 1e-9
            bad = (~(torch.sqrt(dk[:, -1]) < bound)).nonzero().squeeze(1)
            if bad.numel():
                idx[bad] = knn(p32[bi : bi + 1, bad], m32[bi : bi + 1], nnc)[0][0]
            out[bi] = idx
        return out


def _nearest_other_d2(pos: torch.Tensor, radius: int) -> torch.Tensor:
    """Squared distance of every token to the nearest other token (B, n) float64, for distinct
    integer positions: probe an occupancy canvas at offsets of increasing length up to `radius`;
    tokens with nobody that close fall back to `knn`."""
    b, n, _ = pos.shape
    p = pos.detach().long()
    lo = p.amin(1, keepdim=True)
    p = p - lo
    hw = p.amax(1).amax(0) + 1
    h, w = int(hw[1]) + 2 * radius, int(hw[0]) + 2 * radius
    occ = torch.zeros(b, h * w, dtype=torch.bool, device=pos.device)
    flat = (p[..., 1] + radius) * w + (p[..., 0] + radius)
    occ.scatter_(1, flat, True)
    r = torch.arange(-radius, radius + 1, device=pos.device)
    oy, ox = torch.meshgrid(r, r, indexing="ij")
    d2 = (ox * ox + oy * oy).reshape(-1)
    keep = (d2 > 0) & (d2 <= radius * radius)
    d2, order = torch.sort(d2[keep], stable=True)
    shift = (oy.reshape(-1)[keep] * w + ox.reshape(-1)[keep])[order]
    out = torch.full((b, n), math.inf, dtype=torch.float64, device=pos.device)
    step = max(1, _CHUNK_PAIRS // max(shift.numel(), 1))
    for s in range(0, n, step):
        hit = occ.gather(1, (flat[:, s : s + step, None] + shift).reshape(b, -1))
        hit = hit.reshape(b, -1, shift.numel())
        first = hit.float().argmax(-1)  # first occupied offset (offsets sorted by length)
        found = hit.any(-1)
        out[:, s : s + step] = torch.where(found, d2[first].double(), math.inf)
    miss = ~torch.isfinite(out)
    if bool(miss.any()):
        out = torch.where(miss, knn(pos, pos, 2)[1][..., 1], out)
    return out


def cluster_neighbourhood(
    pos: torch.Tensor, cluster_mean: torch.Tensor, cluster_mask: torch.Tensor | None,
    cluster_size: int, nnc: int,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """Neighbourhood of every (already reordered) token: members of its nnc nearest clusters.

    Returns member_idx (B, n, nnc*m) int64 (padding slots point at token 0), mask (B, n, nnc*m)
    float (0 = padding) or None when no cluster has padding, and the cluster ids (B, n, nnc).
    """
    b, n, _ = pos.shape
    m = cluster_size
    nearest = nearest_clusters(pos, cluster_mean, m, nnc)  # (b, n, nnc)
    slots = (nearest.unsqueeze(3) * m + torch.arange(m, device=pos.device)).reshape(b, n, nnc * m)
    member_idx = torch.where(slots < n, slots, torch.zeros_like(slots))
    if cluster_mask is None:
        return member_idx, None, nearest
    return member_idx, (slots < n).float(), nearest


def grid_prior(pos: torch.Tensor, stride: int) -> torch.Tensor:
    """Official grid prior of the downsampling (B, n) float: 1 on the adaptive grid, else 0.

    stride 2: both coordinates even. stride >= 4: d = distance to the nearest other token of the
    image, a = 2^(ceil(log2 d) + 1) (float32, as the official code), 1 where x % a == 0 and y % a == 0.
    """
    with torch.no_grad():
        p = pos.detach().long()
        if stride == 2:
            return ((p % 2) == 0).all(-1).float()
        if pos.shape[1] < 2:  # a lone token has no neighbour: no adaptive grid
            return torch.zeros(pos.shape[:2], device=pos.device)
        dist = torch.sqrt(_nearest_other_d2(pos, stride).float())
        ada = (2 ** (dist.log2().ceil() + 1)).long().clamp_min(1)
        return ((p % ada.unsqueeze(2)) == 0).all(-1).float()


def choose_centres(
    pos: torch.Tensor, importance: torch.Tensor, *, stride: int, keep: int, alpha: float,
    reserve_on: bool, reserve_num: int,
) -> torch.Tensor:
    """Indices (B, keep) of the downsampling centres, in the new token order.

    score = grid prior + alpha * importance (detached); reserve tokens (x % 2s == y % 2s == 0) get
    -100 and are appended after the top (keep - reserve_num) others. Top-k ties go to the lower
    index and the picked tokens are listed in ascending index order, then the reserve tokens
    ascending (the fixture's rule; the official `topk(sorted=False)` order is unspecified).
    """
    with torch.no_grad():
        b, n, _ = pos.shape
        score = grid_prior(pos, stride) + importance.detach().reshape(b, n).float() * alpha
        if not reserve_on:
            top = torch.sort(score, dim=1, descending=True, stable=True)[1][:, :keep]
            return torch.sort(top, dim=1)[0]
        p = pos.detach().long()
        reserve = ((p % (2 * stride)) == 0).all(-1)
        counts = reserve.sum(1)
        if bool((counts != reserve_num).any()):
            raise ValueError(
                f"reserve tokens per image {counts.tolist()} != expected {reserve_num}; "
                "all images of a batch must share one padded size"
            )
        score = score + reserve.float() * (-100)
        sample_num = max(keep - reserve_num, 0)
        top = torch.sort(score, dim=1, descending=True, stable=True)[1][:, :sample_num]
        top = torch.sort(top, dim=1)[0]
        reserve_idx = reserve.nonzero()[:, 1].reshape(b, reserve_num)  # ascending per row
        return torch.cat([top, reserve_idx], dim=1)
