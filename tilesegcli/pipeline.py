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
provenance). Unsharded runs stitch *while* the model runs (tiles finish in the row-major order
the stitchers consume), so the merge adds only a short tail. ``merge_store`` is the explicit
``tileseg merge``. Status per input: done | skipped (valid output exists) | waiting (this shard
is finished, others are not) | failed.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from tilesegcli.errors import OutputError, SlideOpenError, TilesegError, UsageError
from tilesegcli.segmenter import Segmenter
from tilesegcli.store import TileStore, default_store_path, fingerprint_sha, input_identity

log = logging.getLogger("tileseg")

FORMATS = ("geojson", "geojson.gz", "geojsonseq", "qupath")
_SUFFIX = {"geojson": ".geojson", "geojson.gz": ".geojson.gz", "geojsonseq": ".geojsonl",
           "qupath": ".geojson"}


@dataclass
class RunConfig:
    """Every option of ``tileseg predict`` (CLI flags map 1:1; None = model-card default)."""

    output: Path | None = None
    outdir: Path | None = None
    model: str = "aff-nuclei"
    weights: str | None = None
    mpp: float | None = None
    backend: str = "auto"
    roi: Path | None = None
    no_mask: bool = False
    tile_size: int | None = None
    overlap: int | None = None
    batch_size: int = 8
    num_workers: int = 2
    device: str = "auto"
    workdir: Path | None = None
    shard: tuple[int, int] = (0, 1)
    overwrite: bool = False
    format: str | None = None
    labels: Path | None = None
    min_area: float | None = None
    simplify: float | None = None
    quiet: bool = True
    stream_merge: bool = True  # stitch while tiles are computed (single-shard runs)
    command_line: list[str] | None = None

    def params(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "command_line"}


@dataclass
class SlideResult:
    input: str
    status: str = "pending"  # done | skipped | waiting (other shards) | failed
    output: str | None = None
    store: str | None = None
    error: str | None = None
    tiles_total: int = 0
    tiles_selected: int = 0
    tiles_shard: int = 0
    tiles_computed: int = 0
    tiles_done: int = 0
    objects: int | None = None
    counts: dict[str, Any] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.status in ("done", "skipped", "waiting")


def output_format(output: Path | None, fmt: str | None) -> str:
    if fmt:
        if fmt not in FORMATS:
            raise UsageError(f"--format must be one of {', '.join(FORMATS)}, got {fmt!r}")
        return fmt
    if output is None:
        return "geojson"
    from tilesegcli.writers import format_from_path

    return format_from_path(output)


def output_for(input_path: Path, config: RunConfig, fmt: str) -> Path:
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
    return outdir / (stem + _SUFFIX[fmt])


