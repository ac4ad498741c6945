"""Model cards are package data of ``tilesegcli.models`` (issue 16.6): a user's folder named
``models`` (with an ``__init__.py``) in the working directory cannot shadow them, and a built
wheel carries every card and the bundled weights."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tilesegcli.zoo import card_names

ROOT = Path(__file__).resolve().parents[2]

# Loads the default model by name and runs it on one blank tile; prints where its files came from.
PROBE = """
import numpy as np, tilesegcli
from tilesegcli.zoo import load_card, load_segmenter
seg = load_segmenter("aff-nuclei", device="cpu")
out = seg.predict_batch(np.zeros((1, seg.tile_size, seg.tile_size, 3), np.uint8))
print(tilesegcli.__file__)
print(load_card("aff-nuclei").base_dir)
print(out[0].labels.shape)
"""


def _shadowing_cwd(tmp_path: Path) -> Path:
    cwd = tmp_path / "work"
    (cwd / "models").mkdir(parents=True)
    (cwd / "models" / "__init__.py").write_text("raise ImportError('the user models package')\n")
    (cwd / "models" / "aff-nuclei.json").write_text("{not a card")
    return cwd


def _probe(cwd: Path, pythonpath: Path | None = None) -> list[str]:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    if pythonpath is not None:
        env["PYTHONPATH"] = str(pythonpath)
    # `python -c` puts the working directory first on sys.path, as `python script.py` would
    p = subprocess.run([sys.executable, "-c", PROBE], cwd=cwd, env=env, capture_output=True,
                       text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    return p.stdout.splitlines()


def test_default_model_loads_next_to_a_user_models_package(tmp_path):
    cwd = _shadowing_cwd(tmp_path)
    pkg, base_dir, shape = _probe(cwd)
    assert Path(base_dir) == Path(pkg).parent / "models"
    assert shape == "(128, 128)"


def test_cli_lists_the_packaged_cards_from_such_a_folder(tmp_path):
    cwd = _shadowing_cwd(tmp_path)
    p = subprocess.run([sys.executable, "-m", "tilesegcli", "models", "show", "aff-nuclei"],
                       cwd=cwd, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert "tilesegcli/models/aff-nuclei.safetensors" in p.stdout


def test_wheel_carries_cards_and_weights(tmp_path):
    pytest.importorskip("setuptools")
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    shutil.copytree(ROOT / "tilesegcli", src / "tilesegcli",
                    ignore=shutil.ignore_patterns("__pycache__"))
    p = subprocess.run([sys.executable, "-m", "pip", "wheel", str(src), "--no-deps",
                        "--no-build-isolation", "-q", "-w", str(tmp_path / "whl")],
                       capture_output=True, text=True, timeout=300)
    if p.returncode != 0 and "No module named pip" in p.stderr:
        pytest.skip("pip is not available")
    assert p.returncode == 0, p.stderr
    [wheel] = list((tmp_path / "whl").glob("tileseg-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    cards = {f"tilesegcli/models/{n}.json" for n in card_names()}
    assert len(cards) >= 25 and cards <= names
    assert {"tilesegcli/models/aff-nuclei.safetensors", "tilesegcli/models/_classes.json",
            "tilesegcli/models/README.md"} <= names
    assert not [n for n in names if n.startswith("models/")]  # no top-level package any more
    # the unpacked wheel, alone on the path ahead of the editable install, runs the default model
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    pkg, base_dir, shape = _probe(_shadowing_cwd(tmp_path), pythonpath=site)
    assert Path(pkg).is_relative_to(site) and Path(base_dir) == site / "tilesegcli" / "models"
    assert shape == "(128, 128)"
