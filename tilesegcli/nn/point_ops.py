"""Point-cloud primitives shared by the AFF Mask2Former head.

Owns: exact k-nearest-neighbour search on token positions (ties -> lower database index, the rule
of the golden fixtures), inverse-distance (Shepard) weights, weighted gathers (the pure-torch
equivalents of the official WEIGHTEDGATHER / MSDETRPC / CLUSTENWF CUDA kernels), the point sine
position embedding, the 5-number relative-position features and scattering tokens onto a grid.

Token positions are (x, y) integer coordinates on the stride-4 canvas stored as float32. The kNN
search exploits that: database tokens are put on an index canvas and each query only looks at a
disk of candidate cells, growing the disk until it provably holds the k nearest. Results equal a
brute-force stable sort of exact squared distances, at O(n * k) cost instead of O(n * N).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

#: Half-width of the official SEG relative-position table (inputs up to 2048 px).
REL_POS_HALF_WIDTH = 511

_CHUNK_ELEMS = 1 << 22  # candidate entries handled per kNN chunk (bounds memory)


def knn_bruteforce(query: torch.Tensor, database: torch.Tensor, k: int) -> torch.Tensor:
    """Reference kNN: exact float64 squared distances, stable sort (ties -> lower index).

    query (B, n, 2), database (B, N, 2) -> (B, n, k) int64, nearest first.
    """
    b, n, _ = query.shape
    q = query.detach().float().double()
    d = database.detach().float().double()
    rows = max(1, _CHUNK_ELEMS // max(1, d.shape[1]))
    out = []
    for s in range(0, n, rows):
        d2 = ((q[:, s : s + rows, None, :] - d[:, None, :, :]) ** 2).sum(-1)
        out.append(torch.sort(d2, dim=-1, stable=True).indices[..., :k])
    return torch.cat(out, dim=1) if out else query.new_zeros((b, 0, k), dtype=torch.long)


def _is_integer_grid(t: torch.Tensor) -> bool:
    return bool(t.numel() == 0 or (torch.all(t == torch.round(t)) and t.min() >= 0))


def _disk_offsets(r: int, device: torch.device) -> torch.Tensor:
    ar = torch.arange(-r, r + 1, device=device)
    dy, dx = torch.meshgrid(ar, ar, indexing="ij")
    off = torch.stack([dx.reshape(-1), dy.reshape(-1)], dim=1)
    return off[(off * off).sum(1) <= r * r]


def _knn_int_brute(qi: torch.Tensor, di: torch.Tensor, k: int) -> torch.Tensor:
    """Exact kNN for integer positions by chunked brute force on keys d2 * N + index."""
    n_db = di.shape[0]
    span = int((torch.cat([qi, di]).amax(0) - torch.cat([qi, di]).amin(0)).pow(2).sum()) + 1
    kdt = torch.int32 if span * n_db + n_db < 2**31 else torch.int64
    ar = torch.arange(n_db, device=di.device, dtype=kdt)
    qx, qy = qi[:, 0].to(kdt), qi[:, 1].to(kdt)
    dbx, dby = di[:, 0].to(kdt), di[:, 1].to(kdt)
    rows = max(1, _CHUNK_ELEMS // n_db)
    out = []
    for s in range(0, qi.shape[0], rows):
        ddx = qx[s : s + rows, None] - dbx[None]
        ddy = qy[s : s + rows, None] - dby[None]
        key = (ddx * ddx + ddy * ddy) * n_db + ar
        out.append((torch.topk(key, k, dim=1, largest=False, sorted=True).values % n_db).long())
    return torch.cat(out)


_BLOCK = 8  # query block side (cells) of the block pass


def _knn_block_pass(
    qi: torch.Tensor, di: torch.Tensor, canvas: torch.Tensor, k: int, margin: int,
    out: torch.Tensor,
) -> torch.Tensor:
    """kNN for queries grouped in blocks of _BLOCK x _BLOCK cells: every query of a block scans
    the tokens inside the block grown by ``margin``; a result is accepted only if its k-th squared
    distance is below the squared distance to the window's edge (so no outside token can tie or
    beat it). Fills ``out`` rows; returns the indices of queries left undecided."""
    h, w = canvas.shape
    n_db = di.shape[0]
    s, m = _BLOCK, margin
    side = s + 2 * m
    nbh, nbw = -(-h // s), -(-w // s)
    padded = torch.full((nbh * s + 2 * m, nbw * s + 2 * m), -1, dtype=torch.long,
                        device=canvas.device)
    padded[m : m + h, m : m + w] = canvas
    win = padded.unfold(0, side, s).unfold(1, side, s).reshape(nbh * nbw, side * side)
    valid = win >= 0
    count = valid.sum(1)
    order = torch.argsort((~valid).to(torch.int8), dim=1, stable=True)
    cand = win.gather(1, order)  # valid tokens first, in window raster order
    bx, by = qi[:, 0] // s, qi[:, 1] // s
    qblock = by * nbw + bx
    gap = torch.stack([qi[:, 0] - (bx * s - m), (bx * s + s + m - 1) - qi[:, 0],
                       qi[:, 1] - (by * s - m), (by * s + s + m - 1) - qi[:, 1]], 1).amin(1) + 1
    qcount = count[qblock]
    qorder = torch.argsort(qcount, stable=True)
    left = []
    rows_budget = _CHUNK_ELEMS
    st = 0
    nq = qi.shape[0]
    while st < nq:
        width = max(1, int(qcount[qorder[min(nq, st + 256) - 1]]))
        rows = max(256, rows_budget // width)
        sel = qorder[st : st + rows]
        width = max(1, int(qcount[sel].max()))
        c = cand[qblock[sel], :width]
        ok = c >= 0
        cpos = di[c.clamp(min=0)]
        dx = cpos[..., 0] - qi[sel, None, 0]
        dy = cpos[..., 1] - qi[sel, None, 1]
        key = torch.where(ok, (dx * dx + dy * dy) * n_db + c, torch.iinfo(torch.long).max)
        enough = qcount[sel] >= k
        if bool(enough.any()):
            kk = min(k, width)
            best = torch.topk(key[enough], kk, dim=1, largest=False, sorted=True).values
            kth_d2 = best[:, -1] // n_db
            g = gap[sel[enough]]
            good = kth_d2 < g * g
            rows_ok = sel[enough][good]
            out[rows_ok] = best[good] % n_db
            left.append(sel[enough][~good])
        left.append(sel[~enough])
        st += rows
    return torch.cat(left) if left else qi.new_zeros(0)


def _knn_grid_one(q: torch.Tensor, d: torch.Tensor, k: int) -> torch.Tensor | None:
    """Exact kNN for one image with integer positions; None if the database has duplicates."""
    n_db = d.shape[0]
    qi = q.round().long()
    di = d.round().long()
    w = int(max(qi[:, 0].max(), di[:, 0].max())) + 1
    h = int(max(qi[:, 1].max(), di[:, 1].max())) + 1
    r = max(1, math.ceil(math.sqrt(k * h * w / (math.pi * n_db))) + 1)
    if n_db <= 0.8 * (2 * r + 1) ** 2:  # a dense scan is cheaper than the disk search
        return _knn_int_brute(qi, di, k)
    canvas = torch.full((h * w,), -1, dtype=torch.long, device=d.device)
    canvas[di[:, 1] * w + di[:, 0]] = torch.arange(n_db, device=d.device)
    if int((canvas >= 0).sum()) != n_db:
        return None
    canvas = canvas.view(h, w)
    out = torch.empty((q.shape[0], k), dtype=torch.long, device=q.device)
    block_cost = (_BLOCK + 2 * r) ** 2 * n_db / (h * w)  # candidates per query, block pass
    if block_cost < 0.5 * len(_disk_offsets(r, q.device)):  # sparse database: blocks win
        pending = _knn_block_pass(qi, di, canvas, k, r, out)
    else:
        pending = torch.arange(q.shape[0], device=q.device)
    while pending.numel():
        if len(_disk_offsets(r, q.device)) > n_db:  # far from every token: scan them all
            out[pending] = _knn_int_brute(qi[pending], di, k)
            break
        # pad the canvas by r so every disk offset is a valid flat index (no bounds checks)
        kdt = torch.int32 if (r * r + 2) * n_db < 2**31 else torch.int64
        wp = w + 2 * r
        padded = torch.full((h + 2 * r, wp), -1, dtype=kdt, device=d.device)
        padded[r : r + h, r : r + w] = canvas.to(kdt)
        padded = padded.view(-1)
        off = _disk_offsets(r, q.device)
        off_flat = (off[:, 1] * wp + off[:, 0]).to(kdt)
        off_key = ((off * off).sum(1) * n_db).to(kdt)
        big = torch.iinfo(kdt).max
        q_flat = ((qi[:, 1] + r) * wp + (qi[:, 0] + r)).to(kdt)
        rows = max(1, _CHUNK_ELEMS // off.shape[0])
        still = []
        for s in range(0, pending.numel(), rows):
            sel = pending[s : s + rows]
            cidx = padded[(q_flat[sel, None] + off_flat[None]).long()]
            valid = cidx >= 0
            enough = valid.sum(1) >= k
            key = torch.where(valid[enough], off_key[None] + cidx[enough], big)
            best = torch.topk(key, k, dim=1, largest=False, sorted=True).values
            out[sel[enough]] = (best % n_db).long()
            still.append(sel[~enough])
        pending = torch.cat(still)
        r *= 2
    return out


def knn(query: torch.Tensor, database: torch.Tensor, k: int) -> torch.Tensor:
    """k nearest database points of every query: (B, n, 2), (B, N, 2) -> (B, n, k) int64.

    Nearest first; equal distances -> lower database index. Exactly equals ``knn_bruteforce``;
    uses the local grid search when every coordinate is a non-negative integer.
    """
    if k > database.shape[1]:
        raise ValueError(f"knn: k={k} > database size {database.shape[1]}")
    with torch.no_grad():
        q = query.detach().float()
        d = database.detach().float()
        if not (_is_integer_grid(q) and _is_integer_grid(d)):
            return knn_bruteforce(q, d, k)
        outs = []
        for b in range(q.shape[0]):
            r = _knn_grid_one(q[b], d[b], k)
            outs.append(r if r is not None else knn_bruteforce(q[b : b + 1], d[b : b + 1], k)[0])
        return torch.stack(outs)


def gather_rows(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """x (B, N, C), idx (B, ...) -> (B, ..., C)."""
    b, n, c = x.shape
    base = (torch.arange(b, device=idx.device) * n).view(b, *([1] * (idx.dim() - 1)))
    return x.reshape(b * n, c).index_select(0, (idx + base).reshape(-1)).view(*idx.shape, c)


def shepard_weights(
    query: torch.Tensor, nb_pos: torch.Tensor, power: float | torch.Tensor
) -> torch.Tensor:
    """Normalised inverse-distance weights 1/(d2^power + 1e-11) with d2 the squared distance.

    query (..., 2), nb_pos (..., k, 2) -> (..., k).
    """
    diff = query.unsqueeze(-2) - nb_pos
    dx, dy = diff[..., 0], diff[..., 1]
    d2 = dx * dx + dy * dy  # == pow(2).sum(-1) bit for bit, without a 2-wide reduction
    ipd = 1.0 / (d2.pow(power) + 1e-11)
    return ipd / ipd.sum(dim=-1, keepdim=True)


def weighted_gather(feat: torch.Tensor, idx: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """out[b, i] = sum_t weight[b, i, t] * feat[b, idx[b, i, t]].

    feat (B, N, C), idx/weight (B, n, k) -> (B, n, C). Memory is O(B n C), never O(B n k C).
    """
    b, n_db, c = feat.shape
    _, n, k = idx.shape
    base = (torch.arange(b, device=idx.device) * n_db).view(b, 1, 1)
    out = F.embedding_bag(
        (idx + base).reshape(-1, k),
        feat.reshape(-1, c),
        per_sample_weights=weight.reshape(-1, k).to(feat.dtype),
        mode="sum",
    )
    return out.view(b, n, c)


def shepard_upsample(
    query: torch.Tensor, database: torch.Tensor, feat: torch.Tensor, k: int = 4, power: float = 3
) -> torch.Tensor:
    """Interpolate ``feat`` at ``database`` positions to ``query`` positions from the k nearest."""
    k = min(k, database.shape[1])
    idx = knn(query, database, k)
    w = shepard_weights(query, gather_rows(database, idx), power)
    return weighted_gather(feat, idx, w)


def sine_embed(
    pos: torch.Tensor, num_feats: int, temperature: float = 10000.0, per_image: bool = False,
    extent: float | None = None,
) -> torch.Tensor:
    """Point sine embedding (official PositionEmbeddingSine, normalize=True): (B, n, 2) -> (B, n, 2F).

    x and y are divided by (their max over the WHOLE batch tensor + 1e-6) and scaled by 2 pi;
    output is [sin(x/d_even), cos(x/d_odd), sin(y/d_even), cos(y/d_odd)].
    per_image=True normalises by each image's own max instead (batch-independent results; equal
    to the official behaviour for batch size 1).
    extent: a fixed divisor instead of any max (a tileseg extension): a token's embedding then
    depends on its position alone, not on the size of the image it came from, so one network
    serves tiles of any size on one physical scale. extent = (training tile / stride) - 1 equals
    the per-image max on a full grid of that tile size.
    """
    scale = 2 * math.pi
    y = pos[:, :, 1]
    x = pos[:, :, 0]
    if extent is not None:
        y = y / extent * scale
        x = x / extent * scale
    elif per_image:
        y = y / (y.amax(1, keepdim=True) + 1e-6) * scale
        x = x / (x.amax(1, keepdim=True) + 1e-6) * scale
    else:
        y = y / (y.max() + 1e-6) * scale
        x = x / (x.max() + 1e-6) * scale
    dim_t = torch.arange(num_feats, dtype=torch.float32, device=pos.device)
    dim_t = temperature ** (2 * dim_t.div(2, rounding_mode="floor") / num_feats)
    px = x[:, :, None] / dim_t
    py = y[:, :, None] / dim_t
    px = torch.cat((px[:, :, 0::2].sin(), px[:, :, 1::2].cos()), dim=2)
    py = torch.cat((py[:, :, 0::2].sin(), py[:, :, 1::2].cos()), dim=2)
    return torch.cat((px, py), dim=2)


def rel_pos_features(rel: torch.Tensor, half_width: int = REL_POS_HALF_WIDTH) -> torch.Tensor:
    """The official table row (dx, dy, r, dy/r, dx/r) of integer offsets rel (..., 2) = (dx, dy).

    Offsets are truncated to integers and clamped to [-W, W] like the official lookup; the
    arithmetic is float32 in the table's order, so values equal the gathered table rows.
    """
    r = rel.long().clamp(-half_width, half_width).float()
    xs, ys = r[..., 0], r[..., 1]
    dis = (ys**2 + xs**2) ** 0.5
    sin = ys / dis
    cos = xs / dis
    out = torch.stack([xs, ys, dis, sin, cos], dim=-1)
    return torch.nan_to_num(out, nan=0.0, posinf=0.0, neginf=0.0)


def point2img(x: torch.Tensor, pos: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
    """Scatter per-token values x (B, Q, n) at positions pos (B, n, 2) onto (B, Q, h, w); 0 elsewhere."""
    b, q, _ = x.shape
    h, w = hw
    p = pos.long()
    flat = (p[:, :, 1] * w + p[:, :, 0]).unsqueeze(1).expand(-1, q, -1)
    out = x.new_zeros((b, q, h * w))
    out.scatter_(2, flat, x)
    return out.view(b, q, h, w)


def grid_positions(b: int, hw: tuple[int, int], device: torch.device) -> torch.Tensor:
    """All cells of an (h, w) canvas in raster order as (B, h*w, 2) float (x, y)."""
    h, w = hw
    ys, xs = torch.meshgrid(
        torch.arange(h, device=device), torch.arange(w, device=device), indexing="ij"
    )
    g = torch.stack([xs, ys], dim=2).reshape(1, -1, 2).float()
    return g.expand(b, -1, -1)