def run_slide(
    input: str | Path, config: RunConfig, *, segmenter: Segmenter | None = None
) -> SlideResult:
    """Segment one slide (or this process's shard of it) and, when every tile is done, write
    the outputs. Raises TilesegError on failure; interrupts leave the store resumable."""
    t0 = time.perf_counter()
    src = Path(input)
    res = SlideResult(input=str(src))
    fmt = output_format(config.output, config.format)
    out = output_for(src, config, fmt)
    res.output = str(out)
    if not src.exists():
        raise SlideOpenError(f"{src}: no such file")
    if segmenter is None:
        segmenter = _load_model(config)
    shard_i, shard_n = config.shard

    reader = _open_input(src, config.backend)
    try:
        plan = _plan_slide(reader, segmenter, config)
        res.timings["open_s"] = time.perf_counter() - t0
        fp = _fingerprint(src, segmenter, plan, config)
        out_fp = {**fp, "output": {"format": fmt, "min_area": config.min_area,
                                   "simplify": config.simplify,
                                   "labels": str(config.labels) if config.labels else None}}
        out_sha = fingerprint_sha(out_fp)
        res.tiles_total = plan.grid.rows * plan.grid.cols
        res.tiles_selected = int(plan.selected.sum())
        if str(out) != "-" and not config.overwrite:
            from tilesegcli.provenance import is_valid_output

            if is_valid_output(out, out_sha):
                res.status = "skipped"
                res.timings["total_s"] = time.perf_counter() - t0
                return res
            if out.exists():
                raise OutputError(f"{out} exists and was not produced by this run; pass --overwrite")
        _check_writable(out, config.labels)
        store_path = default_store_path(None if str(out) == "-" else out, src, config.workdir)
        res.store = str(store_path)
        store = TileStore.open_or_create(
            store_path, fingerprint=fp, grid=plan.grid, selected=plan.selected,
            task=segmenter.task, classes=_class_dicts(segmenter), num_shards=shard_n,
            extra={"slide": plan.slide_meta, "model": _model_meta(segmenter),
                   "params": config.params()},
        )
        res.tiles_selected = int(store.selected.sum())  # the store's selection rules
        mine = store.shard_tiles(shard_i, shard_n)
        todo = store.pending(mine)
        res.tiles_shard = len(mine)
        t1 = time.perf_counter()
        streamer = None
        if shard_n == 1 and str(out) != "-":
            _remove_stale_temps(out)
        if shard_n == 1 and todo and config.stream_merge and str(out) != "-":
            streamer = _StreamingMerge.start(store, out, fmt, config, out_fp, segmenter)
        try:
            stats = _infer(reader, plan, segmenter, store, todo, config, desc=src.name,
                           on_written=streamer.mark if streamer else None)
        except BaseException:
            if streamer is not None:
                streamer.abort()
            raise
        res.tiles_computed = stats.tiles
        res.timings["infer_s"] = time.perf_counter() - t1
        res.timings["forward_s"] = stats.forward_s
    finally:
        reader.close()

    remaining = store.remaining()
    res.tiles_done = res.tiles_selected - remaining
    if streamer is not None:
        t2 = time.perf_counter()
        counts = streamer.finish()
        res.timings["merge_s"] = time.perf_counter() - t2  # the part not overlapped
        res.counts, res.objects, res.status = counts, counts.get("instances"), "done"
    elif remaining:
        log.info("%s: shard %d/%d finished; %d tiles left for other shards",
                 src.name, shard_i, shard_n, remaining)
        res.status = "waiting"
    else:
        with store.merge_lock() as mine_to_merge:
            if not mine_to_merge:
                res.status = "waiting"  # another shard is merging right now
            elif not config.overwrite and str(out) != "-" and _valid(out, out_sha):
                res.status = "done"  # another shard merged before us
            else:
                t2 = time.perf_counter()
                counts = merge_store(store, out, fmt=fmt, labels=config.labels,
                                     min_area=config.min_area, simplify=config.simplify,
                                     fingerprint=out_fp, segmenter=segmenter, config=config)
                res.timings["merge_s"] = time.perf_counter() - t2
                res.counts = counts
                res.objects = counts.get("instances")
                res.status = "done"
    res.timings["total_s"] = time.perf_counter() - t0
    return res


def _valid(out: Path, sha: str) -> bool:
    from tilesegcli.provenance import is_valid_output

    return is_valid_output(out, sha)


