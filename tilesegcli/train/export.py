"""Export: a training checkpoint -> a zoo card (JSON) + its weights (safetensors, fp16 by default)
beside it, the weights renamed from training's ``TrainNet`` keys to the shipped network's
(``tileseg train --resume CKPT --export CARD``, ``training/export_nuclei.py``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from tilesegcli.errors import UsageError
from tilesegcli.train.checkpoint import load_training_state
from tilesegcli.train.config import TrainConfig
from tilesegcli.train.net import card_dict
from tilesegcli.weights import save_safetensors
from tilesegcli.zoo import write_card


def export_card(checkpoint: str | Path, card_path: str | Path, *, name: str, description: str,
                licence: str, metrics: dict[str, Any] | None = None,
                extra: dict[str, Any] | None = None, half: bool = True,
                overrides: dict[str, Any] | None = None) -> Path:
    """Checkpoint -> ``card_path`` (JSON) + weights (safetensors, fp16 if ``half``) beside it.
    ``overrides`` change inference fields of the saved configuration (e.g. score_threshold)."""
    state = load_training_state(checkpoint)
    cfg = TrainConfig.from_dict(state["config"]).with_updates(**(overrides or {}))
    sd = {k[len("model."):]: v for k, v in state["model"].items() if k.startswith("model.")}
    if cfg.fg_gate > 0 and not cfg.architecture["head_kwargs"].get("fg_head"):
        # the gate needs the dense head: shipped as the head's fg_head (a network that already
        # has one, e.g. fine-tuned from a card with a gate, ships its own)
        dense = {k: v for k, v in state["model"].items() if k.startswith("dense.")}
        if not dense:
            raise UsageError(f"{checkpoint}: fg_gate needs the auxiliary dense head, which this "
                             "checkpoint lacks (aux_dense_weight 0)")
        sd.update({f"sem_seg_head.fg_head.{k[len('dense.'):]}": v for k, v in dense.items()})
        arch = dict(cfg.architecture)
        arch["head_kwargs"] = {**arch["head_kwargs"], "fg_head": True}
        cfg = cfg.with_updates(architecture=arch)
    card_path = Path(card_path)
    try:
        card_path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UsageError(f"cannot create {card_path.parent}: {e.strerror or e}") from None
    wfile = card_path.with_suffix(".safetensors")
    sha = save_safetensors(sd, wfile, half=half)
    info = {"trained_steps": int(state["step"]), "training": extra or {}}
    card = card_dict(cfg, name, weights_file=wfile.name, sha256=sha, size=os.path.getsize(wfile),
                     description=description, licence=licence, metrics=metrics,
                     extra={"training_run": info})
    write_card(card, card_path)
    return card_path
