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

from tilesegcli.config import parse_shard
from tilesegcli.formats import FORMATS

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


class _LowerLevelFormatter(logging.Formatter):
    """``tileseg: error: ...``, ``tileseg: warning: ...``: the same style as main()'s errors."""

    def format(self, record: logging.LogRecord) -> str:
        record = logging.makeLogRecord(record.__dict__)
        record.levelname = record.levelname.lower()
        return super().format(record)


def setup_logging(level: str | None, quiet: bool) -> None:
    name = level or ("warning" if quiet else "info")
    logger = logging.getLogger("tileseg")
    logger.handlers.clear()
    h = logging.StreamHandler(sys.stderr)
    h.setFormatter(_LowerLevelFormatter("tileseg: %(levelname)s: %(message)s"))
    logger.addHandler(h)
    logger.setLevel(getattr(logging, name.upper()))
    logger.propagate = False


def parse_shard_option(ctx: click.Context, param: click.Parameter,
                       value: str | None) -> tuple[int, int]:
    """``--shard`` through the one parser (tilesegcli.config.parse_shard): a usage error names
    the option and exits 2."""
    from tilesegcli.errors import UsageError

    try:
        return parse_shard(value)
    except UsageError as e:
        raise click.BadParameter(str(e).removeprefix("--shard ").removeprefix("--shard: ")) from None


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
