"""AutoFocusFormer (AFF) backbone in pure PyTorch, numerically equal to the official code.

Owns the network modules (stem, cluster-attention blocks, adaptive downsampling, the CLS and SEG
variants), the registry of official configurations with `build_aff`, and loading of official
checkpoints (`checkpoint_filter_fn`, `load_official_backbone`). Module and parameter names follow the
official code so checkpoints load unchanged. The discrete decisions (clustering, nearest clusters,
downsampling centres) live in `clustering.py`; the neighbourhood tensor ops in `aff_ops.py`.

Semantics: those of the official AutoFocusFormer code (its golden fixtures are the tests in
tests/nn/test_aff_fixture.py). Deviations
from the official code, all where the official code is undefined or broken: ties follow the fixture
rules (stable sorts, lower index), nothing is cached between calls, offsets beyond the CLS table are
computed exactly instead of wrapping around, and a stage that attends globally can still downsample.

    >>> model = build_aff("aff_mini", variant="seg").eval()
    >>> out = model(images)              # BackboneOutput: levels res2..res5, canvas_hw
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from tilesegcli.errors import WeightsError
from tilesegcli.nn.aff_ops import (
    AttentionPlan,
    drop_path,
    neighbourhood_merge,
    plan_attention,
    plan_clusters,
    plan_global,
)
from tilesegcli.nn.clustering import choose_centres, nearest_clusters, space_filling_cluster
from tilesegcli.nn.types import BackboneOutput, PointLevel, stage_channels

SEG_REL_POS_WIDTH = 2048 // 4 - 1  # 511: the SEG table's half-width; offsets are clamped to it


@dataclass
class Neighbourhood:
    """A stage's neighbourhoods: each token's nnc nearest clusters (B, n, nnc), or None for global
    attention, and the cluster-blocked attention plan shared by every block of the stage."""

    nearest: torch.Tensor | None
    cluster_size: int
    plan: AttentionPlan

    def members(self, idx: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Neighbour token indices (B, t, M) of tokens `idx` (B, t) and their padding mask (1 real,
        0 padding; None if nothing is padded). Padding slots point at token 0, as the official."""
        b, t = idx.shape
        if self.nearest is None:
            return torch.arange(n, device=idx.device).view(1, 1, n).expand(b, t, n), None
        m = self.cluster_size
        near = self.nearest.gather(1, idx.unsqueeze(2).expand(-1, -1, self.nearest.shape[2]))
        slots = (near.unsqueeze(3) * m + torch.arange(m, device=idx.device)).reshape(b, t, -1)
        if n % m == 0:
            return slots, None
        return torch.where(slots < n, slots, 0), (slots < n).float()


class PatchEmbed(nn.Module):
    """Two stride-2 3x3 convs (BN + GELU between), flatten in raster order, LayerNorm."""

    def __init__(self, in_chans: int = 3, embed_dim: int = 32, pad_to: int = 1) -> None:
        super().__init__()
        self.pad_to = pad_to
        self.proj1 = nn.Conv2d(in_chans, embed_dim // 2, kernel_size=3, stride=2, padding=1)
        self.bn = nn.BatchNorm2d(embed_dim // 2)
        self.act1 = nn.GELU()
        self.proj2 = nn.Conv2d(embed_dim // 2, embed_dim, kernel_size=3, stride=2, padding=1)
        self.norm = nn.LayerNorm(embed_dim)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int, int]:
        if self.pad_to > 1:  # SEG: zero-pad bottom/right to a multiple of 4
            ph, pw = (-x.shape[2]) % self.pad_to, (-x.shape[3]) % self.pad_to
            if ph or pw:
                x = F.pad(x, (0, pw, 0, ph))
        x = self.proj2(self.act1(self.bn(self.proj1(x))))
        b, _, h, w = x.shape
        x = self.norm(x.flatten(2).transpose(1, 2))
        ys, xs = torch.meshgrid(
            torch.arange(h, device=x.device), torch.arange(w, device=x.device), indexing="ij"
        )
        # Positions stay float32 whatever the feature dtype (fp16/bf16 cannot hold large integers).
        pos = torch.stack([xs, ys], dim=2).reshape(1, h * w, 2).expand(b, -1, -1).float()
        return pos, x, h, w


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int, drop: float = 0.0) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)
        self.drop = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))


