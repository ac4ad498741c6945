"""Gather-based tensor ops of the AutoFocusFormer (the official `clusten` CUDA kernels, in plain torch).

This module owns the numerics that touch neighbourhoods:

* `rel_pos_features`: the 5 relative-position features (dx, dy, r, dy/r, dx/r) of gathered pairs,
  computed on the fly instead of pushing a (2W+1)^2 table through a Linear in every block; with the
  SEG clamp of each offset to [-W, W] the values equal the official table rows.
* `neighbourhood_attention`: CLUSTENQK + position bias + padding bias (-100) + blank token + softmax +
  CLUSTENAV, processed in chunks of query tokens so the gathered keys/values never exceed a fixed
  element budget (peak memory bounded at any input size).
* `neighbourhood_merge`: CLUSTENWF of the adaptive downsampling (weight_net on the relative features,
  times importance and mask, summed against gathered features), chunked the same way.
* `drop_path`: per-sample stochastic depth (timm semantics).

All functions are differentiable, device-agnostic and keep no state.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

# Elements of gathered neighbour tensors materialised at once (about 64 MB in fp32).
CHUNK_ELEMENTS = 1 << 24


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
    r = torch.sqrt(dy * dy + dx * dx)
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
    centre_idx (B, n') chosen tokens, member_idx/mask (B, n, M) neighbourhoods of every token.
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
        nb = member_idx.gather(1, cidx.unsqueeze(2).expand(-1, -1, m))  # (b, t, M)
        pos_c = pos.gather(1, cidx.unsqueeze(2).expand(-1, -1, 2))
        rel = rel_pos_features(pos_c[:, :, None, :], _flat_gather(pos, nb), clamp, feat.dtype)
        weights = weight_net(rel)  # (b, t, M, 4)
        lp = _flat_gather(prob, nb)  # (b, t, M, 1)
        if mask is not None:
            lp = lp * mask.gather(1, cidx.unsqueeze(2).expand(-1, -1, m)).unsqueeze(3).to(lp.dtype)
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
