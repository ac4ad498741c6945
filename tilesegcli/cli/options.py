"""Reusable click options of ``tileseg predict`` / ``tileseg merge`` and the logging setup.

Only click, the standard library and tilesegcli.config (stdlib only) are imported here, so
``tileseg --help`` stays fast.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from tilesegcli.config import FORMATS

F = Callable[..., Any]


def _compose(*decorators: Callable[[F], F]) -> Callable[[F], F]:
    def wrap(f: F) -> F:
        for d in reversed(decorators):
            f = d(f)
        return f

    return wrap


def output_options() -> Callable[[F], F]:
    """Options deciding what is written (shared by predict and merge)."""
    return _compose(
        click.option("--format", "fmt", type=click.Choice(FORMATS), default=None,
                      help="Output format (default: from the output suffix; qupath = level-0 pixels even for GeoTIFFs)."),
        click.option("--labels", type=click.Path(path_type=Path), default=None,
                     help="Also write an OME-Zarr label image here."),
        click.option("--min-area", type=click.FloatRange(min=0), default=None,
                     help="Drop objects/regions smaller than this (µm², or m² for GeoTIFFs)."),
        click.option("--simplify", type=click.FloatRange(min=0), default=None,
                     help="Simplify polygons with this tolerance (µm, or m)."),
    )


def logging_options() -> Callable[[F], F]:
    return _compose(
        click.option("-q", "--quiet", is_flag=True, help="No progress bars, warnings only."),
        click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error"]),
                     default=None, help="Logging level on stderr (default info, warning if -q)."),
    )


def setup_logging(level: str | None, quiet: bool) -> None:
    name = level or ("warning" if quiet else "info")
    logger = logging.getLogger("tileseg")
    logger.handlers.clear()
    h = logging.StreamHandler(sys.stderr)
    h.setFormatter(logging.Formatter("tileseg: %(levelname)s: %(message)s"))
    logger.addHandler(h)
    logger.setLevel(getattr(logging, name.upper()))
    logger.propagate = False


def parse_shard_option(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    if value is None:
        return None
    parts = value.split("/")
    if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
        raise click.BadParameter("must look like I/N, e.g. 0/4")
    i, n = int(parts[0]), int(parts[1])
    if n < 1 or i >= n:
        raise click.BadParameter(f"need 0 <= I < N, got {value}")
    return value


def read_input_list(source: str) -> list[str]:
    """Lines of a file (or stdin for ``-``); blank lines and ``#`` comments ignored."""
    if source == "-":
        text = sys.stdin.read()
    else:
        try:
            text = Path(source).read_text()
        except OSError as e:
            raise click.BadParameter(f"cannot read {source}: {e.strerror}", param_hint="--inputs") from None
    return [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
