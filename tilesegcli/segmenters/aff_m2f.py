"""``AFFSegmenter``: an AFF + Mask2Former network behind tileseg's ``Segmenter`` interface.

Owns the path from uint8 RGB tiles to ``TileResult``s for a model card: device choice
(``"auto" | "cpu" | "cuda[:N]"``), normalisation with the card's mean/std, zero padding to the
card's size divisibility (as detectron2 does after normalising), fp16 autocast on CUDA only with the
pixel decoder kept in fp32 as in the official code (a batch whose fp16 outputs are not finite is
recomputed in fp32), ``torch.inference_mode``, the network
(``tilesegcli.nn.aff_m2f``) and its post-processing (``tilesegcli.nn.postprocess``), then the
conversion to tileseg's conventions:

* classes: ``card.classes[0]`` is background; model class k is tileseg class k + card.class_offset.
* semantic (task "semantic" and "panoptic"): Mask2Former's per-class scores s_k (sum over queries of
  class probability x mask probability) are not a distribution; with an implicit background we set
  s_bg = max(0, 1 - max_k s_k) and divide every channel by the per-pixel sum, so the (C, h, w)
  float32 output sums to 1 and index 0 is background.
* instance: Mask2Former top-k instances with score > ``postprocess.score_threshold`` painted into a
  label image (highest score wins on overlap), instances smaller than ``card.min_area`` pixels
  dropped, labels renumbered 1..K.
* panoptic: thing segments become instances (score = mean semantic probability of the segment's
  class over its pixels), stuff is reported through ``semantic``.
* cards whose instances are restricted to thing classes (a panoptic model run in instance mode)
  exclude the other classes before the top-k (their logits are set to -inf).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from tilesegcli.device import select_device
from tilesegcli.errors import UsageError
from tilesegcli.nn.inputs import channel_stats, tiles_to_input
from tilesegcli.segmenter import TileResult, label_means

if TYPE_CHECKING:
    from tilesegcli.zoo import ModelCard

log = logging.getLogger(__name__)


def build_model(card: ModelCard) -> nn.Module:
    """The randomly initialised network a card describes (weights are loaded separately)."""
    from tilesegcli.nn.aff_m2f import build_aff_m2f

    arch = card.architecture
    bkw = dict(arch.get("backbone_kwargs", {}))
    for k, v in list(bkw.items()):
        if isinstance(v, (list, tuple)):
            bkw[k] = tuple(v)
    try:
        return build_aff_m2f(str(arch["backbone"]), backbone_kwargs=bkw,
                             **dict(arch.get("head_kwargs", {})))
    except (KeyError, TypeError, ValueError) as e:
        from tilesegcli.zoo import InvalidCardError

        raise InvalidCardError(f"model {card.name}: cannot build its architecture: {e}") from None


def load_weights(model: nn.Module, path: str | Path, card: ModelCard) -> None:
    """Strictly load a checkpoint file (official detectron2, ours, or safetensors) into model."""
    from tilesegcli.nn.aff_m2f import IGNORED_CHECKPOINT_KEYS
    from tilesegcli.weights import extract_state_dict, load_state_dict_strict, load_weights_file

    sd = extract_state_dict(load_weights_file(path), source=str(path))
    sd = {k[len("module."):] if k.startswith("module.") else k: v for k, v in sd.items()}
    ignore = set(card.weights.ignore_keys) | set(IGNORED_CHECKPOINT_KEYS)
    load_state_dict_strict(model, sd, ignore_keys=ignore, source=str(path))


class AFFSegmenter:
    """Segmenter for AFF + Mask2Former cards; build with ``from_card`` or ``zoo.load_segmenter``."""

    def __init__(self, card: ModelCard, model: nn.Module, *, device: str = "auto",
                 amp: bool = True, weights_path: str | Path | None = None,
                 weights_sha256: str | None = None) -> None:
        self.card = card
        self.name = card.name
        self.task = card.task
        self.classes = list(card.classes)
        self.mpp = card.mpp
        self.mpp_unit = card.mpp_unit
        self.tile_size = card.tile_size
        self.overlap = card.overlap
        self.min_area = card.min_area
        self.weights_path = None if weights_path is None else str(weights_path)
        self.weights_sha256 = weights_sha256
        self.device = select_device(device)
        self.amp = bool(amp) and self.device.type == "cuda"  # AMP on CUDA only
        self._amp_dtype = torch.float16
        self.model = model.to(self.device).eval()
        # A tile's result must not depend on which tiles share its batch (resume, sharding and
        # --batch-size would otherwise change outputs): per image, as official at batch 1.
        model.set_batch_independent(True)
        self._mean, self._std = channel_stats(card.mean, card.std, self.device)
        self._div = max(1, int(card.size_divisibility))
        off = card.class_offset
        n_model = card.num_model_classes
        allowed = [k for k in range(n_model) if k + off in set(card.thing_classes)]
        self._excluded = sorted(set(range(n_model)) - set(allowed)) if card.task == "instance" else []
        self._things = frozenset(k - off for k in card.thing_classes)
        #: the class of instances the HoVer stage adds (``postprocess.hv_add``)
        self._new_class = int(card.thing_classes[0]) if card.thing_classes else 1
        #: stride of the network's mask logits relative to its input
        self.mask_stride = int(getattr(getattr(model, "sem_seg_head", None), "mask_stride", 4))
        #: test-time flips (instance cards): passes per tile, merged by ``vote_views``
        self.flip_views = int(card.postprocess.get("flip_views", 1)) if card.task == "instance" else 1
        #: tile views computed so far by a multi-view card (with ``view_agreement``, fewer than
        #: tiles x flip_views); a statistic for benchmarks, not exact under several model threads
        self.views_run = 0
        #: flip views whose HoVer maps are computed and averaged (``postprocess.hv_views``;
        #: 0 = all): the HoVer head costs ~0.6x of the rest of the network per view
        self.hv_views = int(card.postprocess.get("hv_views", 0))
        from tilesegcli.nn.postprocess import VIEW_COUNTS

        if self.flip_views not in VIEW_COUNTS:
            raise UsageError(f"model {card.name}: postprocess.flip_views must be one of "
                             f"{', '.join(map(str, VIEW_COUNTS))}, not {self.flip_views}")

    @classmethod
    def from_card(cls, card: ModelCard, *, weights: str | Path | None = None,
                  device: str = "auto", amp: bool = True) -> AFFSegmenter:
        from tilesegcli.weights import resolve_weights, sha256_file

        path = resolve_weights(card, weights)
        model = build_model(card)
        load_weights(model, path, card)
        sha = card.weights.sha256 if weights is None and card.weights.sha256 else sha256_file(path)
        return cls(card, model, device=device, amp=amp, weights_path=path, weights_sha256=sha)

    # ------------------------------------------------------------------------------ inference

    def _prepare(self, tiles: np.ndarray) -> torch.Tensor:
        if not isinstance(tiles, np.ndarray) or tiles.ndim != 4 or tiles.shape[-1] != 3:
            raise ValueError(f"tiles must be a (B, H, W, 3) array, got "
                             f"{getattr(tiles, 'shape', type(tiles))}")
        if tiles.dtype != np.uint8:
            raise ValueError(f"tiles must be uint8 RGB, got {tiles.dtype}")
        return tiles_to_input(tiles, self._mean, self._std, self._div, self.device)

    def _amp_model(self, x: torch.Tensor, hv_rows: int | None = None) -> dict:
        """Mixed precision like the official code: backbone and transformer decoder under
        autocast, the pixel decoder in fp32 (it is numerically sensitive: Shepard weights)."""
        dev, dt = self.device.type, self._amp_dtype
        head = getattr(self.model, "sem_seg_head", None)
        if head is None or not hasattr(head, "pixel_decoder") or not hasattr(head, "predictor"):
            with torch.autocast(dev, dtype=dt):
                return self._call(x, hv_rows)
        with torch.autocast(dev, dtype=dt):
            feats = self.model.backbone(x)
        with torch.autocast(dev, enabled=False):
            pd = head.pixel_decoder(feats)
        with torch.autocast(dev, dtype=dt):
            return head.decode(pd, with_aux=False, images=x, hv_rows=hv_rows)

    def _forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, Maps | None]:
        """(B, V*Q, K+1) logits, (B, V*Q, h, w) masks of the V views mapped back to the tile,
        the views' dense maps averaged (:data:`Maps`) or None.

        With ``postprocess.view_agreement`` a > 0 (and V >= 4), every tile first gets views 0
        and 1 (as is, flipped left-right); only the tiles where these two disagree (F1 below a
        between the instances each view alone gives, :func:`view_agreement`) get the other V - 2. A tile that stopped early carries
        copies of its two views in the other slots, which :func:`vote_views` merges exactly as
        it merges two views (each copy adds the same vote, the mean is unchanged)."""
        from tilesegcli.nn.postprocess import view_transforms

        if self.flip_views == 1:
            return self._forward_once(x)
        views = view_transforms(self.flip_views)
        a = float(self.card.postprocess.get("view_agreement", 0.0))
        if a <= 0 or self.flip_views < 4:
            lg, mk, maps = self._forward_views(x, views)
            self.views_run += len(views) * x.shape[0]
            return torch.cat(lg, 1), torch.cat(mk, 1), _mean_maps(maps)
        from tilesegcli.nn.postprocess import view_agreement

        lg, mk, maps = self._forward_views(x, views[:2])
        hw = (int(x.shape[-2]), int(x.shape[-1]))
        more = torch.tensor([view_agreement(*(self._instance_inference(lg[v][i], mk[v][i], hw, 1)
                                              .labels for v in (0, 1))) < a
                             for i in range(x.shape[0])], dtype=torch.bool)
        lg = lg + [lg[i % 2].clone() for i in range(2, len(views))]
        mk = mk + [mk[i % 2].clone() for i in range(2, len(views))]
        mean = _mean_maps(maps)
        if bool(more.any()):
            lg2, mk2, maps2 = self._forward_views(x[more], views[2:], first=2)
            for j in range(len(views) - 2):
                lg[2 + j][more], mk[2 + j][more] = lg2[j], mk2[j]
            if mean is not None and maps is not None and maps2 is not None:
                # a tile that got more views: the mean of all its views' maps (the first
                # ``hv_views`` of them for "hv")
                for k, m2 in maps2.items():
                    mean[k][more] = torch.cat([maps[k][:, more], m2]).mean(0)
        self.views_run += 2 * x.shape[0] + (len(views) - 2) * int(more.sum())
        return torch.cat(lg, 1), torch.cat(mk, 1), mean

    def _forward_views(self, x: torch.Tensor, views: list[tuple[bool, tuple[int, ...]]],
                       first: int = 0
                       ) -> tuple[list[torch.Tensor], list[torch.Tensor], Maps | None]:
        """Each of ``views`` (transposed?, flipped dims; view ``first`` onwards of the card's) of
        the B tiles, mapped back: lists of (B, Q, K+1) logits and (B, Q, h, w) masks, and the
        dense maps with a leading view axis (V, B, ...; "hv" of the first ``hv_views`` views
        only) or None. One batch of B x (views) copies per orientation."""
        b = x.shape[0]
        out: dict[int, tuple[torch.Tensor, torch.Tensor, Maps | None]] = {}
        for transposed in (False, True):
            idx = [i for i, (t, _) in enumerate(views) if t == transposed]
            if not idx:
                continue
            xt = x.transpose(2, 3) if transposed else x
            flips = [views[i][1] for i in idx]
            # idx ascends, so the views that get HoVer maps come first in the batch
            hv_rows = (None if self.hv_views <= 0
                       else b * sum(first + i < self.hv_views for i in idx))
            logits, masks, maps = self._forward_once(
                torch.cat([xt.flip(d) if d else xt for d in flips]), hv_rows)
            for n, (i, d) in enumerate(zip(idx, flips, strict=True)):
                m = masks[n * b:(n + 1) * b]
                m = m.flip(d) if d else m
                back = None if maps is None else {
                    k: unview_map(k, v[n * b:(n + 1) * b], transposed, d)
                    for k, v in maps.items() if len(v) >= (n + 1) * b}
                out[i] = (logits[n * b:(n + 1) * b], m.transpose(2, 3) if transposed else m, back)
        order = [out[i] for i in range(len(views))]
        all_maps = [o[2] for o in order if o[2]]
        keys = dict.fromkeys(k for m in all_maps for k in m)
        stacked = {k: torch.stack([m[k] for m in all_maps if k in m]) for k in keys}
        return [o[0] for o in order], [o[1] for o in order], stacked or None

    def _forward_once(self, x: torch.Tensor, hv_rows: int | None = None
                      ) -> tuple[torch.Tensor, torch.Tensor, Maps | None]:
        with torch.inference_mode():
            if self.amp:
                out = self._amp_model(x, hv_rows)
                logits, masks = out["pred_logits"].float(), out["pred_masks"].float()
                if bool(torch.isfinite(logits).all()) and bool(torch.isfinite(masks).all()):
                    return logits, masks, dense_maps(out)
                log.warning("%s: fp16 outputs not finite; recomputing the batch in fp32", self.name)
            out = self._call(x, hv_rows)
            return out["pred_logits"].float(), out["pred_masks"].float(), dense_maps(out)

    def _call(self, x: torch.Tensor, hv_rows: int | None = None) -> dict:
        # inference needs no auxiliary (per-layer) predictions; only AFF-Mask2Former heads
        # take ``hv_rows``
        if hv_rows is None:
            return self.model(x, with_aux=False)
        return self.model(x, with_aux=False, hv_rows=hv_rows)

    def forward(self, tiles: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """Raw network outputs on CPU: pred_logits (B, Q, K+1), pred_masks (B, Q, h/s, w/s),
        s = ``mask_stride`` (4; 2 for heads with stride-2 mask features). With ``flip_views``
        V > 1 the V views' candidates are concatenated: V*Q per tile (``tile_result`` merges them)."""
        logits, masks, _ = self.forward_maps(tiles)
        return logits, masks

    def forward_maps(self, tiles: np.ndarray
                     ) -> tuple[torch.Tensor, torch.Tensor, Maps | None]:
        """``forward`` plus the dense maps of heads that have them (:data:`Maps`: "fg" of a
        ``fg_head``, "hv" of an ``hv_head``; mean over the flip views), else None."""
        logits, masks, maps = self._forward(self._prepare(tiles))
        return logits.cpu(), masks.cpu(), None if maps is None else {k: v.cpu()
                                                                     for k, v in maps.items()}

    def predict_batch(self, tiles: np.ndarray) -> list[TileResult]:
        """tiles: (B, H, W, 3) uint8 RGB at the card's resolution -> B TileResults."""
        if len(tiles) == 0:
            return []
        logits, masks, maps = self.forward_maps(tiles)
        hw = (int(tiles.shape[1]), int(tiles.shape[2]))
        return [self.tile_result(logits[i], masks[i], hw, maps=tile_maps(maps, i))
                for i in range(len(tiles))]

    # ------------------------------------------------------------------------------ conversion

    def _semantic(self, logits: torch.Tensor, masks: torch.Tensor,
                  hw: tuple[int, int]) -> np.ndarray:
        from tilesegcli.nn.postprocess import semantic_inference

        s = semantic_inference(logits, masks, hw, stride=self.mask_stride).float().clamp_(min=0)
        if self.card.background == "implicit":
            out = torch.empty((s.shape[0] + 1, *s.shape[1:]), dtype=torch.float32)
            torch.amax(s, 0, out=out[0])
            out[0].neg_().add_(1.0).clamp_(min=0)
            out[1:] = s
            del s
        else:
            out = s
        out /= out.sum(0, keepdim=True).clamp_(min=1e-6)
        return out.numpy()

    def tile_result(self, logits: torch.Tensor, masks: torch.Tensor, hw: tuple[int, int], *,
                    score_threshold: float | None = None, maps: Maps | None = None,
                    fg_gate: float | None = None) -> TileResult:
        """One tile's raw outputs (``forward_maps``) -> TileResult with the card's
        post-processing; ``score_threshold`` / ``fg_gate`` override the card's (sweeps reuse one
        forward pass). ``maps``: the tile's dense maps (:func:`tile_maps`): "fg" for the gate,
        "hv" for the HoVer stage (``postprocess.hv_post``, ``tilesegcli.nn.hv_split``)."""
        from tilesegcli.nn.postprocess import panoptic_inference

        post = self.card.postprocess
        off = self.card.class_offset
        if self.task == "semantic":
            return TileResult(semantic=self._semantic(logits, masks, hw))
        if self.task == "instance":
            inst = self._instance_inference(logits, masks, hw, self.flip_views, score_threshold)
            gate = float(post.get("fg_gate", 0.0) if fg_gate is None else fg_gate)
            labels, classes, scores = inst.labels, inst.classes + off, inst.scores
            if gate > 0 and maps is not None and "fg" in maps:
                labels, classes, scores = gate_instances(labels, classes, scores, maps["fg"], gate)
            if maps is not None and "hv" in maps and post.get("hv_post", False):
                from tilesegcli.nn.hv_split import HVSplit

                labels, classes, scores = HVSplit.from_postprocess(post).apply(
                    labels, classes, scores, maps["hv"], new_class=self._new_class)
            return self._instances(labels, classes, scores)
        sem = self._semantic(logits, masks, hw)
        pan = panoptic_inference(
            logits, masks, hw, thing_classes=self._things,
            object_mask_threshold=float(post.get("object_mask_threshold", 0.8)),
            overlap_threshold=float(post.get("overlap_threshold", 0.8)), stride=self.mask_stride)
        labels = np.zeros(hw, np.int32)
        classes, scores = [], []
        for seg in pan.info:
            if not seg["isthing"]:
                continue
            m = pan.segments == seg["id"]
            c = int(seg["category_id"]) + off
            labels[m] = len(classes) + 1
            classes.append(c)
            scores.append(float(sem[c][m].mean()))
        return self._instances(labels, np.asarray(classes, np.int64),
                               np.asarray(scores, np.float32), semantic=sem)

    def _instance_inference(self, logits: torch.Tensor, masks: torch.Tensor,
                            hw: tuple[int, int], views: int,
                            score_threshold: float | None = None) -> Any:
        """The card's instance post-processing of one tile's candidates from ``views`` views
        (classes outside the card's things excluded, then voted when there are several)."""
        from tilesegcli.nn.postprocess import instance_inference, vote_views

        if self._excluded:
            logits = logits.clone()
            logits[:, self._excluded] = float("-inf")
        post = self.card.postprocess
        topk = int(post.get("top_k", 100))
        if views > 1:
            logits, masks = vote_views(logits, masks, views)
            topk = max(1, len(logits))
        thr = float(post.get("score_threshold", 0.0) if score_threshold is None else score_threshold)
        return instance_inference(logits, masks, hw, topk=topk, score_threshold=thr,
                                  stride=self.mask_stride,
                                  min_visible=float(post.get("min_visible_fraction", 0.0)),
                                  cleanup_radius=int(post.get("cleanup_radius", -1)),
                                  mask_threshold=float(post.get("mask_threshold", 0.5)))

    def _instances(self, labels: np.ndarray, classes: np.ndarray, scores: np.ndarray,
                   semantic: np.ndarray | None = None) -> TileResult:
        """Drop instances under min_area pixels and renumber the rest 1..K (order kept)."""
        labels = np.asarray(labels, np.int32)
        n = len(scores)
        if n:
            area = np.bincount(labels.ravel(), minlength=n + 1)[1:]
            labels, classes, scores = keep_instances(labels, classes, scores,
                                                     area >= max(1, self.min_area))
        return TileResult(semantic=semantic, labels=labels,
                          instance_classes=np.asarray(classes, np.int64),
                          instance_scores=np.asarray(scores, np.float32))

    def describe(self) -> dict[str, Any]:
        """Provenance: card fingerprint, weights, device."""
        return {"name": self.name, "card_fingerprint": self.card.fingerprint(),
                "card_source": self.card.source, "weights": self.weights_path,
                "weights_sha256": self.weights_sha256, "device": str(self.device),
                "amp": self.amp}


#: a batch's dense maps by name: "fg" (B, h/4, w/4) foreground probability of a ``fg_head``;
#: "hv" (B, 3, h/2, w/2) of an ``hv_head``: nucleus probability, horizontal and vertical maps
Maps = dict[str, torch.Tensor]


def dense_maps(out: dict) -> Maps | None:
    """The dense maps of a head's outputs (``pred_fg`` / ``pred_hv`` logits), None without any."""
    maps: Maps = {}
    if out.get("pred_fg") is not None:
        maps["fg"] = out["pred_fg"][:, 0].float().sigmoid()
    if out.get("pred_hv") is not None:
        hv = out["pred_hv"].float()
        maps["hv"] = torch.cat([hv[:, :1].sigmoid(), hv[:, 1:]], 1)
    return maps or None


def unview_map(key: str, m: torch.Tensor, transposed: bool, dims: tuple[int, ...]) -> torch.Tensor:
    """A dense map computed on a flipped (``dims`` of the (B, 3, H, W) input) and/or transposed
    tile, mapped back to the tile. "fg" (B, h, w) moves with the pixels; "hv" (B, 3, h, w) also
    changes sign where its axis was flipped (h along x = dim 3, v along y = dim 2) and swaps h
    and v where the tile was transposed."""
    if key == "fg":
        m = m.flip([k - 1 for k in dims]) if dims else m  # one dim fewer than the input
        return m.transpose(1, 2) if transposed else m
    if dims:
        m = m.flip(dims)
        sign = torch.ones(3, dtype=m.dtype)
        sign[1], sign[2] = (-1.0 if 3 in dims else 1.0), (-1.0 if 2 in dims else 1.0)
        m = m * sign.view(1, 3, 1, 1).to(m.device)
    if transposed:
        m = m.transpose(2, 3)[:, [0, 2, 1]]
    return m


def _mean_maps(maps: Maps | None) -> Maps | None:
    """Maps with a leading view axis -> their mean over the views."""
    return None if maps is None else {k: v.mean(0) for k, v in maps.items()}


def tile_maps(maps: Maps | None, i: int) -> Maps | None:
    """Tile ``i``'s maps of a batch."""
    return None if maps is None else {k: v[i] for k, v in maps.items()}


def gate_instances(labels: np.ndarray, classes: np.ndarray, scores: np.ndarray,
                   fg: torch.Tensor, gate: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Drop instances whose mean foreground probability (``fg`` on the stride-4 canvas,
    bilinearly resized to the tile) is below ``gate``; the rest renumbered 1..K in order."""
    labels = np.asarray(labels)
    n = len(scores)
    if n == 0:
        return labels, classes, scores
    h, w = labels.shape
    up = F.interpolate(fg[None, None].float(), size=(fg.shape[-2] * 4, fg.shape[-1] * 4),
                       mode="bilinear", align_corners=False)[0, 0, :h, :w].numpy()
    return keep_instances(labels, classes, scores, label_means(labels, up, n) >= gate)


def keep_instances(labels: np.ndarray, classes: np.ndarray, scores: np.ndarray, keep: np.ndarray
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The instances where ``keep`` (per instance 1..n) holds, renumbered 1..K in order."""
    if keep.all():
        return labels, classes, scores
    remap = np.zeros(len(keep) + 1, labels.dtype)
    remap[1:][keep] = np.arange(1, int(keep.sum()) + 1, dtype=labels.dtype)
    return remap[labels], np.asarray(classes)[keep], np.asarray(scores)[keep]
