"""Shared test fixtures. Tests needing ../shared data use `shared_dir` and skip cleanly without it.

Pipeline/CLI fixtures (tests/pipeline, tests/cli): small synthetic slides (built in code, fixed
seeds), a CLI runner that goes through the real ``main()`` error mapping, an order/UUID-free view
of a GeoJSON output for comparing runs, and a finder of leftover temp files."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

# Set before torch is imported anywhere (see tilesegcli.cli.main.main).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

SHARED = Path(os.environ.get("TILESEG_SHARED", Path(__file__).resolve().parents[2] / "shared"))

# Test modules are imported with --import-mode=importlib, which puts nothing on sys.path; append
# tests/ (behind every installed package) so they can share helper modules, e.g.
# `from nn._helpers import n_params` for tests/nn/_helpers.py.
_TESTS = str(Path(__file__).resolve().parent)
if _TESTS not in sys.path:
    sys.path.append(_TESTS)


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


@pytest.fixture
def one_thread(_few_threads: None) -> Iterator[None]:
    """One intra-op torch thread for the test (opt in with usefixtures): nets that run many tiny
    ops only gain contention from a second thread on shared cores."""
    import torch

    prev = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(prev)


# ---------------------------------------------------------------- pipeline / CLI fixtures
@pytest.fixture(scope="session")
def slide_svs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """1400 x 1100 px H&E-like JPEG SVS at 0.5 µm/px (about 30 tiles of the simple net)."""
    from tilesegcli.testing import synthetic

    p = tmp_path_factory.mktemp("slides") / "tissue.svs"
    return synthetic.write_slide_tiff(p, synthetic.tissue_like(1400, 1100, seed=3), kind="svs",
                                      mpp=0.5, tile=256)


@pytest.fixture(scope="session")
def big_svs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """2000 x 1800 px slide: enough tiles (~60) to kill a run in the middle."""
    from tilesegcli.testing import synthetic

    p = tmp_path_factory.mktemp("slides") / "big.svs"
    return synthetic.write_slide_tiff(p, synthetic.tissue_like(2000, 1800, seed=5, n_blobs=5),
                                      kind="svs", mpp=0.5, tile=256)


def _features(path: Path) -> list[tuple]:
    data = json.loads(Path(path).read_text())
    out = []
    for f in data["features"]:
        import shapely

        g = shapely.normalize(shapely.from_geojson(json.dumps(f["geometry"])))
        p = f["properties"]
        out.append((p["objectType"], (p.get("classification") or {}).get("name"), g.wkt,
                    round(p.get("measurements", {}).get("Score", 0.0), 4)))
    return sorted(out)


@pytest.fixture
def feature_set() -> Callable[[Path], list[tuple]]:
    return _features


@pytest.fixture
def run_cli(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
            ) -> Callable[..., tuple[int, str, str]]:
    """Run ``tileseg ARGS`` in-process through main(); returns (exit code, stdout, stderr)."""
    from tilesegcli.cli.main import main

    def run(*args: str) -> tuple[int, str, str]:
        monkeypatch.setattr(sys, "argv", ["tileseg", *map(str, args)])
        capsys.readouterr()
        code = 0
        try:
            main()
        except SystemExit as e:
            code = int(e.code or 0)
        out, err = capsys.readouterr()
        return code, out, err

    return run


def leftovers(directory: Path) -> list[str]:
    """Temp files/dirs anything left behind (a '.tmp' in the name)."""
    return sorted(p.name for p in Path(directory).rglob("*") if ".tmp" in p.name)


@pytest.fixture
def tmp_leftovers() -> Callable[[Path], list[str]]:
    return leftovers
