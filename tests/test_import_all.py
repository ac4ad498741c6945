"""Every module of the package imports on this Python (issue 16.5): an import error anywhere
(a ``typing`` name newer than ``requires-python``, a missing dependency, a syntax error) fails
here instead of at a user's first run of the command that needs it."""

from __future__ import annotations

import importlib
import pkgutil
import sys
import tomllib
from pathlib import Path

import pytest

import tilesegcli

MODULES = sorted(m.name for m in pkgutil.walk_packages(tilesegcli.__path__, "tilesegcli.")
                 if not m.name.endswith("__main__"))  # __main__ runs the CLI when imported


def test_walk_finds_the_whole_package():
    assert len(MODULES) > 60
    assert {"tilesegcli.writers.sink", "tilesegcli.cli.predict",
            "tilesegcli.nn.aff"} <= set(MODULES)


@pytest.mark.parametrize("name", MODULES)
def test_module_imports(name):
    importlib.import_module(name)


def test_requires_python_matches_what_the_code_needs():
    meta = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())
    spec = meta["project"]["requires-python"]
    assert spec == ">=3.11"  # typing.Self (writers/sink.py), tomllib
    assert sys.version_info >= (3, 11)
    assert meta["tool"]["ruff"]["target-version"] == "py311"
