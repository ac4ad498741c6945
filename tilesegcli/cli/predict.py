"""``tileseg predict``: parse options -> RunConfig -> pipeline.predict -> exit code.

Exit status: 0 when every input succeeded (done, skipped, or this shard's part finished:
status "waiting", reported on stderr and in the summary as a run without its output),
1 when any input failed, 2 for usage errors. Results (output paths) go to stdout, logs and
progress to stderr.
"""

from __future__ import annotations

import json
import signal
import sys
from pathlib import Path
from typing import Any

import click

from tilesegcli.cli.options import (
    logging_options,
    output_options,
    parse_shard_option,
    read_input_list,
    setup_logging,
)
from tilesegcli.zoo import DEFAULT_MODEL


def _on_sigterm(signum: int, frame: object) -> None:
    # Unwind like Ctrl-C: the runner flushes finished tiles, temp outputs are removed.
    raise KeyboardInterrupt


def _summary_arg(args: list[str]) -> str | None:
    """The ``--summary`` value in raw arguments (for a summary of a run whose options click
    could not parse)."""
    for k, a in enumerate(args):
        if a == "--":
            break
        if a == "--summary" and k + 1 < len(args):
            return args[k + 1]
        if a.startswith("--summary="):
            return a.split("=", 1)[1]
    return None


