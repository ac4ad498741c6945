"""What ``tileseg train --init-from SOURCE`` starts from: a training checkpoint (``.pt`` file or a
run directory with ``last.pt``) or a zoo card (name or path).

Owns reading SOURCE once: :func:`read_source` returns the model settings a fine-tuning run
inherits (network, classes, resolution, tiles, post-processing) and the weights as ``TrainNet``
state-dict keys. The CLI asks for the settings and the training loop for the weights; the last
source read is cached so the file is loaded once, and the loop clears the cache once the weights
are in the network.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from typing import Any

from tilesegcli.errors import UsageError
from tilesegcli.train.checkpoint import is_training_checkpoint

#: post-processing fields of a training configuration, stored under a card's ``postprocess``
POSTPROCESS_FIELDS = ("score_threshold", "object_mask_threshold", "overlap_threshold",
                      "min_visible_fraction", "cleanup_radius", "mask_threshold", "flip_views",
                      "fg_gate", "hv_post", "hv_views", "hv_split", "hv_edge", "hv_fg",
                      "hv_min_marker", "hv_trim", "hv_gate", "hv_add")

#: fields a fine-tuning run takes from the model it starts from (``--init-from``)
INHERITED_FIELDS = ("architecture", "class_names", "mpp", "mpp_unit", "tile", "overlap", "mean",
                    "std", "min_area", *POSTPROCESS_FIELDS)


@dataclass(frozen=True)
class InitSource:
    settings: dict[str, Any]  # TrainConfig fields (a subset of INHERITED_FIELDS)
    state_dict: dict[str, Any]  # TrainNet keys ("model." + network keys; a checkpoint may add more)


@functools.lru_cache(maxsize=1)
def read_source(source: str) -> InitSource:
    """Settings and weights of ``source`` (cached: the CLI and the loop share one read)."""
    if is_training_checkpoint(source):
        from tilesegcli.train.checkpoint import load_training_state, run_checkpoint

        state = load_training_state(run_checkpoint(source))
        cfg = state["config"]
        return InitSource({k: cfg[k] for k in INHERITED_FIELDS if k in cfg}, state["model"])
    from tilesegcli.weights import extract_state_dict, load_weights_file, resolve_weights
    from tilesegcli.zoo import load_card

    card = load_card(source)
    if card.task != "instance" or card.architecture.get("head") != "mask2former":
        raise UsageError(f"--init-from {source}: only AFF + Mask2Former instance cards can be "
                         f"fine-tuned by tileseg train (this one is {card.task})")
    post = dict(card.postprocess)
    settings: dict[str, Any] = {
        "architecture": json.loads(json.dumps(card.architecture, default=dict)),
        "class_names": [c.name for c in card.classes[1:]],
        "mpp_unit": card.mpp_unit, "tile": card.tile_size, "overlap": card.overlap,
        "mean": list(card.mean), "std": list(card.std), "min_area": card.min_area,
        **{k: post[k] for k in POSTPROCESS_FIELDS if k in post},
    }
    if card.mpp is not None:
        settings["mpp"] = card.mpp
    path = resolve_weights(card, None)
    weights = extract_state_dict(load_weights_file(path), source=str(path))
    return InitSource(settings, {f"model.{k}": v for k, v in weights.items()})


def inherited_settings(source: str) -> dict[str, Any]:
    """The model settings of ``--init-from`` SOURCE, so a fine-tuning run builds the same network
    at the same resolution by default (a fresh copy: callers may edit it)."""
    return json.loads(json.dumps(read_source(source).settings))
