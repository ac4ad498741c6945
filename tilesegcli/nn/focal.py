"""Focal Transformer (NeurIPS 2021): focal self-attention backbone + an FPN semantic head.

This module owns the Focal Transformer family in pure PyTorch (CPU and GPU, no custom kernels).
Each block splits the (zero-padded) feature map into ``window_size`` windows; the queries of a
window attend to

* level 0 (fine): the window's own tokens plus the tokens of the surrounding ring of width
  ``expand_size`` (gathered with four rolled copies, as in the official code), with a Swin-style
  relative position table for the window and a learned bias per (query, neighbour) pair;
* levels 1..L-1 (coarse): sub-windows of ``window_size / 2**k`` pooled to one token by a linear
  layer ("fc" pooling) or a mean, of which the ``focal_window + 2**k - 1`` square region around
  the query window is unfolded; out-of-map tokens are masked; a relative bias table per level.

Stages are Swin-like (patch embed 4x4/4, then 2x2/2 conv downsampling), output dense maps
``res2..res5`` (strides 4..32) after per-stage LayerNorms. ``FocalSeg`` adds a light FPN
semantic head. Sizes follow the official configs (microsoft/Focal-Transformer configs/focal_*):
builders ``focal_tiny``, ``focal_small``, ``focal_base`` and ``focal_test`` (tiny, for tests).
``checkpoint_filter_fn`` maps the official classification keys to ours.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from tilesegcli.nn.seaformer import DropPath

_MASK = -100.0  # additive mask of the official code (softmax weight ~ e^-100)


def _partition(x: torch.Tensor, ws: int) -> torch.Tensor:
    """(B, H, W, C) with H, W multiples of ws -> (B*nW, ws*ws, C), windows row-major."""
    b, h, w, c = x.shape
    x = x.view(b, h // ws, ws, w // ws, ws, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, ws * ws, c)


def _unpartition(x: torch.Tensor, ws: int, b: int, h: int, w: int) -> torch.Tensor:
    x = x.view(b, h // ws, w // ws, ws, ws, -1).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(b, h, w, -1)


def _relative_index(q: int, k: int) -> torch.Tensor:
    """Index into a ((q+k-1)^2)-entry table for every (query in q x q, key in k x k) pair."""
    gq = torch.stack(torch.meshgrid(torch.arange(q), torch.arange(q), indexing="ij")).flatten(1)
    gk = torch.stack(torch.meshgrid(torch.arange(k), torch.arange(k), indexing="ij")).flatten(1)
    rel = gq[:, :, None] - gk[:, None, :] + (k - 1)  # 2, q*q, k*k, in [0, q+k-2]
    return rel[0] * (q + k - 1) + rel[1]


class FocalAttention(nn.Module):
    """Window focal self-attention over a padded (B, H, W, C) map plus its pooled levels."""

    def __init__(self, dim: int, num_heads: int, window_size: int, expand_size: int,
                 focal_level: int, focal_window: int, qkv_bias: bool = True) -> None:
        super().__init__()
        ws = window_size
        self.heads, self.ws, self.expand = num_heads, ws, expand_size
        self.focal_level, self.focal_window = focal_level, focal_window
        self.scale = (dim // num_heads) ** -0.5
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.rpb_local = nn.Parameter(torch.zeros((2 * ws - 1) ** 2, num_heads))
        self.register_buffer("index_local", _relative_index(ws, ws), persistent=False)
        nn.init.trunc_normal_(self.rpb_local, std=0.02)
        if expand_size > 0:
            if expand_size >= ws:
                raise ValueError("expand_size must be smaller than window_size")
            masks = torch.ones(4, ws, ws)
            e = expand_size
            masks[0, :-e, :-e] = 0  # top-left roll: drop the part overlapping the window
            masks[1, :-e, e:] = 0
            masks[2, e:, :-e] = 0
            masks[3, e:, e:] = 0
            keep = masks.flatten().nonzero().view(-1)
            self.register_buffer("keep_rolled", keep, persistent=False)
            self.rpb_neighbors = nn.Parameter(torch.zeros(1, num_heads, ws * ws, keep.numel()))
            nn.init.trunc_normal_(self.rpb_neighbors, std=0.02)
        self._plans: dict[tuple, tuple[torch.Tensor, torch.Tensor | None]] = {}
        self.rpb_pooled = nn.ParameterList()
        self.unfold_cfg: list[tuple[int, int]] = []
        for k in range(focal_level - 1):
            region = focal_window + 2**k - 1  # pooled tokens per axis seen by a window
            kernel = 2 * (focal_window // 2) + 2 ** (k + 1) - 1
            self.unfold_cfg.append((kernel, 2**k))
            table = nn.Parameter(torch.zeros(num_heads, (ws + region - 1) ** 2))
            nn.init.trunc_normal_(table, std=0.02)
            self.rpb_pooled.append(table)
            self.register_buffer(f"index_pooled_{k}", _relative_index(ws, region), persistent=False)
            valid = torch.zeros(kernel, kernel)
            valid[2**k - 1:, 2**k - 1:] = 1
            self.register_buffer(f"keep_unfold_{k}", valid.flatten().nonzero().view(-1),
                                 persistent=False)

    def _unfold(self, t: torch.Tensor, k: int) -> torch.Tensor:
        """(B, C, h, w) pooled map -> (B*nW, kept kernel tokens, C) regions around each window."""
        kernel, stride = self.unfold_cfg[k]
        b, c = t.shape[:2]
        u = F.unfold(t, kernel, padding=kernel // 2, stride=stride)  # B, C*kk, nW
        u = u.view(b, c, kernel * kernel, -1).permute(0, 3, 2, 1).reshape(-1, kernel * kernel, c)
        return u[:, getattr(self, f"keep_unfold_{k}")] if k > 0 else u

    def _gather_plan(self, h: int, w: int, sizes: Sequence[tuple[int, int]],
                     device: torch.device) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Token index of every key of every window into [fine map | zero row | pooled maps],
        and the windows' off-map mask (nW, N) (True = ignore) when there are pooled levels.

        Fine keys: the window, then for each official roll (tl, tr, bl, br) its kept positions,
        wrapping at the map edge like ``torch.roll``; pooled keys: the official unfold regions.
        """
        key = (h, w, tuple(sizes), str(device))
        plan = self._plans.get(key)
        if plan is not None:
            return plan
        ws, t = self.ws, self.ws * self.ws
        r = torch.arange(ws, device=device)
        oy, ox = (g.flatten() for g in torch.meshgrid(torch.arange(0, h, ws, device=device),
                                                      torch.arange(0, w, ws, device=device),
                                                      indexing="ij"))
        ly, lx = (g.flatten() for g in torch.meshgrid(r, r, indexing="ij"))
        rows, cols = [oy[:, None] + ly], [ox[:, None] + lx]
        if self.expand > 0:
            e = self.expand
            which, pos = self.keep_rolled // t, self.keep_rolled % t
            shifts = torch.tensor(((-e, -e), (-e, e), (e, -e), (e, e)), device=device)[which]
            rows.append((oy[:, None] + ly[pos] - shifts[:, 0]) % h)
            cols.append((ox[:, None] + lx[pos] - shifts[:, 1]) % w)
        parts = [torch.cat(rows, 1) * w + torch.cat(cols, 1)]
        offset = h * w  # the zero row; pooled map k starts after it
        base = offset + 1
        for lvl, (ph, pw) in enumerate(sizes):
            ids = torch.arange(1, ph * pw + 1, dtype=torch.float64, device=device)
            u = self._unfold(ids.view(1, 1, ph, pw), lvl)[:, :, 0].round().long()  # 0 = off map
            parts.append(torch.where(u > 0, u - 1 + base, offset))
            base += ph * pw
        index = torch.cat(parts, 1)
        plan = (index, index == offset if sizes else None)
        if len(self._plans) >= 16:  # many input sizes (random crops): keep the cache small
            self._plans.clear()
        self._plans[key] = plan
        return plan

    def forward(self, x: torch.Tensor, pooled: Sequence[torch.Tensor]) -> torch.Tensor:
        """x: (B, H, W, C), H and W multiples of the window; pooled[k]: (B, h_k, w_k, C)."""
        b, h, w, c = x.shape
        ws, heads, t = self.ws, self.heads, self.ws * self.ws
        qkv = self.qkv(x)
        q = _partition(qkv[..., :c], ws)  # B*nW, T, C
        # keys/values of the fine map, a zero row (off-map), and the pooled maps, gathered at once
        kv_w = self.qkv.weight[c:]
        kv_b = None if self.qkv.bias is None else self.qkv.bias[c:]
        sources = [qkv[..., c:].reshape(b, h * w, 2 * c), qkv.new_zeros(b, 1, 2 * c)]
        sources += [F.linear(xp, kv_w, kv_b).reshape(b, -1, 2 * c) for xp in pooled]
        index, off_map = self._gather_plan(h, w, [tuple(xp.shape[1:3]) for xp in pooled],
                                           x.device)
        n_win, n_tok = index.shape
        kv = torch.cat(sources, 1)[:, index.view(-1)].view(b * n_win, n_tok, 2 * c)

        bias = [self.rpb_local[self.index_local.view(-1)].view(t, t, -1).permute(2, 0, 1)]
        if self.expand > 0:
            bias.append(self.rpb_neighbors[0])
        for lvl in range(len(pooled)):
            region = self.focal_window + 2**lvl - 1
            idx = getattr(self, f"index_pooled_{lvl}")
            bias.append(self.rpb_pooled[lvl][:, idx.view(-1)].view(-1, t, region * region))
        add = torch.cat(bias, -1).to(q.dtype)  # heads, T, N
        if off_map is not None:
            add = add.unsqueeze(0) + (off_map.to(q.dtype) * _MASK)[:, None, None, :]
            if b > 1:
                add = add.unsqueeze(0).expand(b, -1, -1, -1, -1).reshape(b * n_win, heads, t, -1)

        def split(z: torch.Tensor) -> torch.Tensor:  # (B*nW, n, C) -> (B*nW, heads, n, hd)
            return z.reshape(z.shape[0], z.shape[1], heads, c // heads).transpose(1, 2)

        k_all, v_all = kv.split(c, dim=-1)
        out = F.scaled_dot_product_attention(split(q), split(k_all), split(v_all),
                                             attn_mask=add, scale=self.scale)
        out = out.transpose(1, 2).reshape(b * n_win, t, c)
        return _unpartition(self.proj(out), ws, b, h, w)


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1, self.act, self.fc2 = nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


def _centre(delta: int) -> tuple[int, int]:
    """Pad (delta > 0) or crop (delta < 0) amounts before/after; the extra one goes after."""
    if delta >= 0:
        return delta // 2, delta - delta // 2
    return -((-delta) // 2), -((-delta) - (-delta) // 2)


class FocalBlock(nn.Module):
    def __init__(self, dim: int, num_heads: int, window_size: int = 7, expand_size: int = 3,
                 focal_level: int = 2, focal_window: int = 7, pool: str = "fc",
                 mlp_ratio: float = 4.0, drop_path: float = 0.0) -> None:
        super().__init__()
        if pool not in ("fc", "mean"):
            raise ValueError(f"pool must be 'fc' or 'mean', not {pool!r}")
        self.ws, self.focal_level, self.pool_method = window_size, focal_level, pool
        self.pool = nn.ModuleList()
        if pool == "fc":
            for k in range(focal_level - 1):
                sub = window_size // 2**k
                layer = nn.Linear(sub * sub, 1)
                nn.init.constant_(layer.weight, 1.0 / (sub * sub))
                nn.init.zeros_(layer.bias)
                self.pool.append(layer)
        self.norm1 = nn.LayerNorm(dim)
        self.attn = FocalAttention(dim, num_heads, window_size, expand_size, focal_level,
                                   focal_window)
        self.drop_path = DropPath(drop_path)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def _pooled(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Sub-window pooling of the padded map, one (B, h_k, w_k, C) map per coarse level."""
        b, h, w, c = x.shape
        out = []
        for k in range(self.focal_level - 1):
            sub = self.ws // 2**k
            th, tw = (h // self.ws) * 2**k * sub, (w // self.ws) * 2**k * sub
            xk = x
            # centre-crop or centre-pad to a whole number of sub-windows (official behaviour)
            if th != h or tw != w:
                (t, bot), (left, right) = _centre(th - h), _centre(tw - w)
                xk = F.pad(xk.permute(0, 3, 1, 2), (left, right, t, bot)).permute(0, 2, 3, 1)
            nh, nw = th // sub, tw // sub
            win = xk.reshape(b, nh, sub, nw, sub, c).permute(0, 1, 3, 5, 2, 4)
            win = win.reshape(b, nh, nw, c, sub * sub)
            pooled = self.pool[k](win).squeeze(-1) if self.pool_method == "fc" else win.mean(-1)
            out.append(pooled)
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, H, W, C)
        _, h, w, _ = x.shape
        y = self.norm1(x)
        ph, pw = (-h) % self.ws, (-w) % self.ws
        if ph or pw:
            y = F.pad(y, (0, 0, 0, pw, 0, ph))
        y = self.attn(y, self._pooled(y))[:, :h, :w]
        x = x + self.drop_path(y)
        return x + self.drop_path(self.mlp(self.norm2(x)))


class PatchEmbed(nn.Module):
    """patch x patch conv (stride patch) + LayerNorm; pads H, W up to multiples of the patch.

    ``overlap`` uses the official "conv embedding" instead: 7x7 (stem, padding 2) or 3x3
    (downsampling, padding 1) kernels with the same stride, hence the same output size.
    """

    def __init__(self, cin: int, dim: int, patch: int, overlap: bool = False) -> None:
        super().__init__()
        self.patch = patch
        if overlap:
            k, pad = (7, 2) if patch == 4 else (3, 1)
            self.proj = nn.Conv2d(cin, dim, k, patch, pad)
        else:
            self.proj = nn.Conv2d(cin, dim, patch, patch)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, H, W) -> (B, H', W', D)
        ph, pw = (-x.shape[-2]) % self.patch, (-x.shape[-1]) % self.patch
        if ph or pw:
            x = F.pad(x, (0, pw, 0, ph))
        return self.norm(self.proj(x).permute(0, 2, 3, 1))


class FocalStage(nn.Module):
    def __init__(self, dim: int, depth: int, downsample: bool, drop_path: Sequence[float],
                 conv_embed: bool = False, **block_kw: object) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(FocalBlock(dim, drop_path=drop_path[i], **block_kw)
                                    for i in range(depth))
        self.downsample = PatchEmbed(dim, 2 * dim, 2, conv_embed) if downsample else None


class FocalBackbone(nn.Module):
    """Images (B,3,H,W) -> {"res2".."res5": (B, C_i, ceil(H/s), ceil(W/s))}, s = 4, 8, 16, 32."""

    def __init__(self, embed_dim: int = 96, depths: Sequence[int] = (2, 2, 6, 2),
                 num_heads: Sequence[int] = (3, 6, 12, 24), window_size: int = 7,
                 mlp_ratio: float = 4.0, focal_levels: Sequence[int] = (2, 2, 2, 2),
                 focal_windows: Sequence[int] = (7, 5, 3, 1),
                 expand_sizes: Sequence[int] = (3, 3, 3, 3), pool: str = "fc",
                 drop_path_rate: float = 0.2, conv_embed: bool = False) -> None:
        super().__init__()
        n = len(depths)
        self.patch_embed = PatchEmbed(3, embed_dim, 4, conv_embed)
        dpr = torch.linspace(0, drop_path_rate, sum(depths)).tolist()
        self.dims = [embed_dim * 2**i for i in range(n)]
        self.layers = nn.ModuleList()
        for i in range(n):
            self.layers.append(FocalStage(
                self.dims[i], depths[i], i < n - 1, dpr[sum(depths[:i]):sum(depths[:i + 1])],
                num_heads=num_heads[i], window_size=window_size, expand_size=expand_sizes[i],
                focal_level=focal_levels[i], focal_window=focal_windows[i], pool=pool,
                mlp_ratio=mlp_ratio, conv_embed=conv_embed))
        self.out_norms = nn.ModuleList(nn.LayerNorm(d) for d in self.dims)
        self.names = [f"res{i + 2}" for i in range(n)]
        self.strides = [4 * 2**i for i in range(n)]

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        y = self.patch_embed(x)
        feats: dict[str, torch.Tensor] = {}
        for i, stage in enumerate(self.layers):
            for blk in stage.blocks:
                y = blk(y)
            feats[self.names[i]] = self.out_norms[i](y).permute(0, 3, 1, 2).contiguous()
            if stage.downsample is not None:
                y = stage.downsample(y.permute(0, 3, 1, 2))
        return feats


def _norm(ch: int) -> nn.GroupNorm:
    return nn.GroupNorm(math.gcd(32, max(ch // 2, 1)), ch)  # >= 2 channels per group


class FPNSemanticHead(nn.Module):
    """FPN (lateral 1x1 + top-down sum + 3x3) -> each level upsampled to stride 4, summed, 1x1."""

    def __init__(self, in_channels: Sequence[int], dim: int, num_classes: int,
                 dropout: float = 0.1) -> None:
        super().__init__()
        self.lateral = nn.ModuleList(nn.Conv2d(c, dim, 1) for c in in_channels)
        self.smooth = nn.ModuleList(
            nn.Sequential(nn.Conv2d(dim, dim, 3, padding=1, bias=False), _norm(dim), nn.ReLU())
            for _ in in_channels)
        self.fuse = nn.Sequential(nn.Conv2d(dim, dim, 3, padding=1, bias=False), _norm(dim),
                                  nn.ReLU())
        self.dropout = nn.Dropout2d(dropout)
        self.classifier = nn.Conv2d(dim, num_classes, 1)

    def forward(self, feats: Sequence[torch.Tensor]) -> torch.Tensor:
        lat = [conv(f) for conv, f in zip(self.lateral, feats, strict=True)]
        for i in range(len(lat) - 2, -1, -1):
            lat[i] = lat[i] + F.interpolate(lat[i + 1], size=lat[i].shape[-2:], mode="nearest")
        size = lat[0].shape[-2:]
        out = sum(F.interpolate(s(t), size=size, mode="bilinear", align_corners=False)
                  if i else s(t) for i, (s, t) in enumerate(zip(self.smooth, lat, strict=True)))
        return self.classifier(self.dropout(self.fuse(out)))


class FocalSeg(nn.Module):
    """Focal backbone + FPN head: (B,3,H,W) -> logits (B,K,ceil(H/4),ceil(W/4)) or (B,K,H,W)."""

    def __init__(self, backbone: FocalBackbone, num_classes: int, head_dim: int = 256,
                 dropout: float = 0.1) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = FPNSemanticHead(backbone.dims, head_dim, num_classes, dropout)
        self.num_classes = num_classes
        self.output_stride = 4

    def forward(self, x: torch.Tensor, upsample: bool = False) -> torch.Tensor:
        feats = self.backbone(x)
        logits = self.head([feats[n] for n in self.backbone.names])
        if upsample:
            h, w = logits.shape[-2:]
            # the stride-4 grid covers the bottom/right padded input: resize to it, then crop
            logits = F.interpolate(logits, size=(4 * h, 4 * w), mode="bilinear",
                                   align_corners=False)[..., : x.shape[-2], : x.shape[-1]]
        return logits


# --------------------------------------------------------------------------- official weights

_BUFFERS = re.compile(r"(relative_position_index|valid_ind_rolled|valid_ind_unfold|attn_mask)")
_RULES: list[tuple[str, str]] = [
    (r"\.attn\.relative_position_bias_table_to_neighbors$", ".attn.rpb_neighbors"),
    (r"\.attn\.relative_position_bias_table_to_windows\.", ".attn.rpb_pooled."),
    (r"\.attn\.relative_position_bias_table$", ".attn.rpb_local"),
    (r"\.pool_layers\.", ".pool."),
    (r"^norm\.", "out_norms.3."),
    (r"^norm(\d)\.", "out_norms.{0}."),
]


def checkpoint_filter_fn(state_dict: dict[str, torch.Tensor],
                         model: nn.Module | None = None) -> dict[str, torch.Tensor]:
    """Map official Focal Transformer keys (``layers.0.blocks.0.attn.qkv.weight``, ``norm.*``,
    ``backbone.*`` of the detection/segmentation checkpoints) to ``FocalBackbone`` keys.

    Index buffers and the ImageNet ``head`` are dropped. With ``model`` (a ``FocalBackbone`` or
    ``FocalSeg``), keys are prefixed to fit it, unknown keys dropped, shape mismatches raise.
    """
    for wrapper in ("model", "state_dict"):
        if wrapper in state_dict and isinstance(state_dict[wrapper], dict):
            state_dict = state_dict[wrapper]
    out: dict[str, torch.Tensor] = {}
    for key, v in state_dict.items():
        k = key[len("backbone."):] if key.startswith("backbone.") else key
        if _BUFFERS.search(k) or k.startswith("head."):
            continue
        for pat, repl in _RULES:
            m = re.search(pat, k)
            if m:
                k = k[: m.start()] + repl.format(*m.groups()) + k[m.end():]
        out[k] = v
    if model is not None:
        prefix = "backbone." if isinstance(model, FocalSeg) else ""
        ours = model.state_dict()
        out = {prefix + k: v for k, v in out.items() if prefix + k in ours}
        for k, v in out.items():
            if ours[k].shape != v.shape:
                raise ValueError(f"{k}: checkpoint shape {tuple(v.shape)} != {tuple(ours[k].shape)}")
    return out


# --------------------------------------------------------------------------- sizes

FOCAL_CONFIGS: dict[str, dict[str, object]] = {
    "tiny": dict(embed_dim=96, depths=(2, 2, 6, 2), num_heads=(3, 6, 12, 24)),
    "small": dict(embed_dim=96, depths=(2, 2, 18, 2), num_heads=(3, 6, 12, 24),
                  drop_path_rate=0.3),
    "base": dict(embed_dim=128, depths=(2, 2, 18, 2), num_heads=(4, 8, 16, 32),
                 drop_path_rate=0.5),
    # not a published size: 4 stages of one block, window 4, for fast tests
    "test": dict(embed_dim=8, depths=(1, 1, 1, 1), num_heads=(1, 2, 2, 4), window_size=4,
                 focal_windows=(3, 3, 3, 1), expand_sizes=(1, 1, 1, 1), drop_path_rate=0.0),
}


def build_focal_backbone(size: str = "tiny", **overrides: object) -> FocalBackbone:
    if size not in FOCAL_CONFIGS:
        raise ValueError(f"unknown Focal size {size!r}; choose from {sorted(FOCAL_CONFIGS)}")
    return FocalBackbone(**{**FOCAL_CONFIGS[size], **overrides})  # type: ignore[arg-type]


def build_focal(size: str = "tiny", num_classes: int = 150, *, head_dim: int | None = None,
                dropout: float = 0.1, **overrides: object) -> FocalSeg:
    """Focal Transformer + FPN semantic head of a named size (tiny/small/base/test)."""
    dim = head_dim if head_dim is not None else (16 if size == "test" else 256)
    return FocalSeg(build_focal_backbone(size, **overrides), num_classes, dim, dropout)


def focal_tiny(num_classes: int = 150, **kw: object) -> FocalSeg:
    return build_focal("tiny", num_classes, **kw)  # type: ignore[arg-type]


def focal_small(num_classes: int = 150, **kw: object) -> FocalSeg:
    return build_focal("small", num_classes, **kw)  # type: ignore[arg-type]


def focal_base(num_classes: int = 150, **kw: object) -> FocalSeg:
    return build_focal("base", num_classes, **kw)  # type: ignore[arg-type]


def focal_test(num_classes: int = 3, **kw: object) -> FocalSeg:
    return build_focal("test", num_classes, **kw)  # type: ignore[arg-type]


MODEL_BUILDERS: dict[str, Callable[..., FocalSeg]] = {
    "focal_tiny": focal_tiny,
    "focal_small": focal_small,
    "focal_base": focal_base,
    "focal_test": focal_test,
}