class ClusterAttention(nn.Module):
    """Attention over each token's neighbourhood with a relative-position bias and a blank token."""

    def __init__(self, dim: int, num_heads: int, attn_drop: float = 0.0, proj_drop: float = 0.0,
                 rel_pos_clamp: int | None = None) -> None:
        super().__init__()
        self.dim, self.num_heads = dim, num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.rel_pos_clamp = rel_pos_clamp
        self.attn_drop = attn_drop
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.blank_k = nn.Parameter(torch.randn(dim))
        self.blank_v = nn.Parameter(torch.randn(dim))
        self.pos_embed = nn.Linear(5, num_heads)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: torch.Tensor, pos: torch.Tensor, nbhd: Neighbourhood) -> torch.Tensor:
        q = self.q(x) * self.scale
        out = plan_attention(q, self.kv(x), nbhd.plan, self.pos_embed, self.blank_k, self.blank_v,
                             self.num_heads, self.attn_drop, self.training)
        return self.proj_drop(self.proj(out))


class ClusterTransformerBlock(nn.Module):
    """Pre-norm block: x + DP(g1 * Attn(LN x)); x + DP(g2 * MLP(LN x)); g only with layer scale."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, drop: float = 0.0,
                 attn_drop: float = 0.0, drop_path: float = 0.0, layer_scale: float = 0.0,
                 rel_pos_clamp: int | None = None) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = ClusterAttention(dim, num_heads, attn_drop, drop, rel_pos_clamp)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop)
        self.drop_path = drop_path
        self.layer_scale = layer_scale > 0
        if self.layer_scale:
            self.gamma1 = nn.Parameter(layer_scale * torch.ones(dim))
            self.gamma2 = nn.Parameter(layer_scale * torch.ones(dim))

    def zero_residual(self) -> None:
        """Make the block the identity (both residual branches output 0) while every weight still
        gets a gradient: how a block added to a trained network (a deeper copy) starts."""
        for lin in (self.attn.proj, self.mlp.fc2):
            nn.init.zeros_(lin.weight)
            nn.init.zeros_(lin.bias)

    def forward(self, x: torch.Tensor, pos: torch.Tensor, nbhd: Neighbourhood) -> torch.Tensor:
        a = self.attn(self.norm1(x), pos, nbhd)
        if self.layer_scale:
            a = self.gamma1 * a
        x = x + drop_path(a, self.drop_path, self.training)
        f = self.mlp(self.norm2(x))
        if self.layer_scale:
            f = self.gamma2 * f
        return x + drop_path(f, self.drop_path, self.training)


class ClusterMerging(nn.Module):
    """Adaptive downsampling: choose centres, merge each centre's neighbourhood into one token."""

    def __init__(self, dim: int, out_dim: int, alpha: float = 4.0, ds_rate: float = 0.25,
                 reserve_on: bool = True, rel_pos_clamp: int | None = None) -> None:
        super().__init__()
        self.alpha, self.ds_rate, self.reserve_on = alpha, ds_rate, reserve_on
        self.rel_pos_clamp = rel_pos_clamp
        self.weight_net = nn.Sequential(nn.Linear(5, 4), nn.LayerNorm(4), nn.GELU())
        self.norm = nn.LayerNorm(4 * dim)
        self.linear = nn.Linear(4 * dim, out_dim)

    def forward(self, pos: torch.Tensor, feat: torch.Tensor, nbhd: Neighbourhood,
                prob: torch.Tensor, stride: int, h: int, w: int) -> tuple[torch.Tensor, torch.Tensor]:
        n = feat.shape[1]
        keep = int(n * self.ds_rate)
        reserve_num = math.ceil(h / (2 * stride)) * math.ceil(w / (2 * stride))
        idx = choose_centres(pos, prob, stride=stride, keep=keep, alpha=self.alpha,
                             reserve_on=self.reserve_on, reserve_num=reserve_num)
        member_idx, mask = nbhd.members(idx, n)
        merged = neighbourhood_merge(feat, pos, prob, idx, member_idx, mask, self.weight_net,
                                     self.rel_pos_clamp)
        new_pos = pos.gather(1, idx.unsqueeze(2).expand(-1, -1, 2))
        return new_pos, self.linear(self.norm(merged))


