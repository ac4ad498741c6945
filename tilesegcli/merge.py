"""The merge step: stitch a tile store's tiles into polygons and write the outputs, atomically.

:class:`Merger` is push-style (MONAI's ``Merger`` habit): ``add(tile, result)`` takes the tiles
in row-major order (the runner's write callback during a single-shard run, or
``store.iter_results()``), feeds each to the stitchers once and writes whatever they release;
``finish()`` flushes the stitchers, commits the writers' temp outputs (``os.replace``) and then
writes the provenance file, without which an output is not considered valid; ``abort()``
removes the temp outputs. The store is never touched, so a failed or interrupted run stays
resumable. ``merge_stored`` feeds a complete store into a Merger (the last step of a sharded or
non-streaming ``run_slide``); ``merge_store`` is ``tileseg merge``: its checks, then the same.

Tiles a resumed run finds in the store already are read back from it as the pushed tiles pass
them, so every selected tile is stitched exactly once whatever was computed before.

Panoptic stores: each tile reaches both stitchers once. The regions are spilled to an anonymous
temp file and written after the last instance, the order a two-pass merge writes (it fixes the
feature order and the labels writer's instance ids), without holding them in memory.
"""

from __future__ import annotations

import contextlib
import pickle
import sys
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import fields
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from tilesegcli.errors import TilesegError
from tilesegcli.outputs import check_writable
from tilesegcli.store import TileStore, fingerprint_sha

if TYPE_CHECKING:
    from tilesegcli.config import RunConfig
    from tilesegcli.segmenter import TileResult
    from tilesegcli.specs import OutputSpec, SlideInfo, TileSpec
    from tilesegcli.stitching import StitchedObject


def card_min_area(meta: dict[str, Any]) -> float:
    """The model card's ``min_area`` (working px²) recorded in a store; 0 without a card."""
    card = (meta.get("model") or {}).get("card") or {}
    return float(card.get("min_area") or 0)


def slide_info_from_meta(meta: dict[str, Any]) -> SlideInfo:
    """The effective SlideInfo of the run that made a store (the writers need it; the input
    may be gone): ``mpp`` is the level-0 pixel size the run used (``--mpp`` or the file's)."""
    from tilesegcli.specs import LevelInfo, SlideInfo

    d = {k: v for k, v in meta.items() if k in {f.name for f in fields(SlideInfo)}}
    if meta.get("mpp_effective") is not None:  # stores of older versions lack it
        d["mpp"] = meta["mpp_effective"]
    d["levels"] = tuple(LevelInfo(**lv) for lv in d.get("levels", ()))
    if d.get("geotransform") is not None:
        d["geotransform"] = tuple(d["geotransform"])
    return SlideInfo(**d)


class _Spill:
    """Objects held back in an anonymous temp file, read back in the order they were put."""

    def __init__(self, folder: Path) -> None:
        self.file: IO[bytes] = tempfile.TemporaryFile(dir=folder)  # noqa: SIM115 - closed below
        self.count = 0

    def put(self, objs: Iterable[StitchedObject]) -> None:
        for obj in objs:
            pickle.dump(obj, self.file, protocol=pickle.HIGHEST_PROTOCOL)
            self.count += 1

    def drain(self) -> Iterator[StitchedObject]:
        self.file.seek(0)
        for _ in range(self.count):
            yield pickle.load(self.file)  # noqa: S301 - our own temp file
        self.close()

    def close(self) -> None:
        self.file.close()


