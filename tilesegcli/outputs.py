"""Where a run writes and whether it may: the :class:`~tilesegcli.specs.OutputSpec` of each
input (format and path, resolved once), batch collisions, skip-if-valid and writability checked
once before any compute (outputs are always written to a temp name and published by
``tilesegcli.atomic``, which also sweeps the temps of killed processes)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from tilesegcli.config import RunConfig
from tilesegcli.errors import OutputError, UsageError
from tilesegcli.formats import FORMATS, SUFFIX, format_from_path
from tilesegcli.specs import OutputSpec


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


def output_spec(output: str | Path, fmt: str | None, *, labels: Path | None = None,
                min_area: float | None = None, simplify: float | None = None) -> OutputSpec:
    """The OutputSpec of an explicit output path (``-`` = stdout); format from ``fmt`` or the
    file name."""
    out = Path(output)
    return OutputSpec(out, output_format(out, fmt), labels, min_area, simplify)


def resolve_output(input_path: Path, config: RunConfig, fmt: str | None = None) -> OutputSpec:
    """The OutputSpec of one input of a run (``fmt``: the run's format, when resolved already)."""
    fmt = fmt or output_format(config.output, config.format)
    return OutputSpec(output_for(input_path, config, fmt), fmt, config.labels, config.min_area,
                      config.simplify)


def resolve_outputs(paths: Sequence[Path], config: RunConfig) -> list[OutputSpec]:
    """The OutputSpec of every input of a batch; usage errors (collisions) before anything runs."""
    if config.output is not None and config.outdir is not None:
        raise UsageError("use either -o/--output or --outdir, not both")
    if config.output is not None and len(paths) > 1:
        raise UsageError("-o/--output takes one input; use --outdir for several")
    fmt = output_format(config.output, config.format)
    specs = [resolve_output(p, config, fmt) for p in paths]
    seen: dict[Path, Path] = {}
    for p, spec in zip(paths, specs, strict=True):
        o = spec.path
        if o in seen and seen[o] != p:
            raise UsageError(f"{seen[o]} and {p} would both write {o}; use separate runs")
        seen[o] = p
    return specs


def is_valid(out: Path, sha: str) -> bool:
    """``out`` exists with a provenance file recording this output fingerprint."""
    from tilesegcli.provenance import is_valid_output

    return is_valid_output(out, sha)


def check_skip(output: OutputSpec, out_sha: str, overwrite: bool) -> bool:
    """True when a valid output of this very run exists (skip the input); OutputError when
    something else sits at the output path and ``overwrite`` was not asked for."""
    out = output.path
    if output.to_stdout or overwrite:
        return False
    if is_valid(out, out_sha):
        return True
    if out.exists():
        raise OutputError(f"{out} exists and was not produced by this run; pass --overwrite")
    return False


def check_writable(output: OutputSpec) -> None:
    """Fail before any compute when an output cannot be written."""
    for p in (output.path, output.labels):
        if p is None or str(p) == "-":
            continue
        parent = Path(p).parent
        try:
            parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise OutputError(f"cannot create output directory {parent}: {e.strerror or e}") from None
        if not os.access(parent, os.W_OK | os.X_OK):
            raise OutputError(f"output directory {parent} is not writable")
