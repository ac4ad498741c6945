"""Training checkpoints: the ``last.pt`` / ``best.pt`` files of a run (network and optimiser state,
sampler and RNG state, step, configuration) — finding one, saving one atomically, loading one
without executing code.

Not to be confused with a weights file (safetensors or a bare state dict, what a card ships):
that is ``tilesegcli.weights.load_weights_file``. A training checkpoint is always a torch zip
archive with a ``config`` and a ``step``; :func:`load_training_state` refuses anything else with
a message that says so.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tilesegcli.atomic import atomic_path
from tilesegcli.errors import UsageError, WeightsError, first_line

LAST, BEST = "last.pt", "best.pt"


def is_training_checkpoint(source: str) -> bool:
    """Whether ``--init-from SOURCE`` names a training checkpoint (``.pt`` file or run directory)
    rather than a zoo card."""
    p = Path(source)
    return p.suffix == ".pt" or p.is_dir()


def run_checkpoint(path: str | Path, *, best: bool = False) -> Path:
    """``path`` itself when it is a file; for a run directory its ``last.pt`` (with ``best``: its
    ``best.pt`` where there is one)."""
    p = Path(path)
    if not p.is_dir():
        return p
    if best and (p / BEST).is_file():
        return p / BEST
    return p / LAST


def save_training_state(state: dict[str, Any], path: Path) -> None:
    """Write a training checkpoint atomically (a killed run keeps its previous checkpoint)."""
    import torch

    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def load_training_state(path: str | Path, *, mmap: bool = False) -> dict[str, Any]:
    """A training checkpoint (safe unpickling only); ``mmap`` maps tensors lazily, for callers
    that only read its step or configuration."""
    import zipfile

    import torch

    if not Path(path).exists():
        raise UsageError(f"no checkpoint at {path}")
    if Path(path).is_file() and not zipfile.is_zipfile(path):
        raise WeightsError(f"cannot load checkpoint {path}: not a whole training checkpoint "
                           "(tileseg train writes zip archives; this is another file, "
                           "or truncated)")
    try:
        return torch.load(str(path), map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as e:  # truncated archive or refused pickle: torch's first line says which
        raise WeightsError(f"cannot load checkpoint {path}: "
                           f"{first_line(e, 200) or type(e).__name__}") from None