class Merger:
    """Stitch a store's tiles as they are added and write the outputs; see the module docstring.

    ``fingerprint`` enters the provenance (the store's fingerprint plus the output options);
    ``config`` (the run's RunConfig) supplies the parameters and command line recorded there."""

    def __init__(self, store: TileStore, output: OutputSpec, *, fingerprint: dict[str, Any],
                 config: RunConfig | None = None) -> None:
        from tilesegcli.segmenter import ClassInfo
        from tilesegcli.stitching import InstanceStitcher, SemanticStitcher, StitchStats
        from tilesegcli.writers import open_labels_writer, open_writer

        self.store, self.output = store, output
        self.fingerprint, self.config = fingerprint, config
        grid = store.grid
        info = slide_info_from_meta(store.meta["slide"])
        classes = [ClassInfo(c["name"], tuple(c["color"])) for c in store.classes]
        self.inst_stats, self.sem_stats = StitchStats(), StitchStats()
        self._inst = (InstanceStitcher(grid, stats=self.inst_stats,
                                       min_area_px=card_min_area(store.meta))
                      if store.task in ("instance", "panoptic") else None)
        self._sem = (SemanticStitcher(grid, classes=classes, stats=self.sem_stats)
                     if store.task in ("semantic", "panoptic") else None)
        self._selected = store.selected_indices
        self._next = 0  # position in _selected of the next tile to stitch
        self._done = store.done_mask().ravel()
        self._lock: contextlib.AbstractContextManager[bool] | None = None
        self.n_instances = self.n_regions = 0
        self._labels_writer = None
        self._writer = open_writer(output.path, output.format, classes=classes, info=info,
                                   grid=grid, min_area=output.min_area, simplify=output.simplify)
        self._spill: _Spill | None = None
        try:
            if output.labels is not None:
                self._labels_writer = open_labels_writer(output.labels, grid=grid,
                                                         classes=classes, info=info)
            if self._inst is not None and self._sem is not None:
                self._spill = _Spill(store.path)
        except BaseException:
            self.abort()
            raise

    @classmethod
    def locked(cls, store: TileStore, output: OutputSpec, **kwargs: Any) -> Merger | None:
        """A Merger holding the store's merge lock until finish/abort; None when another
        process holds it (that process writes the outputs)."""
        lock = store.merge_lock()
        if not lock.__enter__():
            lock.__exit__(None, None, None)
            return None
        try:
            self = cls(store, output, **kwargs)
        except BaseException:
            lock.__exit__(None, None, None)
            raise
        self._lock = lock
        return self

    # -- tiles --------------------------------------------------------------------------------
    def add(self, tile: TileSpec, result: TileResult) -> None:
        """Stitch one tile (``result`` as the store holds it) and write what it releases; tiles
        of the store that come before it and were not added are read back from the store."""
        self._catch_up(tile.index)
        self._stitch(tile, result)
        if self._next < len(self._selected) and self._selected[self._next] == tile.index:
            self._next += 1

    def _catch_up(self, upto: int) -> None:
        sel = self._selected
        while self._next < len(sel) and sel[self._next] < upto:
            i = sel[self._next]
            if not self._done[i]:
                raise TilesegError(f"tile store {self.store.path} is not complete: tile {i} "
                                   "has no result")
            tile = self.store.tile(i)
            self._stitch(tile, self.store.read_tile(tile))
            self._next += 1

    def _stitch(self, tile: TileSpec, result: TileResult) -> None:
        if self._inst is not None:
            self._write(self._inst.add(tile, result), instances=True)
        if self._sem is not None:
            regions = self._sem.add(tile, result)
            if self._spill is not None:
                self._spill.put(regions)
            else:
                self._write(regions, instances=False)

    def _write(self, objs: Iterable[StitchedObject], *, instances: bool) -> None:
        for obj in objs:
            if self._writer.write(obj):
                if instances:
                    self.n_instances += 1
                else:
                    self.n_regions += 1
                if self._labels_writer is not None:
                    self._labels_writer.add(obj)

    # -- end ----------------------------------------------------------------------------------
    def finish(self) -> dict[str, Any]:
        """Stitch the store's remaining tiles, flush, commit the outputs, write the provenance;
        returns the counts. On any error the outputs are removed (``abort``)."""
        try:
            self._done = self.store.done_mask().ravel()
            self._catch_up(sys.maxsize)
            if self._inst is not None:
                self._write(self._inst.finish(), instances=True)
            if self._sem is not None:
                if self._spill is not None:
                    self._write(self._spill.drain(), instances=False)
                self._write(self._sem.finish(), instances=False)
            if self._labels_writer is not None:
                self._labels_writer.close()
            self._writer.close()
            counts = self.counts()
            if not self.output.to_stdout:
                self._write_provenance(counts)
        except BaseException:
            self.abort()
            raise
        self._release()
        return counts

    def counts(self) -> dict[str, Any]:
        inst = self.inst_stats
        return {"instances": self.n_instances, "regions": self.n_regions,
                "dropped": self._writer.skipped,
                "instances_merged_across_seams": inst.merged,
                "instances_owned": inst.owned,
                "duplicate_views": inst.duplicate_views,
                "instances_below_min_area": inst.small_dropped,
                **{f"instances_{k}": int(v) for k, v in inst.extra.items()},
                "tiles_stitched": max(inst.tiles, self.sem_stats.tiles)}

    def _write_provenance(self, counts: dict[str, Any]) -> None:
        from tilesegcli import provenance

        meta, config, spec = self.store.meta, self.config, self.output
        params = config.params() if config is not None else meta.get("params", {})
        prov = provenance.build(
            input_identity=meta["fingerprint"].get("input", {}),
            fingerprint=self.fingerprint,
            fingerprint_sha256=fingerprint_sha(self.fingerprint),
            parameters={**params, "format": spec.format, "min_area": spec.min_area,
                        "simplify": spec.simplify, "labels": spec.labels},
            model_card=meta.get("model"),
            output=spec.path,
            counts=counts,
            command_line=config.command_line if config is not None else None,
        )
        try:
            provenance.write_json(provenance.provenance_path(spec.path), prov)
        except BaseException:
            # an output without its provenance would look complete but could not be
            # validated; remove it so a rerun simply merges again
            spec.path.unlink(missing_ok=True)
            raise

    def abort(self) -> None:
        """Remove the temp outputs (idempotent; committed outputs are left alone)."""
        try:
            for w in (self._labels_writer, self._writer):
                if w is not None:
                    w.abort()
            if self._spill is not None:
                self._spill.close()
        finally:
            self._release()

    def _release(self) -> None:
        lock, self._lock = self._lock, None
        if lock is not None:
            lock.__exit__(None, None, None)


def merge_stored(store: TileStore, output: OutputSpec, *, fingerprint: dict[str, Any],
                 config: RunConfig | None = None) -> dict[str, Any]:
    """Feed every tile of a complete store (``store.iter_results()``) into a Merger and
    finish it; returns the counts."""
    merger = Merger(store, output, fingerprint=fingerprint, config=config)
    try:
        for tile, result in store.iter_results():
            merger.add(tile, result)
    except BaseException:
        merger.abort()
        raise
    return merger.finish()


def merge_store(store: TileStore | str | Path, output: OutputSpec) -> dict[str, Any]:
    """``tileseg merge``: stitch a complete store and write ``output`` (+ provenance, + optional
    labels). The output appears only via os.replace of a finished temp file."""
    if not isinstance(store, TileStore):
        store = TileStore.open(store)
    remaining = store.remaining()
    if remaining:
        raise TilesegError(f"tile store {store.path} is not complete: {remaining} tiles left")
    check_writable(output)
    fingerprint = {**store.meta["fingerprint"], "output": output.options()}
    return merge_stored(store, output, fingerprint=fingerprint)
