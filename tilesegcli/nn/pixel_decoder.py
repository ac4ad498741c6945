"""Point-cloud MSDeformAttn pixel decoder of AFF-Mask2Former (AFF-REFERENCE §3.1, fixture README §5.7).

Owns: ``MSDeformAttnPc`` (deformable attention whose sampling points read the 4 nearest tokens of
each level with learnable inverse-distance weights), the post-norm encoder layer, ``PointConv`` and
``MSDeformAttnPixelDecoder``, which turns backbone tokens res2..res5 into ``mask_features`` at the
res2 tokens and three encoder outputs (res5, res4, res3) for the transformer decoder.

Parameter names equal the official ``sem_seg_head.pixel_decoder.*`` keys. Pure PyTorch; every
sampling gather is an ``embedding_bag`` so memory stays O(tokens x channels).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from tilesegcli.nn.point_ops import (
    gather_rows,
    grid_positions,
    knn,
    rel_pos_features,
    shepard_upsample,
    shepard_weights,
    sine_embed,
)
from tilesegcli.nn.types import BackboneOutput

_QUERY_CHUNK = 8192  # query tokens per sampling chunk


@dataclass
class SamplingTable:
    """For every canvas cell (raster order) of every encoder level l (row l * h * w + cell): its 4
    nearest level-l tokens as indices into the concatenated levels, and their positions."""

    tok: torch.Tensor  # (B, L * h * w, 4) int64
    pos: torch.Tensor  # (B, L * h * w, 8) float: 4 x (x, y)
    canvas_hw: tuple[int, int]

    @classmethod
    def build(cls, poss: list[torch.Tensor], canvas_hw: tuple[int, int]) -> SamplingTable:
        b = poss[0].shape[0]
        grid = grid_positions(b, canvas_hw, poss[0].device)
        toks, nbp, start = [], [], 0
        for p in poss:
            nb = knn(grid, p, min(4, p.shape[1]))
            if nb.shape[-1] < 4:  # tiny inputs: fewer than 4 tokens; repeat the farthest
                nb = torch.cat([nb, nb[..., -1:].expand(-1, -1, 4 - nb.shape[-1])], dim=-1)
            toks.append(nb + start)
            nbp.append(gather_rows(p, nb).flatten(-2))
            start += p.shape[1]
        return cls(torch.cat(toks, 1), torch.cat(nbp, 1), canvas_hw)


@dataclass
class PixelDecoderOutput:
    mask_features: torch.Tensor  # (B, n2, mask_dim) at the res2 tokens
    mask_pos: torch.Tensor  # (B, n2, 2) res2 positions
    multi_scale_features: list[torch.Tensor]  # [res5, res4, res3] encoder outputs (B, n_l, D)
    multi_scale_pos: list[torch.Tensor]  # their positions
    canvas_hw: tuple[int, int]


class MSDeformAttnPc(nn.Module):
    """Multi-scale deformable attention on point clouds sharing one stride-4 canvas."""

    def __init__(
        self,
        d_model: int,
        n_levels: int,
        n_heads: int,
        n_points: int,
        shepard_power: float,
        shepard_power_learnable: bool,
    ) -> None:
        super().__init__()
        if d_model % n_heads:
            raise ValueError(f"d_model {d_model} not divisible by n_heads {n_heads}")
        self.d_model, self.n_levels, self.n_heads, self.n_points = d_model, n_levels, n_heads, n_points
        self.sampling_offsets = nn.Linear(d_model, n_heads * n_levels * n_points * 2)
        self.attention_weights = nn.Linear(d_model, n_heads * n_levels * n_points)
        self.value_proj = nn.Linear(d_model, d_model)
        self.output_proj = nn.Linear(d_model, d_model)
        self.checkpoint_sampling = True  # recompute sampling in backward (training memory)
        self.shepard_power: nn.Parameter | float
        if shepard_power_learnable:
            self.shepard_power = nn.Parameter(shepard_power * torch.ones(1))
        else:
            self.shepard_power = float(shepard_power)
        self._reset_parameters()

    def _reset_parameters(self) -> None:
        nn.init.constant_(self.sampling_offsets.weight, 0.0)
        th = torch.arange(self.n_heads, dtype=torch.float32) * (2.0 * torch.pi / self.n_heads)
        grid = torch.stack([th.cos(), th.sin()], -1)
        grid = (grid / grid.abs().max(-1, keepdim=True)[0]).view(self.n_heads, 1, 1, 2)
        grid = grid.repeat(1, self.n_levels, self.n_points, 1)
        for i in range(self.n_points):
            grid[:, :, i, :] *= i + 1
        with torch.no_grad():
            self.sampling_offsets.bias.copy_(grid.view(-1))
        nn.init.constant_(self.attention_weights.weight, 0.0)
        nn.init.constant_(self.attention_weights.bias, 0.0)
        nn.init.xavier_uniform_(self.value_proj.weight)
        nn.init.constant_(self.value_proj.bias, 0.0)
        nn.init.xavier_uniform_(self.output_proj.weight)
        nn.init.constant_(self.output_proj.bias, 0.0)

    def forward(
        self,
        queries: list[torch.Tensor],
        poss: list[torch.Tensor],
        values: list[torch.Tensor],
        table: SamplingTable,
    ) -> list[torch.Tensor]:
        b, _, c = queries[0].shape
        nh, nl, npt = self.n_heads, self.n_levels, self.n_points
        ch = c // nh
        h, w = table.canvas_hw
        n_tot = sum(v.shape[1] for v in values)
        # value rows: (b * nh + head) * n_tot + token (tokens of all levels concatenated)
        v = self.value_proj(torch.cat(values, dim=1)).view(b, n_tot, nh, ch)
        vtab = v.permute(0, 2, 1, 3).reshape(b * nh * n_tot, ch)
        row_base = (torch.arange(b * nh, device=v.device) * n_tot).view(b, nh, 1, 1, 1, 1)
        lvl_base = (torch.arange(nl, device=v.device) * (h * w)).view(1, 1, 1, nl, 1)
        outputs = []
        for q, pos in zip(queries, poss, strict=True):
            n = q.shape[1]
            offs = self.sampling_offsets(q).view(b, n, nh, nl, npt, 2)
            attn = F.softmax(self.attention_weights(q).view(b, n, nh, nl * npt), -1)
            attn = attn.view(b, n, nh, nl, npt)
            out = torch.empty((b, n, nh, ch), dtype=v.dtype, device=v.device)
            ckpt = self.checkpoint_sampling and torch.is_grad_enabled()
            for s in range(0, n, _QUERY_CHUNK):
                e = min(n, s + _QUERY_CHUNK)
                args = (pos[:, s:e], offs[:, s:e], attn[:, s:e], vtab, table, row_base, lvl_base)
                if ckpt:  # training: keep only the inputs, recompute the sampling in backward
                    res = checkpoint(self._sample, *args, use_reentrant=False)
                else:
                    res = self._sample(*args)
                out[:, s:e] = res.view(b, nh, e - s, ch).transpose(1, 2)
            outputs.append(self.output_proj(out.reshape(b, n, c)))
        return outputs

    def _sample(
        self,
        pos: torch.Tensor,
        offs: torch.Tensor,
        attn: torch.Tensor,
        vtab: torch.Tensor,
        table: SamplingTable,
        row_base: torch.Tensor,
        lvl_base: torch.Tensor,
    ) -> torch.Tensor:
        """sum over levels/points/4 neighbours of attention x Shepard weight x value, per head."""
        h, w = table.canvas_hw
        kk = self.n_levels * self.n_points * 4
        # head-major (b, nh, m, ...): consecutive bags read one head's value rows (cache locality)
        offs = offs.transpose(1, 2).contiguous()
        attn = attn.transpose(1, 2).contiguous()
        loc = pos[:, None, :, None, None, :] + offs  # b nh m nl np 2
        cell = loc.round().long()
        gidx = cell[..., 0].clamp(0, w - 1) + cell[..., 1].clamp(0, h - 1) * w + lvl_base
        tok = gather_rows(table.tok, gidx)  # b nh m nl np 4
        nb_pos = gather_rows(table.pos, gidx).unflatten(-1, (4, 2))
        wt = shepard_weights(loc, nb_pos, self.shepard_power) * attn[..., None]
        return F.embedding_bag((tok + row_base).reshape(-1, kk), vtab,
                               per_sample_weights=wt.reshape(-1, kk), mode="sum")


class MSDeformAttnEncoderLayerPc(nn.Module):
    """Post-norm: s = LN1(s + MSDA(s + pe)); s = LN2(s + FFN(s)); same weights for all levels.
    The layer's width is that of its attention module ``self_attn``."""

    def __init__(self, self_attn: MSDeformAttnPc, d_ffn: int) -> None:
        super().__init__()
        d_model = self_attn.d_model
        self.self_attn = self_attn
        self.norm1 = nn.LayerNorm(d_model)
        self.linear1 = nn.Linear(d_model, d_ffn)
        self.linear2 = nn.Linear(d_ffn, d_model)
        self.norm2 = nn.LayerNorm(d_model)

    def forward(
        self,
        srcs: list[torch.Tensor],
        poss: list[torch.Tensor],
        pos_embeds: list[torch.Tensor],
        table: SamplingTable,
    ) -> list[torch.Tensor]:
        queries = [s + p for s, p in zip(srcs, pos_embeds, strict=True)]
        attn = self.self_attn(queries, poss, srcs, table)
        outs = []
        for s, a in zip(srcs, attn, strict=True):
            s = self.norm1(s + a)
            s = self.norm2(s + self.linear2(F.relu(self.linear1(s))))
            outs.append(s)
        return outs