def merge_store(
    store: TileStore | str | Path,
    output: str | Path,
    *,
    fmt: str | None = None,
    labels: Path | None = None,
    min_area: float | None = None,
    simplify: float | None = None,
    fingerprint: dict[str, Any] | None = None,
    segmenter: Segmenter | None = None,
    config: RunConfig | None = None,
    first_pass: Iterable[Any] | None = None,
    wait_all: Any = None,
) -> dict[str, Any]:
    """Stitch a complete store and write ``output`` (+ provenance, + optional labels).
    The output appears only via os.replace of a finished temp file.

    ``first_pass`` / ``wait_all`` are for stitching while tiles are still being computed: the
    first stitching pass reads tiles from ``first_pass`` (blocking until each is done) and
    ``wait_all()`` returns once every tile is in the store."""
    from tilesegcli import provenance

    if not isinstance(store, TileStore):
        store = TileStore.open(store)
    remaining = store.remaining() if first_pass is None else 0
    if remaining:
        raise TilesegError(f"tile store {store.path} is not complete: {remaining} tiles left")
    out = Path(output)
    fmt = output_format(out, fmt)
    if fingerprint is None:
        fingerprint = {**store.meta["fingerprint"], "output": {
            "format": fmt, "min_area": min_area, "simplify": simplify,
            "labels": str(labels) if labels else None}}
    _check_writable(out, labels)
    counts = _stitch_and_write(store, out, fmt=fmt, labels=labels, min_area=min_area,
                               simplify=simplify, first_pass=first_pass, wait_all=wait_all)
    if str(out) != "-":
        params = config.params() if config is not None else store.meta.get("params", {})
        prov = provenance.build(
            input_identity=store.meta["fingerprint"].get("input", {}),
            fingerprint=fingerprint,
            fingerprint_sha256=fingerprint_sha(fingerprint),
            parameters={**params, "format": fmt, "min_area": min_area, "simplify": simplify,
                        "labels": labels},
            model_card=store.meta.get("model"),
            output=out,
            counts=counts,
            command_line=config.command_line if config is not None else None,
        )
        try:
            provenance.write_json(provenance.provenance_path(out), prov)
        except BaseException:
            # an output without its provenance would look complete but could not be
            # validated; remove it so a rerun simply merges again
            out.unlink(missing_ok=True)
            raise
    return counts


