"""Shared test fixtures. Tests needing ../shared data use `shared_dir` and skip cleanly without it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

SHARED = Path(os.environ.get("TILESEG_SHARED", Path(__file__).resolve().parents[2] / "shared"))


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    if not SHARED.is_dir():
        pytest.skip("../shared not present")
    return SHARED


@pytest.fixture(scope="session")
def aff_fixtures(shared_dir: Path) -> Path:
    d = shared_dir / "fixtures" / "aff-official"
    if not d.is_dir():
        pytest.skip("AFF official fixtures not present")
    return d


@pytest.fixture(autouse=True)
def _few_threads() -> None:
    # Two cores on CI; keep torch from oversubscribing when several workers run.
    try:
        import torch
    except ImportError:  # pragma: no cover
        return
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