class _Encoder(nn.Module):
    def __init__(self, layers: list[nn.Module]) -> None:
        super().__init__()
        self.layers = nn.ModuleList(layers)


class _EncoderOnly(nn.Module):
    """Holds ``level_embed`` and ``encoder.layers`` under the official key names."""

    def __init__(self, layers: list[nn.Module], n_levels: int, d_model: int) -> None:
        super().__init__()
        self.encoder = _Encoder(layers)
        self.level_embed = nn.Parameter(torch.empty(n_levels, d_model))
        nn.init.normal_(self.level_embed)


class PointConv(nn.Module):
    """9-NN point convolution: weights from the relative-position features of (query - neighbour)."""

    def __init__(self, dim: int, out_dim: int, k: int = 9, inner_ch: int = 4) -> None:
        super().__init__()
        self.k = k
        self.weight_net = nn.Sequential(nn.Linear(5, inner_ch), nn.LayerNorm(inner_ch), nn.GELU())
        self.norm = nn.LayerNorm(inner_ch * dim)
        self.linear = nn.Linear(dim * inner_ch, out_dim)

    def forward(self, x: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        idx = knn(pos, pos, min(self.k, n))  # b n k
        rel = pos.unsqueeze(2) - gather_rows(pos, idx)
        wts = self.weight_net(rel_pos_features(rel))  # b n k ic
        base = (torch.arange(b, device=x.device) * n).view(b, 1, 1)
        flat_idx = (idx + base).reshape(b * n, -1)
        table = x.reshape(b * n, c)
        parts = [
            F.embedding_bag(flat_idx, table, per_sample_weights=wts[..., i].reshape(b * n, -1),
                            mode="sum")
            for i in range(wts.shape[-1])
        ]
        feat = torch.stack(parts, dim=1).reshape(b, n, -1)  # ic-major
        return self.linear(self.norm(feat))


def _proj(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(cin, cout), nn.LayerNorm(cout))


class MSDeformAttnPixelDecoder(nn.Module):
    """Backbone tokens res2..res5 -> mask features (res2) + encoder outputs (res5, res4, res3)."""

    def __init__(
        self,
        in_channels: dict[str, int],
        *,
        conv_dim: int = 256,
        mask_dim: int = 256,
        nheads: int = 8,
        enc_layers: int = 6,
        enc_ffn_dim: int = 1024,
        n_points: int = 4,
        shepard_power: float = 6.0,
        shepard_power_learnable: bool = True,
    ) -> None:
        super().__init__()
        self.enc_levels = ["res5", "res4", "res3"]
        self.conv_dim = conv_dim
        self.pe_per_image = False  # True: position-embedding scale per image, not per batch
        #: fixed position-embedding divisor (tile-size independent; see point_ops.sine_embed)
        self.pe_extent: float | None = None
        self.input_proj = nn.ModuleList([_proj(in_channels[k], conv_dim) for k in self.enc_levels])
        for p in self.input_proj:
            nn.init.xavier_uniform_(p[0].weight, gain=1)
            nn.init.constant_(p[0].bias, 0)
        # the official config gives the power on distance; weights use squared distances
        layers = [
            MSDeformAttnEncoderLayerPc(
                MSDeformAttnPc(conv_dim, 3, nheads, n_points, shepard_power / 2.0,
                               shepard_power_learnable),
                enc_ffn_dim,
            )
            for _ in range(enc_layers)
        ]
        self.transformer = _EncoderOnly(layers, 3, conv_dim)
        self.mask_features = nn.Linear(conv_dim, mask_dim)
        self.adapter_1 = _proj(in_channels["res2"], conv_dim)
        self.layer_1 = nn.ModuleList([PointConv(conv_dim, conv_dim), nn.LayerNorm(conv_dim)])

    def forward(self, feats: BackboneOutput) -> PixelDecoderOutput:
        canvas = feats.canvas_hw
        lv = feats.levels
        res2 = lv["res2"]
        srcs, poss, pes = [], [], []
        for i, name in enumerate(self.enc_levels):
            x, pos = lv[name].feat.float(), lv[name].pos.float()
            srcs.append(self.input_proj[i](x))
            poss.append(pos)
            pe = sine_embed(pos, self.conv_dim // 2, per_image=self.pe_per_image,
                            extent=self.pe_extent)
            pes.append(pe + self.transformer.level_embed[i].view(1, 1, -1))
        table = SamplingTable.build(poss, canvas)
        out = srcs
        for layer in self.transformer.encoder.layers:
            out = layer(out, poss, pes, table)
        x2, p2 = res2.feat.float(), res2.pos.float()
        y = self.adapter_1(x2) + shepard_upsample(p2, poss[-1], out[-1], k=4, power=3)
        y = F.relu(self.layer_1[1](self.layer_1[0](y, p2)))
        return PixelDecoderOutput(self.mask_features(y), p2, out, poss, canvas)