def predict(
    inputs: str | Path | Iterable[str | Path],
    *,
    segmenter: Segmenter | None = None,
    model: str = "aff-nuclei",
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
    validate_batch(paths, config)
    if segmenter is None and paths:
        segmenter = _load_model(config)
    results: list[SlideResult] = []
    for p in paths:
        t0 = time.perf_counter()
        try:
            results.append(run_slide(p, config, segmenter=segmenter))
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


def validate_batch(paths: Sequence[Path], config: RunConfig) -> None:
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


# --------------------------------------------------------------------------- stages
@dataclass
class Plan:
    """What run_slide decided about one input before any tile runs."""

    grid: Any  # GridSpec
    selected: Any  # (rows, cols) bool: tiles whose read window touches foreground
    mpp0: float | None  # level-0 pixel size used (file's or --mpp)
    mask_source: str
    slide_meta: dict[str, Any]


def _load_model(config: RunConfig) -> Segmenter:
    """``simple`` (tiny test net), ``package.module:factory`` (your own), else a model card."""
    from tilesegcli.runner import resolve_device

    device = resolve_device(config.device)
    name = config.model
    if name == "simple":
        from tilesegcli.nn.simple import SimpleSegmenter

        return SimpleSegmenter(device=device)
    if ":" in name and not Path(name).exists():
        import importlib

        mod, _, attr = name.partition(":")
        try:
            factory = getattr(importlib.import_module(mod), attr)
        except (ImportError, AttributeError) as e:
            raise UsageError(f"--model {name}: cannot import {attr} from {mod}: {e}") from None
        return factory(device=device, weights=config.weights)
    from tilesegcli.zoo import load_segmenter

    return load_segmenter(name, weights=config.weights, device=device)


def _open_input(src: Path, backend: str) -> Any:
    from tilesegcli.readers import open_reader

    return open_reader(src, backend)


def _plan_slide(reader: Any, segmenter: Segmenter, config: RunConfig) -> Plan:

    from tilesegcli.foreground import foreground_mask, load_roi
    from tilesegcli.resolution import choose_level, effective_mpp, work_size
    from tilesegcli.tiling import make_grid

    info = reader.info
    if segmenter.mpp is None:  # a model without physical pixel size runs on level 0 as is
        level, ds, scale = 0, 1.0, 1.0
        mpp0 = config.mpp if config.mpp is not None else info.mpp
    else:
        level, ds, scale = choose_level(info, float(segmenter.mpp), config.mpp,
                                        target_unit=segmenter.mpp_unit)
        mpp0 = effective_mpp(info, config.mpp)
    width, height = work_size(info, ds)
    tile = config.tile_size or int(segmenter.tile_size)
    overlap = config.overlap if config.overlap is not None else int(segmenter.overlap)
    if config.tile_size and config.tile_size != segmenter.tile_size:
        log.warning("tile size %d overrides the model's %d", tile, segmenter.tile_size)
    try:
        grid = make_grid(width, height, tile, overlap, level=level, downsample=ds,
                         level_scale=scale)
    except ValueError as e:
        raise UsageError(str(e)) from None
    roi = load_roi(config.roi, info) if config.roi is not None else None
    if config.no_mask and roi is None:
        fg, source = None, "none"
    else:
        fg = foreground_mask(reader, mode="none" if config.no_mask else "auto", roi=roi)
        source = fg.source
    selected = _select(fg, grid)
    meta = {k: v for k, v in asdict_info(info).items() if k != "properties"}
    meta["mpp_effective"] = mpp0
    return Plan(grid=grid, selected=selected, mpp0=mpp0, mask_source=source, slide_meta=meta)


def _select(fg: Any, grid: Any) -> Any:
    """(rows, cols) bool of tiles whose read window touches foreground. Vectorised over the
    grid (no TileSpec per tile), so a 100k x 100k slide's 200k-tile grid costs a few MB."""
    import numpy as np

    from tilesegcli.foreground import foreground_boxes

    if fg is None:
        return np.ones((grid.rows, grid.cols), dtype=bool)
    ds, t, s = grid.downsample, grid.tile_px, grid.stride_px
    ys, xs = np.meshgrid(np.arange(grid.rows) * s, np.arange(grid.cols) * s, indexing="ij")
    n = grid.rows * grid.cols
    boxes = np.stack([xs.ravel() * ds, ys.ravel() * ds, np.full(n, t * ds), np.full(n, t * ds)], 1)
    keep = foreground_boxes(fg.mask, fg.downsample, boxes)
    if fg.roi is not None and keep.any():
        import shapely

        idx = np.flatnonzero(keep)
        b = boxes[idx]
        geoms = shapely.box(b[:, 0], b[:, 1], b[:, 0] + b[:, 2], b[:, 1] + b[:, 3])
        keep[idx] = shapely.intersects(geoms, fg.roi)
    return keep.reshape(grid.rows, grid.cols)


def asdict_info(info: Any) -> dict[str, Any]:
    from dataclasses import asdict

    from tilesegcli.provenance import jsonable

    return jsonable(asdict(info))


def _slide_info(meta: dict[str, Any]) -> Any:
    from tilesegcli.specs import LevelInfo, SlideInfo

    d = {k: v for k, v in meta.items() if k in {f.name for f in fields(SlideInfo)}}
    d["levels"] = tuple(LevelInfo(**lv) for lv in d.get("levels", ()))
    if d.get("geotransform") is not None:
        d["geotransform"] = tuple(d["geotransform"])
    return SlideInfo(**d)


def _weights_sha(segmenter: Segmenter) -> str | None:
    sha = getattr(segmenter, "weights_sha256", None)
    if sha:
        return str(sha)
    card = getattr(segmenter, "card", None)
    w = getattr(card, "weights", None)
    return getattr(w, "sha256", None)


def _fingerprint(src: Path, segmenter: Segmenter, plan: Plan, config: RunConfig) -> dict[str, Any]:
    import hashlib

    from tilesegcli.store import grid_to_dict

    roi_sha = hashlib.sha256(Path(config.roi).read_bytes()).hexdigest() if config.roi else None
    return {
        "model": segmenter.name,
        "weights_sha256": _weights_sha(segmenter),
        "task": segmenter.task,
        "classes": [c.name for c in segmenter.classes],
        "target_mpp": segmenter.mpp,
        "mpp0": plan.mpp0,
        "backend": plan.slide_meta.get("backend"),
        "tiling": grid_to_dict(plan.grid),
        "mask": {"no_mask": config.no_mask, "roi_sha256": roi_sha, "source": plan.mask_source},
        "input": input_identity(src),
    }


def _class_dicts(segmenter: Segmenter) -> list[dict[str, Any]]:
    return [{"name": c.name, "color": [int(v) for v in c.color]} for c in segmenter.classes]


def _model_meta(segmenter: Segmenter) -> dict[str, Any]:
    from tilesegcli.provenance import jsonable

    card = getattr(segmenter, "card", None)
    if card is not None and hasattr(card, "to_dict"):
        card = card.to_dict()
    return jsonable({"name": segmenter.name, "task": segmenter.task, "mpp": segmenter.mpp,
                     "mpp_unit": segmenter.mpp_unit, "tile_size": segmenter.tile_size,
                     "overlap": segmenter.overlap, "weights_sha256": _weights_sha(segmenter),
                     "card": card, "params": getattr(segmenter, "params", None)})


def _remove_stale_temps(out: Path) -> None:
    """Remove temp outputs (``<name>.tmp-<pid>-…``, ``.<name>.tmp-<pid>``) left by killed
    processes of this host: a SIGKILL cannot clean up after itself. Only for unsharded runs,
    where no process on another host can be writing them."""
    import os
    import re
    import shutil

    pat = re.compile(rf"^\.?{re.escape(out.name)}\.tmp-(\d+)(-[0-9a-f]+)?$")
    try:
        entries = list(out.parent.iterdir())
    except OSError:
        return
    for p in entries:
        m = pat.match(p.name)
        if not m or int(m.group(1)) == os.getpid():
            continue
        try:
            os.kill(int(m.group(1)), 0)
            continue  # that process is alive: not ours to touch
        except ProcessLookupError:
            pass
        except PermissionError:
            continue
        log.info("removing %s left by a killed run", p)
        if p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)


