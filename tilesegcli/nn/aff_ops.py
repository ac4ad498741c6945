"""Tensor ops of the AutoFocusFormer: the official `clusten` CUDA kernels in plain torch.

This module owns the numerics that touch neighbourhoods:

* `rel_table` / `rel_pos_features`: the 5 relative-position features (dx, dy, r, dy/r, dx/r), as the
  official table (only the radius a stage needs) or per gathered pair; with the SEG clamp of each
  offset to [-W, W] both equal the official table rows.
* `plan_clusters` / `plan_global` + `plan_attention`: the fast cluster attention. A stage's tokens
  are grouped in their clusters; each cluster attends to the union of its tokens' nearest clusters
  with a per-pair bias row (position bias, -100 padding, -inf outside the token's own
  neighbourhood, 0 for the blank token), so gathers are per cluster and the products are dense
  matmuls. Chunked over clusters: peak memory stays bounded at any input size.
* `neighbourhood_attention`: the plain per-token gather formula (CLUSTENQK + bias + blank +
  softmax + CLUSTENAV); the reference `plan_attention` is tested against.
* `neighbourhood_merge`: CLUSTENWF of the adaptive downsampling (weight_net on the relative
  features, times importance and mask, summed against gathered features), chunked.
* `drop_path`: per-sample stochastic depth (timm semantics).

All functions are differentiable (plans are index data), device-agnostic and keep no state.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

# Elements of gathered neighbour tensors materialised at once (about 32 MB in fp32).
CHUNK_ELEMENTS = 1 << 23


def rel_pos_features(
    pos_q: torch.Tensor, pos_nb: torch.Tensor, clamp: int | None, dtype: torch.dtype
) -> torch.Tensor:
    """Features of pairs (query, neighbour): [dx, dy, r, dy/r, dx/r] with d = p_nb - p_q.

    `clamp` = W clamps dx and dy to [-W, W] (SEG); None leaves them as they are (CLS). The centre pair
    (0, 0) gives zeros. Computed in float32 (as the official table) and cast to `dtype`.
    """
    d = pos_nb.float() - pos_q.float()
    if clamp is not None:
        d = d.clamp(-float(clamp), float(clamp))
    dx, dy = d[..., 0], d[..., 1]
    r = (dy**2 + dx**2) ** 0.5  # the official table's formula
    safe = torch.where(r > 0, r, torch.ones_like(r))
    zero = torch.zeros_like(r)
    sin = torch.where(r > 0, dy / safe, zero)
    cos = torch.where(r > 0, dx / safe, zero)
    return torch.stack([dx, dy, r, sin, cos], dim=-1).to(dtype)


def _flat_gather(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """x (B, n, ...) gathered per image with idx (B, t, M) -> (B, t, M, ...)."""
    b, n = x.shape[:2]
    base = (torch.arange(b, device=idx.device) * n).view(b, *([1] * (idx.dim() - 1)))
    return x.reshape(b * n, *x.shape[2:])[idx + base]


def _chunk_len(n: int, per_token: int) -> int:
    return max(1, min(n, CHUNK_ELEMENTS // max(per_token, 1)))


def rel_table(radius: int) -> torch.Tensor:
    """The official relative-position table for offsets in [-radius, radius]^2: ((2r+1)^2, 5) float32.

    Row (dy + r) * (2r + 1) + (dx + r) holds [dx, dy, dist, dy/dist, dx/dist], zeros at the centre.
    Built with the official float32 formula; only the radius a stage needs is materialised.
    """
    ar = torch.arange(2 * radius + 1).float() - radius
    ys, xs = torch.meshgrid(ar, ar, indexing="ij")
    dist = (ys**2 + xs**2) ** 0.5
    table = torch.stack([xs, ys, dist, ys / dist, xs / dist], dim=2)
    table[~torch.isfinite(table)] = 0
    return table.reshape(-1, 5)


@dataclass
class AttentionPlan:
    """Cluster-blocked attention layout of one stage, shared by all its blocks.

    Queries are the stage's tokens in cluster order, viewed as k blocks of m (padded to k*m). Every
    block attends to the members of the union of its tokens' nearest clusters plus the blank token
    (L keys; the last is the blank, token index n). `bias_idx` picks, per (query, key), a row of the
    per-block bias table [PE(table) | PE(table) - 100 | 0 | -inf] (rows 0..T-1, T..2T-1, 2T, 2T+1):
    the position bias of a token's own neighbours, the same minus 100 for padding slots of its own
    clusters (as the official code), 0 for the blank key and -inf for union keys outside the
    token's neighbourhood, so each softmax covers exactly the token's neighbourhood and the blank.
    Per-token gathers become dense per-block matmuls.
    """

    key_idx: torch.Tensor  # (B, k, L) int64 token index of each key; n = blank token
    bias_idx: torch.Tensor  # (B, k, m, L) int32 row of the bias table
    table: torch.Tensor  # (T, 5) relative-position features
    m: int
    n: int


def _rel_rows(pos: torch.Tensor, key_idx: torch.Tensor, qpos: torch.Tensor, clamp: int | None,
              kinds: tuple[torch.Tensor, torch.Tensor] | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Bias-table rows of every (query, key) pair plus the blank column, and the feature table.

    Row of a pair = (dy + r)(2r + 1) + (dx + r) for the offset d = p_key - p_query (clamped to
    [-r, r]; r covers every ordinary pair unless the SEG clamp cuts it). `kinds` = (own
    (B,k,m,U,1), pad (B,k,1,U,m)) marks a token's own clusters and padding slots (see
    AttentionPlan for the encoding). Padding slots point at token 0, possibly far away: the few
    padding slots of a token's own clusters get exact extra table rows appended after the grid.
    """
    b, k, L = key_idx.shape
    m = qpos.shape[2]
    qp = qpos.float()
    kp = _flat_gather(pos, key_idx).float()  # (b, k, L, 2), exact integers
    if kinds is not None:  # padding keys: measure the ordinary offsets only (block's own position)
        own, pad = kinds
        kp = torch.where(pad.reshape(b, k, L, 1), qp[:, :, :1], kp)
    span = torch.maximum(kp.amax(2) - qp.amin(2), qp.amax(2) - kp.amin(2))
    radius = int(span.max()) if span.numel() else 0
    needs_clamp = clamp is not None and radius > clamp
    if clamp is not None:
        radius = min(radius, clamp)
    width = 2 * radius + 1
    table = rel_table(radius).to(pos.device)
    rows = torch.empty(b, k, m, L + 1, dtype=torch.int32, device=pos.device)
    body = rows[..., :L]
    if not needs_clamp:  # the row is linear in the positions: code(key) - code(query) + const
        kcode = (kp[..., 1] * width + kp[..., 0]).to(torch.int32)  # (b, k, L)
        qcode = (qp[..., 1] * width + qp[..., 0]).to(torch.int32) - (radius * width + radius)
        body.copy_(kcode.unsqueeze(2) - qcode.unsqueeze(3))
    else:
        step = max(1, CHUNK_ELEMENTS // max(b * m * L * 2, 1))
        for s in range(0, k, step):
            rel = (kp[:, s : s + step, None] - qp[:, s : s + step, :, None]).clamp(-radius, radius)
            body[:, s : s + step] = (rel[..., 1] + radius) * width + (rel[..., 0] + radius)
    if kinds is not None:
        own_pad = (own & pad).reshape(b, k, m, L)
        hit = own_pad.nonzero()
        e = hit.shape[0]
        if e:  # exact features of (query, token 0) for the padding slots of own clusters
            p0 = pos[hit[:, 0], 0].float()
            extra = rel_pos_features(qp[hit[:, 0], hit[:, 1], hit[:, 2]], p0, clamp, torch.float32)
            table = torch.cat([table, extra])
        t = table.shape[0]
        if e:  # their rows live in the "-100" half of the bias table
            body[own_pad] = 2 * t - e + torch.arange(e, device=pos.device, dtype=torch.int32)
        outside = ~own.expand(-1, -1, -1, -1, pad.shape[4]).reshape(b, k, m, L)
        body.masked_fill_(outside, 2 * t + 1)
    else:
        t = table.shape[0]
    rows[..., L] = 2 * t  # blank key: zero bias
    return rows, table


def plan_clusters(pos: torch.Tensor, nearest: torch.Tensor, m: int, clamp: int | None) -> AttentionPlan:
    """Plan for local attention: pos (B, n, 2) in cluster order, nearest (B, n, nnc) cluster ids."""
    with torch.no_grad():
        b, n, nnc = nearest.shape
        k = -(-n // m)
        if k * m > n:  # padded query rows copy token 0's clusters; their outputs are dropped
            nearest = torch.cat([nearest, nearest[:, :1].expand(-1, k * m - n, -1)], dim=1)
        cand = nearest.reshape(b, k, m * nnc).sort(-1).values
        first = torch.ones_like(cand, dtype=torch.bool)
        first[..., 1:] = cand[..., 1:] != cand[..., :-1]
        umax = int(first.sum(-1).max())
        union = torch.full((b, k, umax), k, dtype=torch.long, device=pos.device)
        union.scatter_(2, first.long().cumsum(-1) - 1, cand)  # sorted, padded with k
        where = torch.searchsorted(union.reshape(b * k, umax), nearest.reshape(b * k, m * nnc))
        own = torch.zeros(b * k, m, umax, dtype=torch.bool, device=pos.device)
        own.scatter_(2, where.reshape(b * k, m, nnc), True)
        own = own.reshape(b, k, m, umax, 1)
        slot = union.unsqueeze(3) * m + torch.arange(m, device=pos.device)  # (b, k, U, m)
        pad = (slot >= n).unsqueeze(2)
        key_idx = torch.where(slot < n, slot, 0).reshape(b, k, umax * m)
        qpos = torch.cat([pos, pos[:, :1].expand(-1, k * m - n, -1)], 1).reshape(b, k, m, 2)
        rows, table = _rel_rows(pos, key_idx, qpos, clamp, (own, pad))
        key_idx = torch.cat([key_idx, key_idx.new_full((b, k, 1), n)], dim=2)
        return AttentionPlan(key_idx, rows, table, m, n)


def plan_global(pos: torch.Tensor, clamp: int | None) -> AttentionPlan:
    """Plan for global attention: one block of all n tokens attending to all n tokens."""
    with torch.no_grad():
        b, n, _ = pos.shape
        key_idx = torch.arange(n, device=pos.device).view(1, 1, n).expand(b, 1, n).contiguous()
        rows, table = _rel_rows(pos, key_idx, pos.reshape(b, 1, n, 2), clamp, None)
        key_idx = torch.cat([key_idx, key_idx.new_full((b, 1, 1), n)], dim=2)
        return AttentionPlan(key_idx, rows, table, n, n)


def plan_attention(
    q: torch.Tensor, kv: torch.Tensor, plan: AttentionPlan, pos_embed: nn.Linear,
    blank_k: torch.Tensor, blank_v: torch.Tensor, num_heads: int, attn_drop: float = 0.0,
    training: bool = False,
) -> torch.Tensor:
    """Cluster attention through an AttentionPlan; same function as `neighbourhood_attention`.

    q (B, n, C) already scaled, kv (B, n, 2C) per head [k_h | v_h]. Returns (B, n, C) before `proj`.
    Works head-major: keys/values (h, B*(n+1), ch) with the blank token as row n of every image.
    """
    b, n, c = q.shape
    h, ch, m = num_heads, c // num_heads, plan.m
    k, L = plan.key_idx.shape[1:]
    kv_h = kv.reshape(b, n, h, 2, ch)

    def table_of(t: torch.Tensor, blank: torch.Tensor) -> torch.Tensor:  # (b, n, h, ch) -> (h, b*(n+1), ch)
        t = torch.cat([t, blank.reshape(1, 1, h, ch).to(t.dtype).expand(b, 1, h, ch)], dim=1)
        return t.permute(2, 0, 1, 3).reshape(h, b * (n + 1), ch).contiguous()  # one copy per block

    keys = table_of(kv_h[:, :, :, 0], blank_k)
    vals = table_of(kv_h[:, :, :, 1], blank_v)
    if k * m > n:
        q = torch.cat([q, q.new_zeros(b, k * m - n, c)], dim=1)
    qh = q.reshape(b, k, m, h, ch).permute(3, 0, 1, 2, 4)  # (h, b, k, m, ch)
    pe = pos_embed(plan.table.to(pos_embed.weight.dtype)).to(q.dtype)  # (T, h)
    special = torch.tensor([0.0, -math.inf], dtype=pe.dtype, device=pe.device).view(2, 1).expand(2, h)
    bias_tab = torch.cat([pe, pe - 100, special]).t().contiguous()  # (h, 2T+2)
    base = (torch.arange(b, device=q.device) * (n + 1)).view(b, 1, 1)
    step = max(1, CHUNK_ELEMENTS // max(b * (2 * L * c + 3 * m * L * h), 1))
    outs = []
    for s in range(0, k, step):
        e = min(k, s + step)
        kc = e - s
        flat = (plan.key_idx[:, s:e] + base).reshape(-1)
        kg = keys.index_select(1, flat).view(h, b, kc, L, ch)
        logits = torch.matmul(qh[:, :, s:e], kg.transpose(-1, -2))  # (h, b, kc, m, L)
        bias = bias_tab.index_select(1, plan.bias_idx[:, s:e].reshape(-1)).view(h, b, kc, m, L)
        attn = (logits + bias).softmax(dim=-1)
        if attn_drop > 0 and training:
            attn = F.dropout(attn, attn_drop, training=True)
        vg = vals.index_select(1, flat).view(h, b, kc, L, ch)
        outs.append(torch.matmul(attn, vg))  # (h, b, kc, m, ch)
    out = torch.cat(outs, dim=2) if len(outs) > 1 else outs[0]
    return out.permute(1, 2, 3, 0, 4).reshape(b, k * m, c)[:, :n]


def neighbourhood_attention(
    q: torch.Tensor,
    kv: torch.Tensor,
    pos: torch.Tensor,
    member_idx: torch.Tensor,
    mask: torch.Tensor | None,
    pos_embed: nn.Linear,
    blank_k: torch.Tensor,
    blank_v: torch.Tensor,
    num_heads: int,
    clamp: int | None,
    attn_drop: float = 0.0,
    training: bool = False,
) -> torch.Tensor:
    """Cluster attention of every token over its neighbourhood.

    q (B, n, C) already scaled; kv (B, n, 2C) laid out per head as [k_h | v_h]; pos (B, n, 2);
    member_idx (B, n, M) token indices; mask (B, n, M) 1 = real, 0 = padding, or None.
    Returns the head outputs concatenated (B, n, C), before the output projection.
    """
    b, n, c = q.shape
    h = num_heads
    ch = c // h
    m = member_idx.shape[2]
    kv_h = kv.reshape(b, n, h, 2, ch)
    bk = blank_k.reshape(h, ch).to(q.dtype)
    bv = blank_v.reshape(h, ch).to(q.dtype)
    step = _chunk_len(n, b * m * 3 * c)
    outs = []
    for s in range(0, n, step):
        e = min(n, s + step)
        idx = member_idx[:, s:e]
        qh = q[:, s:e].reshape(b, e - s, h, ch)
        kvg = _flat_gather(kv_h, idx)  # (b, t, M, h, 2, ch)
        key, val = kvg[..., 0, :], kvg[..., 1, :]
        logits = torch.einsum("bthc,btmhc->bthm", qh, key)
        rel = rel_pos_features(pos[:, s:e, None, :], _flat_gather(pos, idx), clamp, pos_embed.weight.dtype)
        logits = logits + pos_embed(rel).to(logits.dtype).permute(0, 1, 3, 2)
        if mask is not None:
            logits = logits + (1 - mask[:, s:e, None, :].to(logits.dtype)) * (-100)
        blank = (qh * bk).sum(-1, keepdim=True)
        attn = torch.cat([logits, blank], dim=-1).softmax(dim=-1)
        if attn_drop > 0 and training:
            attn = F.dropout(attn, attn_drop, training=True)
        out = torch.einsum("bthm,btmhc->bthc", attn[..., :m], val) + attn[..., m:] * bv
        outs.append(out.reshape(b, e - s, c))
    return torch.cat(outs, dim=1) if len(outs) > 1 else outs[0]


def neighbourhood_merge(
    feat: torch.Tensor,
    pos: torch.Tensor,
    prob: torch.Tensor,
    centre_idx: torch.Tensor,
    member_idx: torch.Tensor,
    mask: torch.Tensor | None,
    weight_net: nn.Module,
    clamp: int | None,
) -> torch.Tensor:
    """Adaptive-downsampling merge at the chosen centres.

    feat (B, n, C), pos (B, n, 2), prob (B, n, 1) importance (NOT detached: gradients reach prob_net),
    centre_idx (B, n') chosen tokens, member_idx/mask (B, n', M) the centres' neighbourhoods.
    Returns (B, n', 4*C): for centre c, sum_j w_cj (outer) f_j flattened weight-channel-major.
    """
    b, n, c = feat.shape
    n_out = centre_idx.shape[1]
    m = member_idx.shape[2]
    step = _chunk_len(n_out, b * m * (c + 8))
    outs = []
    for s in range(0, n_out, step):
        e = min(n_out, s + step)
        cidx = centre_idx[:, s:e]
        nb = member_idx[:, s:e]  # (b, t, M)
        pos_c = pos.gather(1, cidx.unsqueeze(2).expand(-1, -1, 2))
        rel = rel_pos_features(pos_c[:, :, None, :], _flat_gather(pos, nb), clamp, feat.dtype)
        weights = weight_net(rel)  # (b, t, M, 4)
        lp = _flat_gather(prob, nb)  # (b, t, M, 1)
        if mask is not None:
            lp = lp * mask[:, s:e].unsqueeze(3).to(lp.dtype)
        weights = weights * lp
        merged = torch.einsum("btmi,btmc->btic", weights, _flat_gather(feat, nb))
        outs.append(merged.reshape(b, e - s, -1))
    return torch.cat(outs, dim=1) if len(outs) > 1 else outs[0]


def drop_path(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """Stochastic depth per sample: zero a sample's residual with probability p, rescale the rest."""
    if p <= 0.0 or not training:
        return x
    keep = 1.0 - p
    shape = (x.shape[0],) + (1,) * (x.dim() - 1)
    noise = x.new_empty(shape).bernoulli_(keep)
    return x * noise / keep
