"""The one place that turns ``--device`` / a card's or training config's ``device`` into a torch
device: ``auto`` (first CUDA device when available, else CPU), ``cpu``, ``cuda`` or ``cuda:N``
(checked against the visible devices). torch is imported only when called."""

from __future__ import annotations

from typing import TYPE_CHECKING

from tilesegcli.errors import UsageError

if TYPE_CHECKING:
    import torch


def select_device(device: str | torch.device | None = "auto") -> torch.device:
    """The torch device for ``device``; a clear UsageError for anything unavailable or unknown."""
    import torch

    text = str(device or "auto").strip().lower()
    if text == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if text == "cpu":
        return torch.device("cpu")
    if text == "cuda" or (text.startswith("cuda:") and text[5:].isdigit()):
        if not torch.cuda.is_available():
            raise UsageError(f"--device {device}: CUDA is not available on this machine "
                             "(use --device cpu or auto)")
        dev = torch.device(text)
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise UsageError(f"--device {device}: only {torch.cuda.device_count()} CUDA "
                             "device(s) visible")
        return dev
    raise UsageError(f"--device must be auto, cpu, cuda or cuda:N, not {device!r}")


def resolve_device(device: str | None) -> str:
    """``select_device`` as a string ("cpu", "cuda", "cuda:1")."""
    return str(select_device(device))