def _check_writable(out: Path, labels: Path | None) -> None:
    """Fail before any compute when an output cannot be written."""
    import os

    for p in (out, labels):
        if p is None or str(p) == "-":
            continue
        parent = Path(p).parent
        try:
            parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise OutputError(f"cannot create output directory {parent}: {e.strerror or e}") from None
        if not os.access(parent, os.W_OK | os.X_OK):
            raise OutputError(f"output directory {parent} is not writable")


def _infer(reader: Any, plan: Plan, segmenter: Segmenter, store: TileStore, todo: list[int],
           config: RunConfig, desc: str, on_written: Any = None) -> Any:
    from tilesegcli.resolution import read_work_region
    from tilesegcli.runner import run_tiles, show_progress

    grid = plan.grid

    def read(t: Any) -> Any:
        return read_work_region(reader, grid, t.x, t.y, t.w, t.h)

    def write(t: Any, r: Any) -> None:
        store.write_tile(t, r)
        if on_written is not None:
            on_written(t.index)

    tiles = [store.tile(i) for i in todo]
    return run_tiles(segmenter, tiles, read, write, batch_size=config.batch_size,
                     num_workers=config.num_workers, progress=show_progress(config.quiet),
                     desc=desc)


def _stitch_and_write(store: TileStore, out: Path, *, fmt: str, labels: Path | None,
                      min_area: float | None, simplify: float | None,
                      first_pass: Iterable[Any] | None = None,
                      wait_all: Any = None) -> dict[str, Any]:
    """Stream stitched objects from the store into the writers (F's stitching + writers)."""
    from contextlib import ExitStack

    from tilesegcli.segmenter import ClassInfo
    from tilesegcli.stitching import StitchStats, stitch_instances, stitch_semantic
    from tilesegcli.writers import open_labels_writer, open_writer

    info = _slide_info(store.meta["slide"])
    mpp = store.meta["slide"].get("mpp_effective")
    classes = [ClassInfo(c["name"], tuple(c["color"])) for c in store.classes]
    grid = store.grid
    inst_stats, sem_stats = StitchStats(), StitchStats()
    n_inst = n_reg = 0
    with ExitStack() as stack:
        writer = stack.enter_context(open_writer(out, fmt, classes=classes, info=info, mpp=mpp,
                                                 grid=grid, min_area=min_area, simplify=simplify))
        lw = None
        if labels is not None:
            lw = stack.enter_context(open_labels_writer(labels, grid=grid, classes=classes,
                                                        info=info, mpp=mpp))
        has_inst = store.task in ("instance", "panoptic")
        if has_inst:
            tiles = first_pass if first_pass is not None else store.iter_results()
            for obj in stitch_instances(grid, tiles, stats=inst_stats):
                if writer.write(obj):
                    n_inst += 1
                    if lw is not None:
                        lw.add(obj)
        if wait_all is not None:
            wait_all()
        if store.task in ("semantic", "panoptic"):
            tiles = first_pass if first_pass is not None and not has_inst else store.iter_results()
            for obj in stitch_semantic(grid, tiles, classes=classes, stats=sem_stats):
                if writer.write(obj):
                    n_reg += 1
                    if lw is not None:
                        lw.add(obj)
    return {"instances": n_inst, "regions": n_reg, "dropped": writer.skipped,
            "instances_merged_across_seams": inst_stats.merged,
            "instances_owned": inst_stats.owned,
            "duplicate_views": inst_stats.duplicate_views,
            "tiles_stitched": max(inst_stats.tiles, sem_stats.tiles)}


