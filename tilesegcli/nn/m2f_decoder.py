"""Masked-attention Mask2Former transformer decoder on point clouds (AFF-REFERENCE §3.2, README §5.8).

Owns: the post-norm cross-/self-attention/FFN layers, ``MultiScaleMaskedTransformerDecoder``
(round-robin over the encoder levels res5, res4, res3; each prediction's mask logits at the res2
tokens are carried to the next level's tokens by Shepard interpolation, thresholded at 0.5, and
fully-blocked rows re-enabled) and the dense stride-4 mask output.

Parameter names equal the official ``sem_seg_head.predictor.*`` keys; attention modules are
``torch.nn.MultiheadAttention`` in (L, B, C) layout exactly like the official decoder.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from tilesegcli.nn.point_ops import (
    gather_rows,
    knn,
    point2img,
    shepard_weights,
    sine_embed,
    weighted_gather,
)


class SelfAttentionLayer(nn.Module):
    def __init__(self, d_model: int, nhead: int) -> None:
        super().__init__()
        self.self_attn = nn.MultiheadAttention(d_model, nhead, dropout=0.0)
        self.norm = nn.LayerNorm(d_model)
        for p in self.parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)

    def forward(self, tgt: torch.Tensor, query_pos: torch.Tensor) -> torch.Tensor:
        q = k = tgt + query_pos
        return self.norm(tgt + self.self_attn(q, k, value=tgt)[0])


class CrossAttentionLayer(nn.Module):
    def __init__(self, d_model: int, nhead: int) -> None:
        super().__init__()
        self.multihead_attn = nn.MultiheadAttention(d_model, nhead, dropout=0.0)
        self.norm = nn.LayerNorm(d_model)
        for p in self.parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)

    def forward(
        self,
        tgt: torch.Tensor,
        memory: torch.Tensor,
        memory_mask: torch.Tensor | None,
        pos: torch.Tensor,
        query_pos: torch.Tensor,
    ) -> torch.Tensor:
        out = self.multihead_attn(
            query=tgt + query_pos, key=memory + pos, value=memory, attn_mask=memory_mask
        )[0]
        return self.norm(tgt + out)


class FFNLayer(nn.Module):
    def __init__(self, d_model: int, dim_feedforward: int) -> None:
        super().__init__()
        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        self.norm = nn.LayerNorm(d_model)
        for p in self.parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)

    def forward(self, tgt: torch.Tensor) -> torch.Tensor:
        return self.norm(tgt + self.linear2(F.relu(self.linear1(tgt))))


class MLP(nn.Module):
    def __init__(self, input_dim: int, hidden_dim: int, output_dim: int, num_layers: int) -> None:
        super().__init__()
        h = [hidden_dim] * (num_layers - 1)
        self.layers = nn.ModuleList(
            nn.Linear(n, k) for n, k in zip([input_dim] + h, h + [output_dim], strict=True)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, layer in enumerate(self.layers):
            x = F.relu(layer(x)) if i < len(self.layers) - 1 else layer(x)
        return x


def _raster_index(pos: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor | None:
    """Raster index (y * w + x) of every token if the tokens cover the (h, w) canvas exactly once."""
    h, w = hw
    if pos.shape[1] != h * w:
        return None
    flat = pos[..., 1].long() * w + pos[..., 0].long()
    ok = flat.min() >= 0 and flat.max() < h * w
    if not ok:
        return None
    seen = torch.zeros(pos.shape[0], h * w, dtype=torch.bool, device=pos.device)
    seen.scatter_(1, flat, True)
    return flat if bool(seen.all()) else None


class MultiScaleMaskedTransformerDecoder(nn.Module):
    """dec_layers - 1 decoder layers and dec_layers predictions (first from the raw queries)."""

    num_feature_levels = 3

    def __init__(
        self,
        in_channels: int,
        *,
        num_classes: int,
        hidden_dim: int = 256,
        num_queries: int = 100,
        nheads: int = 8,
        dim_feedforward: int = 2048,
        dec_layers: int = 10,
        mask_dim: int = 256,
        enforce_input_project: bool = False,
    ) -> None:
        super().__init__()
        if dec_layers < 1:
            raise ValueError("dec_layers must be >= 1")
        self.hidden_dim = hidden_dim
        self.pe_per_image = False  # True: position-embedding scale per image, not per batch
        #: fixed position-embedding divisor (tile-size independent; see point_ops.sine_embed)
        self.pe_extent: float | None = None
        self.num_heads = nheads
        self.num_layers = dec_layers - 1
        self.num_classes = num_classes
        self.transformer_self_attention_layers = nn.ModuleList(
            SelfAttentionLayer(hidden_dim, nheads) for _ in range(self.num_layers)
        )
        self.transformer_cross_attention_layers = nn.ModuleList(
            CrossAttentionLayer(hidden_dim, nheads) for _ in range(self.num_layers)
        )
        self.transformer_ffn_layers = nn.ModuleList(
            FFNLayer(hidden_dim, dim_feedforward) for _ in range(self.num_layers)
        )
        self.decoder_norm = nn.LayerNorm(hidden_dim)
        self.num_queries = num_queries
        self.query_feat = nn.Embedding(num_queries, hidden_dim)
        self.query_embed = nn.Embedding(num_queries, hidden_dim)
        self.level_embed = nn.Embedding(self.num_feature_levels, hidden_dim)
        self.input_proj = nn.ModuleList()
        for _ in range(self.num_feature_levels):
            if in_channels != hidden_dim or enforce_input_project:
                lin = nn.Linear(in_channels, hidden_dim)
                nn.init.kaiming_uniform_(lin.weight, a=1)
                nn.init.constant_(lin.bias, 0)
                self.input_proj.append(lin)
            else:
                self.input_proj.append(nn.Sequential())
        self.class_embed = nn.Linear(hidden_dim, num_classes + 1)
        self.mask_embed = MLP(hidden_dim, hidden_dim, mask_dim, 3)

    def forward(
        self,
        feats: list[torch.Tensor],
        poss: list[torch.Tensor],
        mask_features: torch.Tensor,
        mask_pos: torch.Tensor,
        canvas_hw: tuple[int, int],
        with_aux: bool = True,
        return_embed: bool = False,
    ) -> dict:
        """feats/poss: the 3 encoder levels (B, n_l, C) / (B, n_l, 2); mask_features (B, n2, D) at
        mask_pos. Returns pred_logits (B, Q, K+1), pred_masks (B, Q, h, w), aux_outputs.

        with_aux=False (inference): aux_outputs is empty and intermediate mask logits are computed
        only at the res2 tokens the attention masks need; final outputs are unchanged.
        return_embed: also return each prediction's query mask embeddings (B, Q, mask_dim) as
        ``mask_embed`` (final) and ``aux_mask_embed`` (list, one per aux output)."""
        srcs, pes = [], []
        for i in range(self.num_feature_levels):
            pe = sine_embed(poss[i], self.hidden_dim // 2, per_image=self.pe_per_image,
                            extent=self.pe_extent)
            pes.append(pe.permute(1, 0, 2))
            src = self.input_proj[i](feats[i]) + self.level_embed.weight[i][None, None, :]
            srcs.append(src.permute(1, 0, 2))
        b = srcs[0].shape[1]
        # interpolation from res2 tokens to each level's tokens (same for every layer)
        interp = []
        for p in poss:
            idx = knn(p, mask_pos, min(4, mask_pos.shape[1]))
            interp.append((idx, shepard_weights(p, gather_rows(mask_pos, idx), 3)))
        to_img = lambda m: point2img(m, mask_pos, canvas_hw)  # noqa: E731
        raster = _raster_index(mask_pos, canvas_hw)
        if raster is not None:
            # res2 tiles the canvas: put mask features in raster order once, so every dense
            # mask is a plain matmul (no scatter) and interpolation indices point into it
            c = mask_features.shape[-1]
            mask_features = torch.zeros_like(mask_features).scatter(
                1, raster.unsqueeze(-1).expand(-1, -1, c), mask_features)
            interp = [(raster.gather(1, i.flatten(1)).view_as(i), w) for i, w in interp]
            to_img = lambda m: m.view(m.shape[0], m.shape[1], *canvas_hw)  # noqa: E731
        query_embed = self.query_embed.weight.unsqueeze(1).repeat(1, b, 1)
        output = self.query_feat.weight.unsqueeze(1).repeat(1, b, 1)
        classes, masks, embeds = [], [], []
        dense = with_aux or self.num_layers == 0
        cls, mask, attn_mask, emb = self._predict(output, mask_features, interp[0], dense)
        classes.append(cls)
        embeds.append(emb)
        masks.append(to_img(mask) if dense else None)
        for i in range(self.num_layers):
            lvl = i % self.num_feature_levels
            attn_mask[attn_mask.all(-1)] = False
            output = self.transformer_cross_attention_layers[i](
                output, srcs[lvl], attn_mask, pes[lvl], query_embed
            )
            output = self.transformer_self_attention_layers[i](output, query_embed)
            output = self.transformer_ffn_layers[i](output)
            nxt = (i + 1) % self.num_feature_levels
            dense = with_aux or i == self.num_layers - 1
            cls, mask, attn_mask, emb = self._predict(output, mask_features, interp[nxt], dense)
            classes.append(cls)
            embeds.append(emb)
            masks.append(to_img(mask) if dense else None)
        aux = [{"pred_logits": c, "pred_masks": m} for c, m in zip(classes[:-1], masks[:-1],
                                                                  strict=True)]
        res = {"pred_logits": classes[-1], "pred_masks": masks[-1],
               "aux_outputs": aux if with_aux else []}
        if return_embed:
            res["mask_embed"] = embeds[-1]
            res["aux_mask_embed"] = embeds[:-1] if with_aux else []
        return res

    def _predict(
        self,
        output: torch.Tensor,
        mask_features: torch.Tensor,
        interp: tuple[torch.Tensor, torch.Tensor],
        dense: bool = True,
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor, torch.Tensor]:
        dec = self.decoder_norm(output).transpose(0, 1)  # b q c
        cls = self.class_embed(dec)
        emb = self.mask_embed(dec)
        idx, w = interp
        mask = emb @ mask_features.permute(0, 2, 1) if dense else None  # b q n2
        with torch.no_grad():
            if mask is not None:
                at_level = weighted_gather(mask.detach().permute(0, 2, 1), idx, w)  # b n_l q
            else:  # logits only at the (<= 4) res2 tokens each level token interpolates from
                sub = gather_rows(mask_features, idx)  # b n_l k c
                at_level = (torch.einsum("bqc,bnkc->bnkq", emb, sub) * w[..., None]).sum(2)
            blocked = at_level.permute(0, 2, 1).sigmoid() < 0.5  # b q n_l
            attn_mask = blocked.repeat_interleave(self.num_heads, dim=0)  # b*h q n_l
        return cls, mask, attn_mask, emb
