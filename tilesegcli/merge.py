"""The merge step: stitch a complete (or filling) tile store and write the outputs, atomically.

``merge_store`` is ``tileseg merge`` and the last step of ``run_slide``: it streams stitched
objects from the store (tilesegcli.stitching) into the writers (tilesegcli.writers), which write
a temp file and ``os.replace`` it, then writes the provenance file (without which an output is
not considered valid). ``StreamingMerge`` runs the same merge in a background thread while the
runner is still computing tiles (single-shard runs), so the merge adds only a short tail.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import fields
from pathlib import Path
from typing import Any

from tilesegcli.config import RunConfig, output_options
from tilesegcli.errors import TilesegError
from tilesegcli.outputs import check_writable, is_stdout, output_format
from tilesegcli.segmenter import Segmenter
from tilesegcli.store import TileStore, fingerprint_sha


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
        fingerprint = {**store.meta["fingerprint"],
                       "output": output_options(fmt, min_area, simplify, labels)}
    check_writable(out, labels)
    counts = stitch_and_write(store, out, fmt=fmt, labels=labels, min_area=min_area,
                              simplify=simplify, first_pass=first_pass, wait_all=wait_all)
    if not is_stdout(out):
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


def stitch_and_write(store: TileStore, out: Path, *, fmt: str, labels: Path | None,
                     min_area: float | None, simplify: float | None,
                     first_pass: Iterable[Any] | None = None,
                     wait_all: Any = None) -> dict[str, Any]:
    """Stream stitched objects from the store into the writers (F's stitching + writers)."""
    from contextlib import ExitStack

    from tilesegcli.segmenter import ClassInfo
    from tilesegcli.stitching import StitchStats, stitch_instances, stitch_semantic
    from tilesegcli.writers import open_labels_writer, open_writer

    info = slide_info_from_meta(store.meta["slide"])
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
            for obj in stitch_instances(grid, tiles, stats=inst_stats,
                                        min_area_px=card_min_area(store.meta)):
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
            "instances_below_min_area": inst_stats.small_dropped,
            **{f"instances_{k}": int(v) for k, v in inst_stats.extra.items()},
            "tiles_stitched": max(inst_stats.tiles, sem_stats.tiles)}


def card_min_area(meta: dict[str, Any]) -> float:
    """The model card's ``min_area`` (working px²) recorded in a store; 0 without a card."""
    card = (meta.get("model") or {}).get("card") or {}
    return float(card.get("min_area") or 0)


def slide_info_from_meta(meta: dict[str, Any]) -> Any:
    """The SlideInfo recorded in a store (the writers need it; the input may be gone)."""
    from tilesegcli.specs import LevelInfo, SlideInfo

    d = {k: v for k, v in meta.items() if k in {f.name for f in fields(SlideInfo)}}
    d["levels"] = tuple(LevelInfo(**lv) for lv in d.get("levels", ()))
    if d.get("geotransform") is not None:
        d["geotransform"] = tuple(d["geotransform"])
    return SlideInfo(**d)


class StreamingMerge:
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
              out_fp: dict[str, Any], segmenter: Segmenter) -> StreamingMerge | None:
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