class _StreamingMerge:
    """Stitch and write in a background thread while the runner computes tiles.

    Only for single-shard runs: tiles then finish in row-major order, which is the order the
    stitchers consume, so the first stitching pass trails the model by about one tile row. The
    output is still written to a temp name and committed only after the last tile; on any error
    or interrupt the temp file is removed and the store stays resumable."""

    def __init__(self, store: TileStore) -> None:
        import threading

        self.store = store
        self.cond = threading.Condition()
        self.done = store.done_mask().ravel().copy()
        self.all_done = False
        self.aborted = False
        self.error: BaseException | None = None
        self.counts: dict[str, Any] | None = None
        self.thread: Any = None
        self._lock_cm: Any = None

    @classmethod
    def start(cls, store: TileStore, out: Path, fmt: str, config: RunConfig,
              out_fp: dict[str, Any], segmenter: Segmenter) -> _StreamingMerge | None:
        import threading

        self = cls(store)
        self._lock_cm = store.merge_lock()
        if not self._lock_cm.__enter__():  # someone else is merging this store
            self._lock_cm.__exit__(None, None, None)
            return None

        def run() -> None:
            try:
                self.counts = merge_store(store, out, fmt=fmt, labels=config.labels,
                                          min_area=config.min_area, simplify=config.simplify,
                                          fingerprint=out_fp, segmenter=segmenter, config=config,
                                          first_pass=self._tiles(), wait_all=self._wait_all)
            except BaseException as e:  # noqa: BLE001 - re-raised by finish()
                self.error = e

        self.thread = threading.Thread(target=run, daemon=True, name="tile-merge")
        self.thread.start()
        return self

    def mark(self, index: int) -> None:
        with self.cond:
            self.done[index] = True
            self.cond.notify_all()

    def _wait(self, pred: Any) -> None:
        with self.cond:
            while not pred():
                if self.aborted:
                    raise _MergeAborted()
                self.cond.wait(0.5)

    def _tiles(self) -> Any:
        for i in self.store.selected_indices:
            self._wait(lambda i=i: self.done[i])
            tile = self.store.tile(i)
            yield tile, self.store.read_tile(tile)

    def _wait_all(self) -> None:
        self._wait(lambda: self.all_done)

    def _stop(self) -> None:
        self.thread.join()
        self._lock_cm.__exit__(None, None, None)

    def abort(self) -> None:
        with self.cond:
            self.aborted = True
            self.cond.notify_all()
        self._stop()

    def finish(self) -> dict[str, Any]:
        with self.cond:
            self.all_done = True
            self.cond.notify_all()
        try:
            self.thread.join()
        except BaseException:
            self.abort()
            raise
        self._stop()
        if self.error is not None:
            raise self.error
        assert self.counts is not None
        return self.counts


class _MergeAborted(Exception):
    """The run stopped before every tile was computed; the streaming merge is discarded."""
