"""Where a run writes and whether it may: output format and path per input, batch collisions,
skip-if-valid and writability checked before any compute (outputs are always written to a temp
name and published by ``tilesegcli.atomic``, which also sweeps the temps of killed processes)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from tilesegcli.config import RunConfig
from tilesegcli.errors import OutputError, UsageError
from tilesegcli.formats import FORMATS, SUFFIX, format_from_path


def output_format(output: Path | None, fmt: str | None) -> str:
    if fmt:
        if fmt not in FORMATS:
            raise UsageError(f"--format must be one of {', '.join(FORMATS)}, got {fmt!r}")
        return fmt
    if output is None:
        return "geojson"
    return format_from_path(output)


def output_for(input_path: Path, config: RunConfig, fmt: str) -> Path:
    """``-o`` when given, else ``<outdir or the input's folder>/<input stem><format suffix>``."""
    if config.output is not None:
        return Path(config.output)
    outdir = Path(config.outdir) if config.outdir is not None else input_path.parent
    stem = input_path.name
    for suf in (".ome.tiff", ".ome.tif"):
        if stem.lower().endswith(suf):
            stem = stem[: -len(suf)]
            break
    else:
        stem = input_path.stem
    return outdir / (stem + SUFFIX[fmt])


def validate_batch(paths: Sequence[Path], config: RunConfig) -> None:
    """Usage errors of a batch, raised before anything runs."""
    if config.output is not None and config.outdir is not None:
        raise UsageError("use either -o/--output or --outdir, not both")
    if config.output is not None and len(paths) > 1:
        raise UsageError("-o/--output takes one input; use --outdir for several")
    fmt = output_format(config.output, config.format)
    if config.output is None:
        outs = [output_for(p, replace(config, output=None), fmt) for p in paths]
        seen: dict[Path, Path] = {}
        for p, o in zip(paths, outs, strict=True):
            if o in seen and seen[o] != p:
                raise UsageError(f"{seen[o]} and {p} would both write {o}; use separate runs")
            seen[o] = p


def is_stdout(out: Path | str | None) -> bool:
    return out is not None and str(out) == "-"


def is_valid(out: Path, sha: str) -> bool:
    """``out`` exists with a provenance file recording this output fingerprint."""
    from tilesegcli.provenance import is_valid_output

    return is_valid_output(out, sha)


def check_skip(out: Path, out_sha: str, overwrite: bool) -> bool:
    """True when a valid output of this very run exists (skip the input); OutputError when
    something else sits at ``out`` and ``overwrite`` was not asked for."""
    if is_stdout(out) or overwrite:
        return False
    if is_valid(out, out_sha):
        return True
    if out.exists():
        raise OutputError(f"{out} exists and was not produced by this run; pass --overwrite")
    return False


def check_writable(out: Path, labels: Path | None) -> None:
    """Fail before any compute when an output cannot be written."""
    for p in (out, labels):
        if p is None or is_stdout(p):
            continue
        parent = Path(p).parent
        try:
            parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise OutputError(f"cannot create output directory {parent}: {e.strerror or e}") from None
        if not os.access(parent, os.W_OK | os.X_OK):
            raise OutputError(f"output directory {parent} is not writable")