class _PredictCommand(click.Command):
    """``--summary`` is written even when the options themselves are wrong (exit 2)."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        raw = list(args)
        try:
            return super().parse_args(ctx, args)
        except click.ClickException as e:
            path = _summary_arg(raw)
            if path:
                from tilesegcli.cli.main import click_error_line

                _write_failure_summary(Path(path), click_error_line(e), e.exit_code)
            raise


@click.command("predict", cls=_PredictCommand)
@click.argument("inputs", nargs=-1, type=click.Path(path_type=Path))
@click.option("-o", "--output", type=click.Path(path_type=Path, allow_dash=True), default=None,
              help="Output file for a single input ('-' = stdout).")
@click.option("--outdir", type=click.Path(path_type=Path, file_okay=False), default=None,
              help="Directory for outputs of many inputs (<name>.geojson).")
@click.option("--inputs", "input_list", type=str, default=None,
              help="File with one input path per line ('-' = stdin).")
@click.option("--model", default=DEFAULT_MODEL, show_default=True,
              help="Model card name, 'simple' (tiny test net) or 'package.module:factory'.")
@click.option("--weights", default=None, help="Weights file or URL overriding the card's.")
@click.option("--mpp", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Pixel size of level 0 (µm/px; m/px for GeoTIFFs) when missing or wrong.")
@click.option("--backend", type=click.Choice(["auto", "openslide", "tifffile", "pillow"]),
              default="auto", show_default=True, help="Image reader.")
@click.option("--roi", type=click.Path(path_type=Path, exists=True, dir_okay=False),
              default=None, help="Restrict to the polygons of this GeoJSON (QuPath export).")
@click.option("--no-mask", is_flag=True, help="Process every tile (no tissue/nodata mask).")
@click.option("--tile-size", type=click.IntRange(min=16), default=None,
              help="Tile edge in working pixels (default: model card).")
@click.option("--overlap", type=click.IntRange(min=0), default=None,
              help="Tile overlap in working pixels (default: model card).")
@click.option("--batch-size", type=click.IntRange(min=1), default=8, show_default=True,
              help="Tiles per model call.")
@click.option("--num-workers", type=click.IntRange(min=0), default=None,
              help="Tile reading threads (default: min(4, available cores); 0 = inline).")
@click.option("--model-threads", type=click.IntRange(min=1), default=None,
              help="Batches computed at once on the CPU, each with its share of the cores "
                   "(default: 1; try the number of cores for small tiles).")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
@click.option("--flips", type=click.Choice(["1", "2", "4", "8"]), default=None,
              help="Test-time flips of instance models: passes per tile, merged by mask voting "
                   "(default: the card's; aff-nuclei uses 4; 1 is 4x faster, less accurate; 8 adds "
                   "the transposed tile's flips).")
@click.option("--view-agreement", type=click.FloatRange(min=0), default=None, metavar="A",
              help="With 4 or 8 flips: every tile gets 2 views first, the others only where "
                   "those two agree less than A (F1 of their nuclei; 0 = always all views). "
                   "aff-nuclei: 0.8 runs 2.7 views per tile, 0.9 3.4 (card default 0).")
@click.option("--workdir", type=click.Path(path_type=Path, file_okay=False), default=None,
              help="Where tile stores live (default: next to the output).")
@click.option("--shard", callback=parse_shard_option, default=None, metavar="I/N|slurm[/N]",
              help="Process shard I of N (0-based) of every input; 'slurm' = this task of a SLURM "
                   "job array (SLURM_ARRAY_TASK_ID/COUNT); 'slurm/N' = shard TASK_ID of N "
                   "(--array=0-(N-1); a task resubmitted alone keeps its shard). Default: the "
                   "whole input, never sharded implicitly.")
@click.option("--overwrite", is_flag=True, help="Rewrite outputs that already exist.")
@click.option("--force", is_flag=True,
              help="Run a natural-image model (street scenes, photos: no physical pixel size) "
                   "on a microscopy slide anyway; refused without it.")
@output_options()
@click.option("--summary", type=click.Path(path_type=Path, allow_dash=True), default=None,
              help="Write a JSON run summary here ('-' = stdout).")
@click.option("--progress-every", "progress_every", type=click.FloatRange(min=0), default=30.0,
              show_default=True, envvar="TILESEG_PROGRESS_EVERY", metavar="SECONDS",
              help="When stderr is not a terminal: a progress line (tiles done/total, tiles/s, "
                   "ETA) this often and at every 10% (env TILESEG_PROGRESS_EVERY).")
@logging_options()
def predict(inputs: tuple[Path, ...], output: Path | None, outdir: Path | None,
            input_list: str | None, model: str, weights: str | None, mpp: float | None,
            backend: str, roi: Path | None, no_mask: bool, tile_size: int | None,
            overlap: int | None, batch_size: int, num_workers: int | None,
            model_threads: int | None, device: str,
            flips: str | None, view_agreement: float | None, workdir: Path | None,
            shard: tuple[int, int], overwrite: bool,
            force: bool, fmt: str | None,
            labels: Path | None, min_area: float | None, simplify: float | None,
            summary: Path | None, progress_every: float, quiet: bool,
            log_level: str | None) -> None:
    """Segment slides/GeoTIFFs and write polygons (QuPath/QGIS GeoJSON).

    \b
    $ tileseg predict slide.svs -o slide.geojson
    $ tileseg predict *.svs --outdir out/ --summary run.json
    $ ls *.ndpi | tileseg predict --inputs - --outdir out/ --device cuda
    $ tileseg predict big.svs -o big.geojson --shard 0/4   # ... 3/4 in the other jobs
    $ tileseg predict big.svs -o big.geojson --shard slurm # in each task of sbatch --array
    $ tileseg predict big.svs -o big.geojson --shard slurm/8  # sbatch --array=0-7
    """
    from tilesegcli.cli.main import click_error_line
    from tilesegcli.errors import TilesegError

    setup_logging(log_level, quiet)
    _log_header()
    try:
        results = _run(click.get_current_context().params)
    except (TilesegError, click.ClickException) as e:  # before any input ran: usage, model
        if summary is not None:
            msg = click_error_line(e) if isinstance(e, click.ClickException) else str(e)
            _write_failure_summary(summary, msg, e.exit_code)
        raise
    _log_results(results)
    if str(output) != "-" and str(summary) != "-":  # stdout carries one kind of result
        for r in results:
            if r.status in ("done", "skipped") and r.output:
                click.echo(r.output)
    failed = [r for r in results if r.status == "failed"]
    if summary is not None:
        _write_summary(summary, results, exit_code=1 if failed else 0)
    if failed:
        raise SystemExit(1)


def _run(p: dict[str, Any]) -> list:
    """The parsed options ``p`` (click's names) -> RunConfig fields -> pipeline.predict."""
    from tilesegcli import pipeline
    from tilesegcli.errors import UsageError
    from tilesegcli.runner import default_num_workers

    paths = [Path(x) for x in p["inputs"]]
    if p["input_list"] is not None:
        paths += [Path(x) for x in read_input_list(p["input_list"])]
    if not paths:
        raise UsageError("no inputs given (pass paths or --inputs FILE)")
    output, summary = p["output"], p["summary"]
    if str(output) == "-" and summary is not None and str(summary) == "-":
        raise UsageError("-o - and --summary - cannot both use stdout")
    same = ("weights", "mpp", "backend", "roi", "no_mask", "tile_size", "overlap", "batch_size",
            "device", "view_agreement", "workdir", "shard", "overwrite", "force", "labels",
            "min_area", "simplify", "quiet")
    options: dict[str, Any] = {k: p[k] for k in same}
    options.update(
        num_workers=default_num_workers() if p["num_workers"] is None else p["num_workers"],
        model_threads=1 if p["model_threads"] is None else p["model_threads"],
        flips=None if p["flips"] is None else int(p["flips"]),
        format=p["fmt"], progress_every_s=p["progress_every"],
        command_line=["tileseg", *sys.argv[1:]],
    )
    old = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        return pipeline.predict(paths, model=p["model"], output=output, outdir=p["outdir"],
                                **options)
    finally:
        signal.signal(signal.SIGTERM, old)


def _log_results(results: list) -> None:
    import logging

    from tilesegcli.progress import result_line

    log = logging.getLogger("tileseg")
    for r in results:
        log.info("%s", result_line(r))


def _log_header() -> None:
    import logging
    import os
    import socket

    from tilesegcli import __version__

    job = os.environ.get("SLURM_JOB_ID")
    task = os.environ.get("SLURM_ARRAY_TASK_ID")
    logging.getLogger("tileseg").info(
        "tileseg %s on %s pid %d%s", __version__, socket.gethostname(), os.getpid(),
        f" (SLURM job {job}{'_' + task if task else ''})" if job else "")


_STATUSES = ("done", "skipped", "waiting", "failed")


def _write_failure_summary(path: Path, message: str, exit_code: int) -> None:
    """The summary of a run that stopped before any input ran (bad options, unknown model)."""
    import logging

    data = {"ok": False, "complete": False, "exit_code": exit_code, "error": message,
            "counts": dict.fromkeys(_STATUSES, 0), "waiting": [], "slides": []}
    try:
        _emit_summary(path, data)
    except OSError as e:  # the run's own error is the one to report
        logging.getLogger("tileseg").warning("cannot write the summary %s: %s", path,
                                             e.strerror or e)


def _emit_summary(path: Path, data: dict) -> None:
    from tilesegcli.provenance import write_json

    if str(path) == "-":
        click.echo(json.dumps(data, indent=2))
    else:
        write_json(path, data)


def _write_summary(path: Path, results: list, exit_code: int) -> None:
    from tilesegcli.provenance import jsonable

    data = {
        "ok": all(r.ok for r in results),
        # ok but not complete: some input ended without its output (shards still to run)
        "complete": all(r.status in ("done", "skipped") for r in results),
        "exit_code": exit_code,
        "error": None,
        "counts": {s: sum(r.status == s for r in results) for s in _STATUSES},
        "waiting": [f"{r.input}: {r.note}" for r in results if r.status == "waiting"],
        "slides": [jsonable(r) for r in results],
    }
    _emit_summary(path, data)
