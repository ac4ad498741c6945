"""The only place that sees every stage: input -> reader -> level -> grid -> foreground tiles ->
runner(Segmenter) -> tile store -> (when every tile of every shard is done) stitch -> write.

Public API (no click here)::

    from tilesegcli.pipeline import predict
    results = predict(["a.svs", "b.tif"], model="aff-nuclei", outdir="out/")
    results = predict("slide.svs", segmenter=my_model, output="slide.geojson")

``segmenter`` may be ANY object implementing :class:`tilesegcli.segmenter.Segmenter`: attributes
``name, task ("semantic"|"instance"|"panoptic"), classes (ClassInfo, index 0 = background), mpp,
mpp_unit, tile_size, overlap`` and ``predict_batch(uint8 (B, H, W, 3)) -> list[TileResult]``.
An optional ``weights_sha256`` attribute enters the run fingerprint (so a store made with other
weights is refused) and an optional ``card`` (dict) is copied into the provenance file.

Flow of ``run_slide``: open the reader -> choose the level from the segmenter's mpp (``--mpp``
overrides the file's) -> grid (tilesegcli.tiling) -> foreground tiles -> open/create the tile
store (tilesegcli.store; refused if made by another model/params or another shard count) ->
run this shard's pending tiles (tilesegcli.runner) -> when no tile of any shard is left, the
process holding the store's merge lock stitches and writes (temp file + os.replace, then the
provenance). Unsharded runs stitch *while* the model runs: the runner's write callback pushes
each stored tile into a :class:`~tilesegcli.merge.Merger` (tiles are written in the row-major
order the stitchers consume), so the merge adds only a short tail. ``merge_store`` is the explicit
``tileseg merge``. Status per input: done | skipped (valid output exists) | waiting (this shard
is finished, others are not) | failed.

The stages live in their own modules; this one only sequences them: config.py (RunConfig,
SlideResult), outputs.py (output paths, skip, writability, stale temps), plan.py (model, level,
grid, foreground, fingerprint), store.py, runner.py, merge.py (stitch + write + provenance).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from dataclasses import fields
from pathlib import Path
from typing import Any

from tilesegcli.atomic import sweep_stale_temps
from tilesegcli.config import RunConfig, SlideResult
from tilesegcli.errors import SlideOpenError, TilesegError, UsageError
from tilesegcli.formats import FORMATS
from tilesegcli.merge import Merger, merge_store, merge_stored
from tilesegcli.outputs import (
    check_skip,
    check_writable,
    is_valid,
    output_for,
    output_format,
    resolve_output,
    resolve_outputs,
)
from tilesegcli.plan import (
    Plan,
    check_domains_before_loading,
    class_dicts,
    fingerprint,
    load_model,
    model_meta,
    open_input,
    plan_slide,
)
from tilesegcli.segmenter import Segmenter
from tilesegcli.specs import OutputSpec
from tilesegcli.store import TileStore, default_store_path, fingerprint_sha
from tilesegcli.zoo import DEFAULT_MODEL

__all__ = ["FORMATS", "OutputSpec", "RunConfig", "SlideResult", "merge_store", "output_for",
           "output_format", "predict", "resolve_outputs", "run_slide"]

log = logging.getLogger("tileseg")


def run_slide(
    input: str | Path, config: RunConfig, *, segmenter: Segmenter | None = None,
    output: OutputSpec | None = None,
) -> SlideResult:
    """Segment one slide (or this process's shard of it) and, when every tile is done, write
    the outputs (``output``: resolved from ``config`` when not given). Raises TilesegError on
    failure; interrupts leave the store resumable."""
    t0 = time.perf_counter()
    src = Path(input)
    res = SlideResult(input=str(src))
    spec = output if output is not None else resolve_output(src, config)
    out = spec.path
    res.output = str(out)
    if not src.exists():
        raise SlideOpenError(f"{src}: no such file")
    if segmenter is None:
        segmenter = load_model(config)
    shard_i, shard_n = config.shard
    to_file = not spec.to_stdout

    reader = open_input(src, config.backend)
    try:
        plan = plan_slide(reader, segmenter, config)
        res.timings["open_s"] = time.perf_counter() - t0
        fp = fingerprint(src, segmenter, plan, config)
        out_fp = {**fp, "output": spec.options()}
        out_sha = fingerprint_sha(out_fp)
        res.tiles_total = plan.grid.rows * plan.grid.cols
        res.tiles_selected = int(plan.selected.sum())
        if check_skip(spec, out_sha, config.overwrite):
            res.status = "skipped"
            res.timings["total_s"] = time.perf_counter() - t0
            return res
        check_writable(spec)
        store_path = default_store_path(out if to_file else None, src, config.workdir)
        res.store = str(store_path)
        store = TileStore.open_or_create(
            store_path, fingerprint=fp, grid=plan.grid, selected=plan.selected,
            task=segmenter.task, classes=class_dicts(segmenter), num_shards=shard_n,
            extra={"slide": plan.slide_meta, "model": model_meta(segmenter),
                   "params": config.params()},
        )
        res.tiles_selected = int(store.selected.sum())  # the store's selection rules
        mine = store.shard_tiles(shard_i, shard_n)
        todo = store.pending(mine)
        res.tiles_shard = len(mine)
        t1 = time.perf_counter()
        merger = None
        if shard_n == 1 and to_file:
            sweep_stale_temps(out)
            if todo and config.stream_merge:  # None when another process holds the merge lock
                merger = Merger.locked(store, spec, fingerprint=out_fp, config=config)
        try:
            stats = _infer(reader, plan, segmenter, store, todo, config, desc=src.name,
                           merger=merger)
        except BaseException:
            if merger is not None:
                merger.abort()
            raise
        res.tiles_computed = stats.tiles
        res.timings["infer_s"] = time.perf_counter() - t1
        res.timings["forward_s"] = stats.forward_s
    finally:
        reader.close()

    remaining = store.remaining()
    res.tiles_done = res.tiles_selected - remaining
    if merger is not None:
        t2 = time.perf_counter()
        counts = merger.finish()
        res.timings["merge_s"] = time.perf_counter() - t2  # the part not overlapped
        res.counts, res.objects, res.status = counts, counts.get("instances"), "done"
    elif remaining:
        res.status = "waiting"
        res.waiting_for = store.pending_shards()
        left = ", ".join(f"{i}/{shard_n}" for i in res.waiting_for)
        res.note = (f"no output yet: shard {shard_i}/{shard_n} finished, {remaining} tile(s) left "
                    f"in shard(s) {left}; run those shards (the last one writes {out}), or "
                    f"`tileseg merge {store.path} -o {out}` once they are done")
        log.warning("%s: %s", src.name, res.note)
    else:
        with store.merge_lock() as mine_to_merge:
            if not mine_to_merge:
                res.status = "waiting"  # another shard is merging right now
                res.note = (f"no output from this process: every tile is done and another "
                            f"shard is writing {out} now")
                log.warning("%s: %s", src.name, res.note)
            elif not config.overwrite and to_file and is_valid(out, out_sha):
                res.status = "done"  # another shard merged before us
            else:
                t2 = time.perf_counter()
                counts = merge_stored(store, spec, fingerprint=out_fp, config=config)
                res.timings["merge_s"] = time.perf_counter() - t2
                res.counts = counts
                res.objects = counts.get("instances")
                res.status = "done"
    res.timings["total_s"] = time.perf_counter() - t0
    return res


def predict(
    inputs: str | Path | Iterable[str | Path],
    *,
    segmenter: Segmenter | None = None,
    model: str = DEFAULT_MODEL,
    output: str | Path | None = None,
    outdir: str | Path | None = None,
    raise_errors: bool = False,
    **options: Any,
) -> list[SlideResult]:
    """Segment one or many inputs; one failure never stops the others.

    ``options`` are :class:`RunConfig` fields (``mpp``, ``tile_size``, ``batch_size``, ``shard``…).
    Returns one :class:`SlideResult` per input (``status`` "failed" with ``error`` set on
    failure, unless ``raise_errors``). ``output`` is only allowed with a single input.
    """
    paths = [Path(inputs)] if isinstance(inputs, (str, Path)) else [Path(p) for p in inputs]
    known = {f.name for f in fields(RunConfig)}
    unknown = set(options) - known
    if unknown:
        raise UsageError(f"unknown option(s): {', '.join(sorted(unknown))}")
    if segmenter is not None:  # provenance names the model that actually ran
        model = str(getattr(segmenter, "name", model))
    config = RunConfig(model=model, output=Path(output) if output is not None else None,
                       outdir=Path(outdir) if outdir is not None else None, **options)
    outputs = resolve_outputs(paths, config)
    if segmenter is None and paths:
        check_domains_before_loading(paths, config)  # before any weights are downloaded
        segmenter = load_model(config)
    results: list[SlideResult] = []
    for p, spec in zip(paths, outputs, strict=True):
        t0 = time.perf_counter()
        try:
            results.append(run_slide(p, config, segmenter=segmenter, output=spec))
        except Exception as e:  # one input's failure never stops the others
            if raise_errors:
                raise
            if isinstance(e, TilesegError):
                msg = str(e)
            else:  # a bug or an unexpected library error: one line, details at debug level
                msg = f"{type(e).__name__}: {' '.join(str(e).split())}"
                log.debug("%s failed", p, exc_info=True)
            log.error("%s", msg if str(p) in msg or p.name in msg else f"{p}: {msg}")
            results.append(SlideResult(input=str(p), status="failed", error=msg,
                                       timings={"total_s": time.perf_counter() - t0}))
    return results


def _infer(reader: Any, plan: Plan, segmenter: Segmenter, store: TileStore, todo: list[int],
           config: RunConfig, desc: str, merger: Merger | None = None) -> Any:
    from tilesegcli.progress import progress_mode
    from tilesegcli.resolution import read_work_region
    from tilesegcli.runner import run_tiles

    grid = plan.grid

    def read(t: Any) -> Any:
        return read_work_region(reader, grid, t.x, t.y, t.w, t.h)

    def write(t: Any, r: Any) -> None:  # the runner's writer thread, tiles in tile order
        stored = store.write_tile(t, r)
        if merger is not None:  # stitch what the store holds (its uint8 probabilities)
            merger.add(t, stored)

    tiles = [store.tile(i) for i in todo]
    return run_tiles(segmenter, tiles, read, write, batch_size=config.batch_size,
                     num_workers=config.num_workers, model_threads=config.model_threads,
                     progress=progress_mode(config.quiet),
                     desc=desc, progress_every_s=config.progress_every_s)
