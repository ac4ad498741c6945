"""The run's tile store: a zarr (v3) group holding every finished tile's model outputs.

This module owns the on-disk layout, the run fingerprint, shard assignment, resume and the
"who merges" lock. Layout of ``<output>.tiles.zarr`` (tile (r, c) of a grid with tile edge T)::

    attrs["tileseg"]  format, fingerprint (+ sha256), grid, slide, classes, task, num_shards
    selected   bool   (rows, cols)                 tiles this run computes (foreground)
    labels     int32  (rows*T, cols*T)   chunk TxT  instance label image of tile (r, c)
    semantic   uint8  (C, rows*T, cols*T) chunk CxTxT  class probabilities * 255, rounded
    inst_class int32  (rows, cols, KMAX) chunk 1x1xKMAX  class of instance k+1
    inst_score float32(rows, cols, KMAX) chunk 1x1xKMAX  score of instance k+1
    done       int32  (rows, cols)       chunk 1x1  0 = pending, K+1 = finished with K instances

One tile = one chunk in every array, so shards never write the same chunk. Chunk files are written
atomically by zarr's LocalStore (temp file + rename); the done chunk is written last, so a tile
whose process died mid-write is simply recomputed. A store whose fingerprint (model, weights,
tiling, input identity) or shard count differs from the caller's is refused with StoreError.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from tilesegcli.atomic import atomic_path, sweep_stale_temps
from tilesegcli.errors import StoreError
from tilesegcli.segmenter import TileResult
from tilesegcli.specs import GridSpec, TileSpec
from tilesegcli.tiling import tile_at

FORMAT = "tileseg-store/1"
KMAX = 16384  # most instances one tile may hold


def fingerprint_sha(fingerprint: dict[str, Any]) -> str:
    blob = json.dumps(fingerprint, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


def input_identity(path: str | os.PathLike[str]) -> dict[str, Any]:
    """What identifies an input file for resume purposes: absolute path, size, mtime."""
    p = Path(path)
    st = p.stat()
    return {"path": str(p.resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def default_store_path(output: Path | None, input_path: Path, workdir: Path | None) -> Path:
    """``<output>.tiles.zarr`` next to the output, or inside ``workdir`` when given."""
    base = output.name if output is not None and str(output) != "-" else input_path.name
    if workdir is not None:
        return Path(workdir) / f"{base}.tiles.zarr"
    parent = output.parent if output is not None and str(output) != "-" else Path.cwd()
    return parent / f"{base}.tiles.zarr"


def grid_to_dict(grid: GridSpec) -> dict[str, Any]:
    return asdict(grid)


def grid_from_dict(d: dict[str, Any]) -> GridSpec:
    return GridSpec(**d)


def _diff(a: Any, b: Any, prefix: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out: list[str] = []
        for k in sorted(set(a) | set(b)):
            out += _diff(a.get(k), b.get(k), f"{prefix}{k}.")
        return out
    return [] if a == b else [f"{prefix.rstrip('.')}: {a!r} != {b!r}"]


#: a store's temporary build directory older than this was left by a killed process
STALE_TEMP_SECONDS = 3600.0


class TileStore:
    """A run's zarr store. Create/open with :meth:`open_or_create` (pipeline) or :meth:`open`."""

    def __init__(self, path: Path, group: Any) -> None:
        self.path = Path(path)
        self._g = group
        meta = dict(group.attrs.get("tileseg", {}))
        if meta.get("format") != FORMAT:
            raise StoreError(f"{self.path} is not a tileseg tile store")
        self.meta: dict[str, Any] = meta
        self.grid: GridSpec = grid_from_dict(meta["grid"])
        self.num_shards: int = int(meta["num_shards"])
        self.task: str = meta["task"]
        self.classes: list[dict[str, Any]] = meta["classes"]
        self.selected: np.ndarray = np.asarray(group["selected"][:], dtype=bool)
        self._labels = group["labels"] if "labels" in group else None
        self._semantic = group["semantic"] if "semantic" in group else None
        self._inst_class = group["inst_class"] if "inst_class" in group else None
        self._inst_score = group["inst_score"] if "inst_score" in group else None
        self._done = group["done"]

    # -- creation / opening ------------------------------------------------------------------
    @classmethod
    def open(cls, path: str | os.PathLike[str]) -> TileStore:
        import zarr

        p = Path(path)
        if not (p / "zarr.json").is_file():
            raise StoreError(f"{p} is not a tile store (no zarr.json)")
        try:
            g = zarr.open_group(str(p), mode="r+")
        except Exception as e:  # zarr raises several types for corrupt metadata
            raise StoreError(f"cannot open tile store {p}: {e}") from None
        return cls(p, g)

    @classmethod
    def open_or_create(
        cls,
        path: str | os.PathLike[str],
        *,
        fingerprint: dict[str, Any],
        grid: GridSpec,
        selected: np.ndarray,
        task: str,
        classes: Sequence[dict[str, Any]],
        num_shards: int,
        extra: dict[str, Any] | None = None,
    ) -> TileStore:
        """Open the store at ``path`` if it exists (checking fingerprint and shard count), else
        build it in a temporary directory and rename it into place (safe when N shards race)."""
        p = Path(path)
        if not p.exists():
            # creating a store takes well under a second; age, not PID liveness, tells a killed
            # creator's build directory: on a shared filesystem the PID may be another node's
            sweep_stale_temps(p, older_than_s=STALE_TEMP_SECONDS)
            try:
                cls._create(p, {
                    "format": FORMAT,
                    "fingerprint": fingerprint,
                    "fingerprint_sha256": fingerprint_sha(fingerprint),
                    "grid": grid_to_dict(grid),
                    "task": task,
                    "classes": list(classes),
                    "num_shards": int(num_shards),
                    **(extra or {}),
                }, selected)
            except OSError as e:
                raise StoreError(f"cannot create tile store {p}: {e.strerror or e}") from None
        store = cls.open(p)
        store.check(fingerprint, num_shards)
        return store

    @staticmethod
    def _create(p: Path, attrs: dict[str, Any], selected: np.ndarray) -> None:
        """Build the store described by ``attrs`` (its future ``attrs["tileseg"]``) in a temp
        directory, then rename it to ``p``; a store another process renamed there first wins."""
        p.parent.mkdir(parents=True, exist_ok=True)
        try:
            with atomic_path(p) as tmp:
                TileStore._build(tmp, attrs, selected)
        except OSError as e:
            if e.errno not in (errno.EEXIST, errno.ENOTEMPTY, errno.EISDIR) or not p.exists():
                raise

    @staticmethod
    def _build(tmp: Path, attrs: dict[str, Any], selected: np.ndarray) -> None:
        import zarr

        grid, task, classes = grid_from_dict(attrs["grid"]), attrs["task"], attrs["classes"]
        rows, cols, t = grid.rows, grid.cols, grid.tile_px
        g = zarr.open_group(str(tmp), mode="w", zarr_format=3)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            g.create_array("selected", shape=(rows, cols), chunks=(rows, cols), dtype="bool")[:] = (
                np.asarray(selected, dtype=bool).reshape(rows, cols)
            )
            g.create_array("done", shape=(rows, cols), chunks=(1, 1), dtype="int32", fill_value=0)
            if task in ("instance", "panoptic"):
                g.create_array(
                    "labels", shape=(rows * t, cols * t), chunks=(t, t), dtype="int32", fill_value=0
                )
                for name, dt in (("inst_class", "int32"), ("inst_score", "float32")):
                    g.create_array(
                        name, shape=(rows, cols, KMAX), chunks=(1, 1, KMAX), dtype=dt, fill_value=0
                    )
            if task in ("semantic", "panoptic"):
                c = len(classes)
                g.create_array(
                    "semantic",
                    shape=(c, rows * t, cols * t),
                    chunks=(c, t, t),
                    dtype="uint8",
                    fill_value=0,
                )
        g.attrs["tileseg"] = json.loads(json.dumps(attrs, default=str))
            # another shard won the race; its store is the one we open

    def check(self, fingerprint: dict[str, Any], num_shards: int) -> None:
        if self.meta.get("fingerprint_sha256") != fingerprint_sha(fingerprint):
            diffs = _diff(self.meta.get("fingerprint"), json.loads(json.dumps(fingerprint, default=str)))
            what = "; ".join(diffs[:2]) or "fingerprint differs"
            raise StoreError(
                f"tile store {self.path} belongs to another run ({what}); "
                "delete it or use another --workdir"
            )
        if self.num_shards != num_shards:
            raise StoreError(
                f"tile store {self.path} was started with {self.num_shards} shard(s), this run "
                f"uses {num_shards}; use the same --shard I/{self.num_shards} or delete the store"
            )

    # -- progress ----------------------------------------------------------------------------
    @property
    def selected_indices(self) -> list[int]:
        return [int(i) for i in np.flatnonzero(self.selected.ravel())]

    def shard_tiles(self, shard_index: int, num_shards: int) -> list[int]:
        """Selected tile indices of one shard: every N-th selected tile starting at I."""
        return self.selected_indices[shard_index::num_shards]

    def done_mask(self) -> np.ndarray:
        """(rows, cols) bool: tiles whose done-marker exists. Lists chunk files (fast at 50k
        tiles) instead of decoding each one; names that are not integers are temp files."""
        mask = np.zeros((self.grid.rows, self.grid.cols), dtype=bool)
        root = self.path / "done" / "c"
        if not root.is_dir():
            return mask
        for rdir in os.scandir(root):
            if not rdir.name.isdigit():
                continue
            for f in os.scandir(rdir.path):
                if f.name.isdigit():
                    mask[int(rdir.name), int(f.name)] = True
        return mask

    def pending(self, indices: Sequence[int]) -> list[int]:
        done = self.done_mask().ravel()
        return [i for i in indices if not done[i]]

    def pending_shards(self) -> list[int]:
        """Shard indices (of this store's ``num_shards``) that still have unfinished tiles."""
        left = set(np.flatnonzero((self.selected & ~self.done_mask()).ravel()).tolist())
        n = self.num_shards
        return [i for i in range(n) if any(t in left for t in self.shard_tiles(i, n))]

    def remaining(self) -> int:
        return int((self.selected & ~self.done_mask()).sum())

    def is_complete(self) -> bool:
        return self.remaining() == 0

    # -- tiles -------------------------------------------------------------------------------
    def tile(self, index: int) -> TileSpec:
        return tile_at(self.grid, index // self.grid.cols, index % self.grid.cols)

    def write_tile(self, tile: TileSpec, result: TileResult) -> TileResult:
        """Write one tile's outputs, then its done-marker (last). Returns the tile as stored:
        what ``read_tile`` would give back (same values and dtypes: the semantic
        probabilities quantised to 1/255), without reading it."""
        t, r, c = self.grid.tile_px, tile.row, tile.col
        ys, xs = slice(r * t, (r + 1) * t), slice(c * t, (c + 1) * t)
        stored = TileResult()
        k = 0
        if self._labels is not None:
            if result.labels is None:
                raise StoreError(f"segmenter returned no instance labels for tile {tile.index}")
            lab = np.asarray(result.labels, dtype=np.int32)
            if lab.shape != (t, t):
                raise StoreError(f"tile {tile.index}: labels shape {lab.shape} != ({t}, {t})")
            k = result.num_instances
            if k > KMAX:
                raise StoreError(f"tile {tile.index} has {k} instances (> {KMAX})")
            self._labels[ys, xs] = lab
            cls_row = np.zeros(KMAX, np.int32)
            sc_row = np.zeros(KMAX, np.float32)
            if k:
                cls_row[:k] = np.asarray(result.instance_classes, dtype=np.int32)[:k]
                sc_row[:k] = np.asarray(result.instance_scores, dtype=np.float32)[:k]
            self._inst_class[r, c, :] = cls_row
            self._inst_score[r, c, :] = sc_row
            stored.labels = lab
            stored.instance_classes = cls_row[:k].astype(np.int64)
            stored.instance_scores = sc_row[:k].copy()
        if self._semantic is not None:
            if result.semantic is None:
                raise StoreError(f"segmenter returned no semantic output for tile {tile.index}")
            sem = np.asarray(result.semantic, dtype=np.float32)
            if sem.shape != (self._semantic.shape[0], t, t):
                raise StoreError(f"tile {tile.index}: semantic shape {sem.shape} is wrong")
            q = np.clip(np.rint(sem * 255.0), 0, 255).astype(np.uint8)
            self._semantic[:, ys, xs] = q
            stored.semantic = q.astype(np.float32) / 255.0
        self._done[r, c] = k + 1
        return stored

    def read_tile(self, tile: TileSpec) -> TileResult:
        t, r, c = self.grid.tile_px, tile.row, tile.col
        ys, xs = slice(r * t, (r + 1) * t), slice(c * t, (c + 1) * t)
        res = TileResult()
        if self._labels is not None:
            k = int(self._done[r, c]) - 1
            res.labels = np.asarray(self._labels[ys, xs], dtype=np.int32)
            res.instance_classes = np.asarray(self._inst_class[r, c, :k], dtype=np.int64)
            res.instance_scores = np.asarray(self._inst_score[r, c, :k], dtype=np.float32)
        if self._semantic is not None:
            res.semantic = np.asarray(self._semantic[:, ys, xs], dtype=np.float32) / 255.0
        return res

    def iter_results(self) -> Iterator[tuple[TileSpec, TileResult]]:
        """(TileSpec, TileResult) for every finished selected tile, row-major."""
        done = self.done_mask() & self.selected
        for i in np.flatnonzero(done.ravel()):
            tile = self.tile(int(i))
            yield tile, self.read_tile(tile)

    def count_instances(self) -> int:
        if self._labels is None:
            return 0
        done = self.done_mask() & self.selected
        return int(sum(int(self._done[r, c]) - 1 for r, c in zip(*np.nonzero(done), strict=True)))

    # -- merge coordination -------------------------------------------------------------------
    @contextlib.contextmanager
    def merge_lock(self) -> Iterator[bool]:
        """Non-blocking exclusive lock on ``<store>/merge.lock``; yields whether we got it.
        flock is released by the kernel when the holder dies, so a crash never wedges it."""
        import fcntl

        fd = os.open(self.path / "merge.lock", os.O_CREAT | os.O_RDWR, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                yield False
                return
            try:
                yield True
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)
