"""SeaFormer (ICLR 2023): squeeze-enhanced axial transformer for fast semantic segmentation.

This module owns the whole SeaFormer family in pure PyTorch (CPU and GPU, no custom kernels):

* a shared stem of MobileNetV2 inverted-residual stages (stride 2 conv, then stages at 1/4 .. 1/64);
* the context branch: the last two (three for ``large``) stages are followed by SeaFormer layers,
  whose SEA attention squeezes q/k/v along each axis, attends over the H row-tokens and the W
  column-tokens (with interpolated axial position embeddings), broadcasts the two results back to
  H x W, and gates a "detail enhancement" branch (depthwise 3x3 over concat[q, k, v]);
* the spatial branch: the 1/8 shared feature, refined by fusion blocks that multiply it with a
  hard-sigmoid of each (upsampled) context feature;
* the light segmentation head (depthwise 1x1 conv + BN + ReLU, dropout, 1x1 classifier).

Sizes follow the official configs (fudan-zvg/SeaFormer, seaformer-seg/local_configs) and are
registered as builders: ``seaformer_tiny``, ``seaformer_small``, ``seaformer_base``,
``seaformer_large`` and ``seaformer_test`` (a few-thousand-parameter variant for tests).
``checkpoint_filter_fn`` renames official mmseg keys (``backbone.smb1.layer2.conv.0.c.weight``,
``decode_head.fuse1.local_embedding.conv.weight``, ...) to ours.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

# (kernel, expansion, out_channels, stride) per inverted-residual block
MV2Cfg = Sequence[tuple[int, int, int, int]]


class ConvBN(nn.Sequential):
    """Bias-free conv followed by BatchNorm (``c``/``bn`` children, as in the official weights)."""

    def __init__(self, cin: int, cout: int, k: int = 1, stride: int = 1, groups: int = 1,
                 bn_weight_init: float = 1.0) -> None:
        super().__init__()
        self.add_module("c", nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False))
        self.add_module("bn", nn.BatchNorm2d(cout))
        nn.init.constant_(self.bn.weight, bn_weight_init)
        nn.init.zeros_(self.bn.bias)


def hard_sigmoid(x: torch.Tensor) -> torch.Tensor:
    return F.relu6(x + 3.0) / 6.0


class InvertedResidual(nn.Module):
    """MobileNetV2 block: (1x1 expand + act) -> kxk depthwise + act -> 1x1 project."""

    def __init__(self, cin: int, cout: int, k: int, stride: int, expand: int,
                 act: Callable[[], nn.Module] = nn.ReLU) -> None:
        super().__init__()
        hidden = int(round(cin * expand))
        layers: list[nn.Module] = []
        if expand != 1:
            layers += [ConvBN(cin, hidden), act()]
        layers += [ConvBN(hidden, hidden, k, stride, groups=hidden), act(), ConvBN(hidden, cout)]
        self.conv = nn.Sequential(*layers)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        return x + y if self.residual else y


class AxialPosEmbed(nn.Module):
    """Learned 1-D position embedding of fixed length, linearly resized to the squeezed axis."""

    def __init__(self, dim: int, length: int = 16) -> None:
        super().__init__()
        self.pos_embed = nn.Parameter(torch.randn(1, dim, length))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (B, C, N)
        pe = F.interpolate(self.pos_embed, size=x.shape[-1], mode="linear", align_corners=False)
        return x + pe


class SeaAttention(nn.Module):
    """Squeeze-enhanced axial attention on a (B, C, H, W) map; cost linear in H*W."""

    def __init__(self, dim: int, key_dim: int, num_heads: int, attn_ratio: int = 2,
                 act: Callable[[], nn.Module] = nn.ReLU6) -> None:
        super().__init__()
        self.heads, self.key_dim = num_heads, key_dim
        self.scale = key_dim**-0.5
        qk = key_dim * num_heads
        self.dh = attn_ratio * key_dim * num_heads
        self.to_q, self.to_k, self.to_v = ConvBN(dim, qk), ConvBN(dim, qk), ConvBN(dim, self.dh)
        self.pos_rowq, self.pos_rowk = AxialPosEmbed(qk), AxialPosEmbed(qk)
        self.pos_colq, self.pos_colk = AxialPosEmbed(qk), AxialPosEmbed(qk)
        self.proj_row = nn.Sequential(act(), ConvBN(self.dh, self.dh, bn_weight_init=0.0))
        self.proj_col = nn.Sequential(act(), ConvBN(self.dh, self.dh, bn_weight_init=0.0))
        self.proj = nn.Sequential(act(), ConvBN(self.dh, dim, bn_weight_init=0.0))
        # detail enhancement kernel over concat[q, k, v]
        cat = 2 * qk + self.dh
        self.dwconv = ConvBN(cat, cat, 3, groups=cat)
        self.act = act()
        self.pwconv = ConvBN(cat, dim)

    def _axis(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """q, k: (B, heads*key_dim, N); v: (B, dh, N) -> (B, dh, N) attended along the axis."""
        b, _, n = q.shape
        q = q.reshape(b, self.heads, -1, n).transpose(-1, -2)  # B h N d
        k = k.reshape(b, self.heads, -1, n)  # B h d N
        v = v.reshape(b, self.heads, -1, n).transpose(-1, -2)
        attn = ((q @ k) * self.scale).softmax(dim=-1)
        return (attn @ v).transpose(-1, -2).reshape(b, self.dh, n)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.to_q(x), self.to_k(x), self.to_v(x)
        detail = self.pwconv(self.act(self.dwconv(torch.cat([q, k, v], dim=1))))
        row = self._axis(self.pos_rowq(q.mean(-1)), self.pos_rowk(k.mean(-1)), v.mean(-1))
        col = self._axis(self.pos_colq(q.mean(-2)), self.pos_colk(k.mean(-2)), v.mean(-2))
        row = self.proj_row(row.unsqueeze(-1))  # B dh H 1
        col = self.proj_col(col.unsqueeze(-2))  # B dh 1 W
        glob = self.proj(v + row + col)
        return hard_sigmoid(glob) * detail


class ConvMlp(nn.Module):
    """1x1 expand + BN, depthwise 3x3 (bias), act, 1x1 project + BN."""

    def __init__(self, dim: int, hidden: int, act: Callable[[], nn.Module] = nn.ReLU6,
                 drop: float = 0.0) -> None:
        super().__init__()
        self.fc1 = ConvBN(dim, hidden)
        self.dwconv = nn.Conv2d(hidden, hidden, 3, 1, 1, groups=hidden)
        self.act = act()
        self.fc2 = ConvBN(hidden, dim)
        self.drop = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.fc2(self.drop(self.act(self.dwconv(self.fc1(x))))))


class DropPath(nn.Module):
    """Stochastic depth on the residual branch (identity in eval mode)."""

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        keep = 1.0 - self.p
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
        return x * mask / keep


class SeaBlock(nn.Module):
    def __init__(self, dim: int, key_dim: int, num_heads: int, mlp_ratio: float,
                 attn_ratio: int = 2, drop_path: float = 0.0) -> None:
        super().__init__()
        self.attn = SeaAttention(dim, key_dim, num_heads, attn_ratio)
        self.mlp = ConvMlp(dim, int(dim * mlp_ratio))
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.attn(x))
        return x + self.drop_path(self.mlp(x))


class SeaFormerBackbone(nn.Module):
    """Returns [1/8 shared feature, context features of the SeaFormer stages (coarse last)]."""

    def __init__(self, stages: Sequence[MV2Cfg], channels: Sequence[int],
                 emb_dims: Sequence[int], key_dims: Sequence[int], depths: Sequence[int],
                 num_heads: int, mlp_ratios: Sequence[float], attn_ratio: int = 2,
                 drop_path_rate: float = 0.0) -> None:
        super().__init__()
        if len(channels) != len(stages) + 1:
            raise ValueError("channels needs one entry per stage plus the output channels")
        if not (len(emb_dims) == len(key_dims) == len(depths) == len(mlp_ratios) <= len(stages)):
            raise ValueError("emb_dims/key_dims/depths/mlp_ratios must have one entry per SEA stage")
        self.stem = nn.Sequential(ConvBN(3, channels[0], 3, 2), nn.ReLU())
        self.mv2 = nn.ModuleList()
        for cfg, cin in zip(stages, channels[:-1], strict=True):
            blocks = []
            for k, t, c, s in cfg:
                blocks.append(InvertedResidual(cin, c, k, s, t))
                cin = c
            self.mv2.append(nn.Sequential(*blocks))
        self.first_sea = len(stages) - len(depths)
        self.sea = nn.ModuleList()
        for i, depth in enumerate(depths):
            dim = channels[self.first_sea + i + 1]
            if emb_dims[i] != dim:
                raise ValueError(f"emb_dims[{i}]={emb_dims[i]} must equal stage width {dim}")
            dpr = torch.linspace(0, drop_path_rate, depth).tolist()
            self.sea.append(nn.Sequential(*[
                SeaBlock(dim, key_dims[i], num_heads, mlp_ratios[i], attn_ratio, dpr[j])
                for j in range(depth)]))
        self.out_channels = [channels[2]] + [channels[self.first_sea + i + 1]
                                             for i in range(len(depths))]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.stem(x)
        outs = []
        for i, stage in enumerate(self.mv2):
            x = stage(x)
            if i == 1:  # 1/8: shared feature feeding the spatial branch
                outs.append(x)
            if i >= self.first_sea:
                x = self.sea[i - self.first_sea](x)
                outs.append(x)
        return outs


class FusionBlock(nn.Module):
    """Spatial feature (1x1 conv+BN) times hard-sigmoid(context 1x1 conv+BN), upsampled."""

    def __init__(self, c_local: int, c_context: int, dim: int) -> None:
        super().__init__()
        self.local = ConvBN(c_local, dim)
        self.gate = ConvBN(c_context, dim)

    def forward(self, x_local: torch.Tensor, x_context: torch.Tensor) -> torch.Tensor:
        gate = F.interpolate(hard_sigmoid(self.gate(x_context)), size=x_local.shape[-2:],
                             mode="bilinear", align_corners=False)
        return self.local(x_local) * gate


class LightHead(nn.Module):
    def __init__(self, in_channels: Sequence[int], embed_dims: Sequence[int], num_classes: int,
                 dropout: float = 0.1) -> None:
        super().__init__()
        if len(embed_dims) != len(in_channels) - 1:
            raise ValueError("LightHead needs one embed dim per context feature")
        cins = [in_channels[0], *embed_dims[:-1]]
        self.fuse = nn.ModuleList(FusionBlock(ci, cc, d) for ci, cc, d
                                  in zip(cins, in_channels[1:], embed_dims, strict=True))
        ch = embed_dims[-1]
        self.fuse_conv = nn.Sequential(ConvBN(ch, ch, 1, groups=ch), nn.ReLU())
        self.dropout = nn.Dropout2d(dropout)
        self.classifier = nn.Conv2d(ch, num_classes, 1)

    def forward(self, feats: Sequence[torch.Tensor]) -> torch.Tensor:
        x = feats[0]
        for blk, ctx in zip(self.fuse, feats[1:], strict=True):
            x = blk(x, ctx)
        return self.classifier(self.dropout(self.fuse_conv(x)))


class SeaFormerSeg(nn.Module):
    """SeaFormer semantic segmentation: images (B,3,H,W) -> logits (B,K,ceil(H/8),ceil(W/8)).

    ``forward(x, upsample=True)`` returns logits bilinearly resized to (H, W).
    """

    def __init__(self, backbone: SeaFormerBackbone, head_dims: Sequence[int], num_classes: int,
                 dropout: float = 0.1) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = LightHead(backbone.out_channels, head_dims, num_classes, dropout)
        self.num_classes = num_classes
        self.output_stride = 8

    def forward(self, x: torch.Tensor, upsample: bool = False) -> torch.Tensor:
        logits = self.head(self.backbone(x))
        if upsample:
            logits = F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)
        return logits


# --------------------------------------------------------------------------- official weights

_RULES: list[tuple[str, str]] = [
    (r"^backbone\.smb1\.stem_block\.0\.", "backbone.stem.0."),
    (r"^backbone\.smb(\d+)\.layer(\d+)\.", "backbone.mv2.{0}.{1}."),
    (r"^backbone\.trans(\d+)\.transformer_blocks\.(\d+)\.", "backbone.sea.{0}.{1}."),
    (r"\.attn\.pos_emb_rowq\.", ".attn.pos_rowq."), (r"\.attn\.pos_emb_rowk\.", ".attn.pos_rowk."),
    (r"\.attn\.pos_emb_columnq\.", ".attn.pos_colq."),
    (r"\.attn\.pos_emb_columnk\.", ".attn.pos_colk."),
    (r"\.attn\.proj_encode_row\.", ".attn.proj_row."),
    (r"\.attn\.proj_encode_column\.", ".attn.proj_col."),
    (r"^decode_head\.fuse(\d+)\.local_embedding\.conv\.", "head.fuse.{0}.local.c."),
    (r"^decode_head\.fuse(\d+)\.local_embedding\.bn\.", "head.fuse.{0}.local.bn."),
    (r"^decode_head\.fuse(\d+)\.global_act\.conv\.", "head.fuse.{0}.gate.c."),
    (r"^decode_head\.fuse(\d+)\.global_act\.bn\.", "head.fuse.{0}.gate.bn."),
    (r"^decode_head\.linear_fuse\.conv\.", "head.fuse_conv.0.c."),
    (r"^decode_head\.linear_fuse\.bn\.", "head.fuse_conv.0.bn."),
    (r"^decode_head\.conv_seg\.", "head.classifier."),
]


def _rename(key: str) -> str:
    for pat, repl in _RULES:
        m = re.search(pat, key)
        if m is None:
            continue
        # official indices are 1-based (smb1, layer1, trans1, fuse1); ours are 0-based,
        # except transformer_blocks which is already 0-based
        nums = [str(int(g) - (0 if "transformer_blocks" in pat and j == 1 else 1))
                for j, g in enumerate(m.groups())]
        key = key[: m.start()] + repl.format(*nums) + key[m.end():]
    return key


def checkpoint_filter_fn(state_dict: dict[str, torch.Tensor],
                         model: SeaFormerSeg | None = None) -> dict[str, torch.Tensor]:
    """Map an official SeaFormer mmseg state dict (``state_dict`` entry) to our key names.

    Auxiliary heads are dropped; ``num_batches_tracked`` is kept. When ``model`` is given, keys
    it does not have are dropped and shape mismatches raise ``ValueError``.
    """
    if "state_dict" in state_dict and isinstance(state_dict["state_dict"], dict):
        state_dict = state_dict["state_dict"]
    out: dict[str, torch.Tensor] = {}
    for k, v in state_dict.items():
        if k.startswith("auxiliary_head."):
            continue
        out[_rename(k)] = v
    if model is not None:
        ours = model.state_dict()
        for k, v in list(out.items()):
            if k not in ours:
                del out[k]
            elif ours[k].shape != v.shape:
                raise ValueError(f"{k}: checkpoint shape {tuple(v.shape)} != {tuple(ours[k].shape)}")
    return out


# --------------------------------------------------------------------------- sizes


@dataclass(frozen=True)
class SeaFormerConfig:
    stages: tuple[tuple[tuple[int, int, int, int], ...], ...]
    channels: tuple[int, ...]
    emb_dims: tuple[int, ...]
    key_dims: tuple[int, ...]
    depths: tuple[int, ...]
    num_heads: int
    head_dims: tuple[int, ...]
    mlp_ratios: tuple[float, ...] = (2, 4)
    drop_path_rate: float = 0.1


def _cfg(c: Sequence[int], t: Sequence[int], first_t: int = 1) -> tuple:
    """The shared MV2 layout of the official sizes: widths c[0..5], expansions t[0..3]."""
    return (
        ((3, first_t, c[0], 1), (3, 4, c[1], 2), (3, t[0], c[1], 1)),
        ((5, t[0], c[2], 2), (5, t[0], c[2], 1)),
        ((3, t[1], c[3], 2), (3, t[1], c[3], 1)),
        ((5, t[2], c[4], 2),),
        ((3, 6, c[5], 2),),
    )


def _official(c: tuple[int, ...], t: tuple[int, ...], key_dims: tuple[int, ...],
              depths: tuple[int, ...], num_heads: int, head_dims: tuple[int, ...], *,
              first_t: int = 1, mlp_ratios: tuple[float, ...] = (2, 4)) -> SeaFormerConfig:
    """An official size from its widths ``c`` (stem + five stages, given once): the attention
    branches run at the last ``len(depths)`` widths."""
    return SeaFormerConfig(_cfg(c, t, first_t), c, c[-len(depths):], key_dims, depths, num_heads,
                           head_dims, mlp_ratios=mlp_ratios)


SEAFORMER_CONFIGS: dict[str, SeaFormerConfig] = {
    "tiny": _official((16, 16, 32, 64, 128, 160), (3, 3, 3), (16, 24), (2, 2), 4, (64, 96)),
    "small": _official((16, 24, 48, 96, 160, 192), (3, 3, 4), (16, 24), (3, 3), 6, (96, 128)),
    "base": _official((16, 32, 64, 128, 192, 256), (3, 3, 4), (16, 24), (4, 4), 8, (128, 160)),
    "large": _official((32, 64, 128, 192, 256, 320), (4, 4, 4), (16, 20, 24), (3, 3, 3), 8,
                       (128, 160, 192), first_t=3, mlp_ratios=(2, 4, 6)),
    # a few-thousand-parameter variant for fast tests (not a published size)
    "test": SeaFormerConfig(
        (((3, 1, 8, 1), (3, 2, 8, 2)), ((3, 2, 16, 2),), ((3, 2, 16, 2),), ((3, 2, 24, 2),)),
        (8, 8, 16, 16, 24), (16, 24), (4, 4), (1, 1), 2, (16, 16), drop_path_rate=0.0),
}


def build_seaformer(size: str = "tiny", num_classes: int = 150, *, dropout: float = 0.1,
                    drop_path_rate: float | None = None) -> SeaFormerSeg:
    """Build a SeaFormer segmentation network of a named size (tiny/small/base/large/test)."""
    if size not in SEAFORMER_CONFIGS:
        raise ValueError(f"unknown SeaFormer size {size!r}; choose from {sorted(SEAFORMER_CONFIGS)}")
    cfg = SEAFORMER_CONFIGS[size]
    backbone = SeaFormerBackbone(
        cfg.stages, cfg.channels, cfg.emb_dims, cfg.key_dims, cfg.depths, cfg.num_heads,
        cfg.mlp_ratios, drop_path_rate=cfg.drop_path_rate if drop_path_rate is None
        else drop_path_rate)
    return SeaFormerSeg(backbone, cfg.head_dims, num_classes, dropout)


def seaformer_tiny(num_classes: int = 150, **kwargs: float) -> SeaFormerSeg:
    return build_seaformer("tiny", num_classes, **kwargs)


def seaformer_small(num_classes: int = 150, **kwargs: float) -> SeaFormerSeg:
    return build_seaformer("small", num_classes, **kwargs)


def seaformer_base(num_classes: int = 150, **kwargs: float) -> SeaFormerSeg:
    return build_seaformer("base", num_classes, **kwargs)


def seaformer_large(num_classes: int = 150, **kwargs: float) -> SeaFormerSeg:
    return build_seaformer("large", num_classes, **kwargs)


def seaformer_test(num_classes: int = 3, **kwargs: float) -> SeaFormerSeg:
    return build_seaformer("test", num_classes, **kwargs)


MODEL_BUILDERS: dict[str, Callable[..., SeaFormerSeg]] = {
    "seaformer_tiny": seaformer_tiny,
    "seaformer_small": seaformer_small,
    "seaformer_base": seaformer_base,
    "seaformer_large": seaformer_large,
    "seaformer_test": seaformer_test,
}
