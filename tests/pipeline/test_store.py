"""Tile store: layout, round trip, done markers, fingerprint/shard refusal, shard assignment."""

from __future__ import annotations

import numpy as np
import pytest

from tilesegcli.errors import StoreError
from tilesegcli.segmenter import TileResult
from tilesegcli.store import KMAX, TileStore, default_store_path
from tilesegcli.tiling import make_grid

CLASSES = [{"name": "background", "color": [0, 0, 0]}, {"name": "nucleus", "color": [255, 0, 0]}]


def _store(path, *, fp=None, n=1, task="panoptic", selected=None):
    grid = make_grid(300, 200, 64, 16)
    sel = np.ones((grid.rows, grid.cols), bool) if selected is None else selected
    return TileStore.open_or_create(path, fingerprint=fp or {"model": "m", "w": "1"}, grid=grid,
                                    selected=sel, task=task, classes=CLASSES, num_shards=n)


def _result(seed: int, k: int = 3) -> TileResult:
    rng = np.random.default_rng(seed)
    lab = np.zeros((64, 64), np.int32)
    for i in range(k):
        lab[8 * i : 8 * i + 5, 10:20] = i + 1
    sem = rng.random((2, 64, 64)).astype(np.float32)
    sem /= sem.sum(0, keepdims=True)
    return TileResult(semantic=sem, labels=lab, instance_classes=np.arange(1, k + 1),
                      instance_scores=np.linspace(0.5, 0.9, k).astype(np.float32))


def test_round_trip_and_done_marker(tmp_path):
    s = _store(tmp_path / "s.zarr")
    assert s.grid.rows * s.grid.cols == 24 and s.remaining() == 24
    t = s.tile(7)
    r = _result(0)
    stored = s.write_tile(t, r)
    assert s.done_mask().sum() == 1 and s.done_mask()[t.row, t.col]
    back = TileStore.open(tmp_path / "s.zarr").read_tile(t)
    for name in ("labels", "instance_classes", "instance_scores", "semantic"):  # as stored
        a, b = getattr(stored, name), getattr(back, name)
        assert a.dtype == b.dtype, name
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(back.labels, r.labels)
    np.testing.assert_array_equal(back.instance_classes, [1, 2, 3])
    np.testing.assert_allclose(back.instance_scores, r.instance_scores)
    assert np.abs(back.semantic - r.semantic).max() <= 0.5 / 255 + 1e-6  # uint8 quantisation
    assert s.pending(range(24)) == [i for i in range(24) if i != 7]
    assert [ts.index for ts, _ in s.iter_results()] == [7]
    assert s.count_instances() == 3


def test_zero_instances_and_empty_tile(tmp_path):
    s = _store(tmp_path / "s.zarr")
    s.write_tile(s.tile(0), _result(1, k=0))
    back = s.read_tile(s.tile(0))
    assert back.labels.max() == 0 and back.num_instances == 0
    assert s.done_mask()[0, 0]


def test_rewrite_tile_after_crash_is_clean(tmp_path):
    # a tile recomputed after a crash overwrites its chunk; no stale instances survive
    s = _store(tmp_path / "s.zarr")
    s.write_tile(s.tile(3), _result(0, k=5))
    s.write_tile(s.tile(3), _result(0, k=1))
    back = s.read_tile(s.tile(3))
    assert back.num_instances == 1 and back.labels.max() == 1


def test_other_fingerprint_refused(tmp_path):
    _store(tmp_path / "s.zarr", fp={"model": "a", "w": "1"})
    with pytest.raises(StoreError, match="another run.*model"):
        _store(tmp_path / "s.zarr", fp={"model": "b", "w": "1"})


def test_different_shard_count_refused(tmp_path):
    _store(tmp_path / "s.zarr", n=2)
    _store(tmp_path / "s.zarr", n=2)  # same N is fine (the other shard)
    with pytest.raises(StoreError, match="2 shard"):
        _store(tmp_path / "s.zarr", n=3)


def test_not_a_store(tmp_path):
    (tmp_path / "x").mkdir()
    with pytest.raises(StoreError):
        TileStore.open(tmp_path / "x")


def test_shards_partition_selected_tiles(tmp_path):
    grid = make_grid(300, 200, 64, 16)
    sel = np.zeros((grid.rows, grid.cols), bool)
    sel.ravel()[[1, 2, 5, 8, 9, 13, 17]] = True
    s = _store(tmp_path / "s.zarr", n=3, selected=sel)
    parts = [s.shard_tiles(i, 3) for i in range(3)]
    assert sorted(sum(parts, [])) == [1, 2, 5, 8, 9, 13, 17]
    assert all(abs(len(a) - len(b)) <= 1 for a in parts for b in parts)
    assert s.shard_tiles(1, 3) == TileStore.open(tmp_path / "s.zarr").shard_tiles(1, 3)
    assert s.pending_shards() == [0, 1, 2]
    for i in parts[0] + parts[2]:
        s.write_tile(s.tile(i), TileResult(labels=np.zeros((64, 64), np.int32),
                                           semantic=np.zeros((2, 64, 64), np.float32)))
    assert s.pending_shards() == [1]


def test_too_many_instances(tmp_path):
    s = _store(tmp_path / "s.zarr")
    r = TileResult(labels=np.zeros((64, 64), np.int32), semantic=np.zeros((2, 64, 64), np.float32),
                   instance_classes=np.ones(KMAX + 1), instance_scores=np.ones(KMAX + 1))
    with pytest.raises(StoreError, match="instances"):
        s.write_tile(s.tile(0), r)
    assert not s.done_mask()[0, 0]


def test_default_store_path(tmp_path):
    from pathlib import Path

    assert default_store_path(tmp_path / "o.geojson", Path("s.svs"), None) == tmp_path / "o.geojson.tiles.zarr"
    assert default_store_path(tmp_path / "o.geojson", Path("s.svs"), tmp_path / "w") == (
        tmp_path / "w" / "o.geojson.tiles.zarr")


def test_merge_lock_is_exclusive(tmp_path):
    s = _store(tmp_path / "s.zarr")
    other = TileStore.open(tmp_path / "s.zarr")
    with s.merge_lock() as got:
        assert got
        import multiprocessing as mp

        ctx = mp.get_context("fork")
        q = ctx.Queue()
        p = ctx.Process(target=_try_lock, args=(str(other.path), q))
        p.start()
        p.join(20)
        assert q.get(timeout=5) is False
    with other.merge_lock() as got2:
        assert got2


def _try_lock(path, q):
    with TileStore.open(path).merge_lock() as got:
        q.put(got)


def test_stale_temp_dirs_of_killed_creators_are_removed(tmp_path):
    import os
    import time

    p = tmp_path / "s.zarr"
    old = tmp_path / ".s.zarr.tmp-999999"  # a creator killed long ago
    fresh = tmp_path / ".s.zarr.tmp-999998"  # maybe still building (another node)
    for d in (old, fresh):
        (d / "sub").mkdir(parents=True)
    t = time.time() - 2 * 3600
    os.utime(old, (t, t))
    _store(p)
    assert p.is_dir() and not old.exists() and fresh.exists()