class BasicLayer(nn.Module):
    """One stage: cluster (or global), blocks sharing one neighbourhood, optional downsampling."""

    def __init__(self, dim: int, out_dim: int | None, cluster_size: int, nbhd_size: int, depth: int,
                 num_heads: int, mlp_ratio: float, alpha: float, ds_rate: float, reserve_on: bool,
                 drop: float, attn_drop: float, drop_path: list[float], layer_scale: float,
                 rel_pos_clamp: int | None) -> None:
        super().__init__()
        self.cluster_size, self.nbhd_size = cluster_size, nbhd_size
        self.rel_pos_clamp = rel_pos_clamp
        self.batch_independent = False
        self.blocks = nn.ModuleList([
            ClusterTransformerBlock(dim, num_heads, mlp_ratio, drop, attn_drop, drop_path[i],
                                    layer_scale, rel_pos_clamp)
            for i in range(depth)
        ])
        self.downsample = None
        if out_dim is not None:
            self.downsample = ClusterMerging(dim, out_dim, alpha, ds_rate, reserve_on, rel_pos_clamp)
            self.prob_net = nn.Linear(dim, 1)

    def neighbourhood(self, pos: torch.Tensor, feat: torch.Tensor, h: int, w: int
                      ) -> tuple[torch.Tensor, torch.Tensor, Neighbourhood]:
        """Reorder tokens by the balanced clustering and build neighbourhoods (or global attention)."""
        b, n, _ = pos.shape
        m = self.cluster_size
        if self.nbhd_size >= n:
            return pos, feat, Neighbourhood(None, m, plan_global(pos, self.rel_pos_clamp))
        k = math.ceil(n / m)
        nnc = min(int(round(self.nbhd_size / m)), k)
        if k == n:  # one token per cluster: no reordering, clusters are the tokens
            mean, mask, cm = pos, None, 1
        else:
            order, mean, mask = space_filling_cluster(pos, m, h, w, self.batch_independent)
            pos = pos.gather(1, order.unsqueeze(2).expand(-1, -1, 2))
            feat = feat.gather(1, order.unsqueeze(2).expand(-1, -1, feat.shape[2]))
            cm = m
        nearest = nearest_clusters(pos, mean, cm, nnc)
        plan = plan_clusters(pos, nearest, cm, self.rel_pos_clamp)
        return pos, feat, Neighbourhood(nearest, cm, plan)

    def forward(self, pos: torch.Tensor, feat: torch.Tensor, h: int, w: int, stride: int
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Returns (pos, feat) after the blocks (stage order) and (pos, feat) after downsampling."""
        pos, feat, nbhd = self.neighbourhood(pos, feat, h, w)
        for blk in self.blocks:
            feat = blk(feat, pos, nbhd)
        if self.downsample is None:
            return pos, feat, pos, feat
        prob = self.prob_net(feat).sigmoid()
        pos_down, feat_down = self.downsample(pos, feat, nbhd, prob, stride, h, w)
        return pos, feat, pos_down, feat_down


class AutoFocusFormer(nn.Module):
    """AFF backbone. variant "cls": forward -> logits (B, num_classes); variant "seg": forward ->
    BackboneOutput (res2..res5 after norm0..3, before downsampling, official token order)."""

    def __init__(self, *, variant: str = "seg", in_chans: int = 3, num_classes: int = 1000,
                 embed_dim: tuple[int, ...] = (32, 128, 256, 384), depths: tuple[int, ...] = (2, 2, 6, 2),
                 num_heads: tuple[int, ...] = (2, 4, 8, 16), mlp_ratio: float = 2.0,
                 cluster_size: int = 8, nbhd_size: tuple[int, ...] = (48, 48, 48, 48),
                 alpha: float = 4.0, ds_rate: float = 0.25, reserve_on: bool = True,
                 drop_rate: float = 0.0, attn_drop_rate: float = 0.0, drop_path_rate: float = 0.0,
                 layer_scale: float = 0.0, rel_pos_clamp: int | None = -1) -> None:
        super().__init__()
        if variant not in ("cls", "seg"):
            raise ValueError(f"variant must be 'cls' or 'seg', got {variant!r}")
        self.variant = variant
        if rel_pos_clamp == -1:  # default: SEG clamps to its fixed 1023x1023 table, CLS does not
            rel_pos_clamp = SEG_REL_POS_WIDTH if variant == "seg" else None
        self.embed_dim = tuple(embed_dim)
        self.num_layers = len(depths)
        self.patch_embed = PatchEmbed(in_chans, embed_dim[0], pad_to=4 if variant == "seg" else 1)
        self.pos_drop = nn.Dropout(drop_rate)
        dpr = [float(v) for v in torch.linspace(0, drop_path_rate, sum(depths))]
        self.layers = nn.ModuleList()
        for i in range(self.num_layers):
            last = i == self.num_layers - 1
            self.layers.append(BasicLayer(
                embed_dim[i], None if last else embed_dim[i + 1], cluster_size, nbhd_size[i],
                depths[i], num_heads[i], mlp_ratio, alpha, ds_rate, reserve_on, drop_rate,
                attn_drop_rate, dpr[sum(depths[:i]):sum(depths[: i + 1])], layer_scale, rel_pos_clamp,
            ))
        if variant == "cls":
            self.norm = nn.LayerNorm(embed_dim[-1])
            self.head = nn.Linear(embed_dim[-1], num_classes) if num_classes > 0 else nn.Identity()
        else:
            for i in range(self.num_layers):
                self.add_module(f"norm{i}", nn.LayerNorm(embed_dim[i]))

    def set_batch_independent(self, on: bool = True) -> None:
        """Official clustering keys use the largest ratio over the whole batch, so an image's
        tokens can depend on its batch mates; `on` makes every image independent (identical to
        official for a batch of one)."""
        for layer in self.layers:
            layer.batch_independent = on

    @property
    def out_channels(self) -> dict[str, int]:
        """Channels of the SEG levels: {"res2": C0, ..., "res5": C3}."""
        return stage_channels(self.embed_dim)

    def forward_intermediates(self, x: torch.Tensor) -> dict[str, Any]:
        """Every stage's tokens: "stages" (after blocks, before downsampling and before any norm),
        "merged" (downsampling outputs; positions = next stage's input), "patch_embed", "canvas_hw"."""
        pos, feat, h, w = self.patch_embed(x)
        out: dict[str, Any] = {"patch_embed": PointLevel(feat, pos), "canvas_hw": (h, w),
                               "stages": [], "merged": []}
        feat = self.pos_drop(feat)
        for i, layer in enumerate(self.layers):
            pos_out, feat_out, pos, feat = layer(pos, feat, h, w, stride=2 ** (i + 1))
            out["stages"].append(PointLevel(feat_out, pos_out))
            if layer.downsample is not None:
                out["merged"].append(PointLevel(feat, pos))
        return out

    def forward_pooled(self, x: torch.Tensor) -> torch.Tensor:
        """CLS: final LayerNorm then mean over tokens (B, C_last), the input of the head."""
        last = self.forward_intermediates(x)["stages"][-1]
        return self.norm(last.feat).mean(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor | BackboneOutput:
        if x.dim() != 4:
            raise ValueError(f"AFF expects (B, C, H, W) images, got shape {tuple(x.shape)}")
        if self.variant == "cls":
            return self.head(self.forward_pooled(x))
        inter = self.forward_intermediates(x)
        levels = {
            f"res{i + 2}": PointLevel(getattr(self, f"norm{i}")(lvl.feat), lvl.pos)
            for i, lvl in enumerate(inter["stages"])
        }
        return BackboneOutput(levels=levels, canvas_hw=inter["canvas_hw"])


# --- configurations --------------------------------------------------------------------------------

_MINI = dict(embed_dim=(32, 128, 256, 384), depths=(2, 2, 6, 2), num_heads=(2, 4, 8, 16),
             mlp_ratio=2.0, layer_scale=0.0, drop_path_cls=0.0, drop_path_seg=0.0)
_TINY = dict(embed_dim=(64, 128, 256, 512), depths=(3, 4, 18, 5), num_heads=(2, 4, 8, 16),
             mlp_ratio=3.0, layer_scale=0.0, drop_path_cls=0.2, drop_path_seg=0.3)
_SMALL = dict(embed_dim=(96, 192, 384, 768), depths=(3, 4, 18, 2), num_heads=(3, 6, 12, 24),
              mlp_ratio=3.0, layer_scale=1e-5, drop_path_cls=0.3, drop_path_seg=0.3)
_BASE = dict(embed_dim=(128, 256, 512, 1024), depths=(3, 4, 18, 2), num_heads=(4, 8, 16, 32),
             mlp_ratio=3.0, layer_scale=1e-5, drop_path_cls=0.2, drop_path_seg=0.3)
_LOCAL8 = dict(cluster_size=8, nbhd_cls=(48, 48, 48, 49), nbhd_seg=(48, 48, 48, 48), alpha=4.0,
               num_classes=1000, img_size=224)

# Official configurations (CLS repo configs/*.yaml; SEG repo configs/*/aff/*.yaml for nbhd_seg and
# drop_path_seg). SEG alpha is 4 for ADE20K/COCO and 8 for Cityscapes: pass alpha= to build_aff.
AFF_CONFIGS: dict[str, dict[str, Any]] = {
    "aff_mini": {**_MINI, **_LOCAL8, "ds_rate": 0.25},
    "aff_mini_1_5th": {**_MINI, **_LOCAL8, "ds_rate": 0.2},
    "aff_tiny": {**_TINY, **_LOCAL8, "ds_rate": 0.25},
    "aff_tiny_1_5th": {**_TINY, **_LOCAL8, "ds_rate": 0.2},
    "aff_small": {**_SMALL, **_LOCAL8, "ds_rate": 0.25},
    "aff_small_1_5th": {**_SMALL, **_LOCAL8, "ds_rate": 0.2},
    "aff_base_22k": {**_BASE, **_LOCAL8, "ds_rate": 0.25, "num_classes": 21841},
    "aff_base_22kto1k": {**_BASE, **_LOCAL8, "ds_rate": 0.25},
    "aff_base_22kto1k_384": {**_BASE, **_LOCAL8, "ds_rate": 0.25, "cluster_size": 24,
                             "nbhd_cls": (144,) * 4, "nbhd_seg": (144,) * 4, "img_size": 384},
    # The tiny model of the official golden fixtures (their config.json "cls" / "seg").
    "aff_fixture": dict(embed_dim=(16, 32, 48, 64), depths=(1, 1, 2, 1), num_heads=(1, 2, 3, 4),
                        mlp_ratio=2.0, layer_scale=0.0, drop_path_cls=0.0, drop_path_seg=0.0,
                        cluster_size=8, nbhd_cls=(48, 48, 48, 49), nbhd_seg=(48, 48, 48, 48),
                        alpha=4.0, ds_rate=0.25, num_classes=10, img_size=224),
}


def aff_out_channels(name: str) -> dict[str, int]:
    """Channels of the SEG levels of a registered configuration, without building it."""
    if name not in AFF_CONFIGS:
        raise KeyError(f"unknown AFF configuration {name!r}; known: {sorted(AFF_CONFIGS)}")
    return stage_channels(AFF_CONFIGS[name]["embed_dim"])


def build_aff(name: str, *, variant: str = "seg", num_classes: int | None = None,
              drop_path_rate: float | None = None, alpha: float | None = None,
              **overrides: Any) -> AutoFocusFormer:
    """Build a registered AFF configuration (randomly initialised; load weights separately).

    num_classes (CLS head) defaults to the configuration's (1000; 21841 for aff_base_22k; 10 for
    aff_fixture). drop_path_rate defaults to the official value of the variant; alpha to 4.0.
    `overrides` are AutoFocusFormer keyword arguments (e.g. nbhd_size, ds_rate, rel_pos_clamp).
    """
    if name not in AFF_CONFIGS:
        raise KeyError(f"unknown AFF configuration {name!r}; known: {sorted(AFF_CONFIGS)}")
    cfg = AFF_CONFIGS[name]
    kwargs: dict[str, Any] = dict(
        variant=variant,
        num_classes=cfg["num_classes"] if num_classes is None else num_classes,
        embed_dim=cfg["embed_dim"], depths=cfg["depths"], num_heads=cfg["num_heads"],
        mlp_ratio=cfg["mlp_ratio"], cluster_size=cfg["cluster_size"],
        nbhd_size=cfg["nbhd_seg"] if variant == "seg" else cfg["nbhd_cls"],
        alpha=cfg["alpha"] if alpha is None else alpha, ds_rate=cfg["ds_rate"],
        layer_scale=cfg["layer_scale"],
        drop_path_rate=(cfg["drop_path_seg"] if variant == "seg" else cfg["drop_path_cls"])
        if drop_path_rate is None else drop_path_rate,
    )
    kwargs.update(overrides)
    return AutoFocusFormer(**kwargs)


# --- official checkpoints ----------------------------------------------------------------------------

def checkpoint_filter_fn(state_dict: dict[str, Any], model: AutoFocusFormer) -> dict[str, torch.Tensor]:
    """Map an official checkpoint to this model's keys.

    Accepts {'model': sd} or a bare sd. SEG (detectron2) files: keep `backbone.*` with the prefix
    stripped, drop `sem_seg_head.*` / `criterion.*`. A CLS file loaded into a SEG model drops `norm.*`
    and `head.*`; a SEG file cannot feed a CLS model (it has no classifier).
    """
    sd = state_dict.get("model", state_dict) if isinstance(state_dict, dict) else state_dict
    if not isinstance(sd, dict):
        raise WeightsError("checkpoint is not a state dict (expected {'model': state_dict})")
    if any(k.startswith("backbone.") for k in sd):
        sd = {k[len("backbone."):]: v for k, v in sd.items() if k.startswith("backbone.")}
    elif model.variant == "seg":
        sd = {k: v for k, v in sd.items() if not (k.startswith("norm.") or k.startswith("head."))}
    return {k: v for k, v in sd.items() if isinstance(v, torch.Tensor)}


def load_official_backbone(model: AutoFocusFormer, path_or_state_dict: str | Path | dict[str, Any],
                           variant: str | None = None) -> AutoFocusFormer:
    """Strictly load an official CLS or SEG checkpoint (torch.load weights_only=True) into `model`.

    `variant` ("cls"/"seg"), when given, must match the model's. A SEG model loaded from a CLS
    (ImageNet) file keeps its freshly initialised norm0..3 (the official SEG training does the same);
    every other missing or unexpected key is an error. Returns the model.
    """
    if variant is not None and variant != model.variant:
        raise WeightsError(f"checkpoint variant {variant!r} does not match model variant {model.variant!r}")
    if isinstance(path_or_state_dict, (str, Path)):
        try:
            raw = torch.load(str(path_or_state_dict), map_location="cpu", weights_only=True)
        except FileNotFoundError as e:
            raise WeightsError(f"checkpoint not found: {path_or_state_dict}") from e
        except Exception as e:  # unpickling refused or corrupt file
            raise WeightsError(f"cannot load checkpoint {path_or_state_dict}: {e}") from e
    else:
        raw = path_or_state_dict
    from_cls = isinstance(raw, dict) and not any(
        k.startswith("backbone.") for k in raw.get("model", raw)
    )
    sd = checkpoint_filter_fn(raw, model)
    missing, unexpected = model.load_state_dict(sd, strict=False)
    allowed = {k for k in missing if model.variant == "seg" and from_cls and k.split(".")[0] in
               {f"norm{i}" for i in range(model.num_layers)}}
    missing = [k for k in missing if k not in allowed]
    if missing or unexpected:
        raise WeightsError(
            f"checkpoint does not fit {type(model).__name__}: missing {missing[:5]}"
            f"{'...' if len(missing) > 5 else ''}, unexpected {unexpected[:5]}"
            f"{'...' if len(unexpected) > 5 else ''}"
        )
    return model
