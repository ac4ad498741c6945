"""Runner: batching, order, prefetch threads, error propagation, device resolution."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from tilesegcli.device import resolve_device
from tilesegcli.errors import SlideReadError, TilesegError, UsageError
from tilesegcli.runner import run_tiles
from tilesegcli.segmenters.simple import SimpleSegmenter
from tilesegcli.tiling import iter_tiles, make_grid

GRID = make_grid(400, 300, 64, 8)
TILES = iter_tiles(GRID)


def _read(t):
    rng = np.random.default_rng(t.index)
    return rng.integers(0, 255, (t.h, t.w, 3), dtype=np.uint8)


@pytest.mark.parametrize(("workers", "batch", "model_threads"),
                         [(0, 4, 1), (1, 1, 1), (3, 7, 1), (1, 1, 3), (2, 3, 2), (0, 4, 2)])
def test_every_tile_once_in_order(workers, batch, model_threads):
    seg = SimpleSegmenter(tile_size=64, overlap=8)
    seen = []
    stats = run_tiles(seg, TILES, _read, lambda t, r: seen.append((t.index, r)),
                      batch_size=batch, num_workers=workers, model_threads=model_threads)
    assert [i for i, _ in seen] == [t.index for t in TILES]
    assert stats.tiles == len(TILES) and sum(stats.batch_sizes) == len(TILES)
    assert max(stats.batch_sizes) <= batch and stats.forward_s > 0
    # results equal a direct call on the same pixels (batch composition does not matter)
    direct = seg.predict_batch(np.stack([_read(TILES[5])]))[0]
    np.testing.assert_array_equal(seen[5][1].labels, direct.labels)


def test_reads_happen_off_the_main_thread():
    names = set()

    def read(t):
        names.add(threading.current_thread().name)
        return _read(t)

    run_tiles(SimpleSegmenter(tile_size=64), TILES, read, lambda t, r: None, batch_size=4,
              num_workers=2)
    assert threading.main_thread().name not in names


@pytest.mark.parametrize("model_threads", [1, 3])
def test_read_error_propagates_after_flushing_finished_tiles(model_threads):
    written = []

    def read(t):
        if t.index == 13:
            raise SlideReadError("slide.svs: cannot read tile")
        return _read(t)

    with pytest.raises(SlideReadError):
        run_tiles(SimpleSegmenter(tile_size=64), TILES, read, lambda t, r: written.append(t.index),
                  batch_size=4, num_workers=2, model_threads=model_threads)
    assert written == list(range(len(written)))  # a prefix, in order, nothing after the error
    assert len(written) == 12  # every batch read before the failing one was still run


class _Slow(SimpleSegmenter):
    """Sleeps a different time per batch, so that batches finish out of order."""

    def predict_batch(self, tiles):
        import time

        time.sleep(0.002 * max(0, 20 - int(tiles[0, 0, 0, 0]) % 20))
        return super().predict_batch(tiles)


def test_model_threads_write_in_tile_order_and_compute_at_once():
    names, seen = set(), []
    seg = _Slow(tile_size=64, overlap=8)
    orig = seg.predict_batch

    def predict(tiles):
        names.add(threading.current_thread().name)
        return orig(tiles)

    seg.predict_batch = predict  # type: ignore[method-assign]
    stats = run_tiles(seg, TILES, _read, lambda t, r: seen.append(t.index), batch_size=2,
                      num_workers=2, model_threads=3)
    assert seen == [t.index for t in TILES] and stats.tiles == len(TILES)
    assert len(names) > 1 and threading.main_thread().name not in names


@pytest.mark.parametrize("model_threads", [1, 2])
def test_writer_error_propagates(model_threads):
    def write(t, r):
        if t.index == 2:
            raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        run_tiles(SimpleSegmenter(tile_size=64), TILES, _read, write, batch_size=2, num_workers=1,
                  model_threads=model_threads)


class _InterruptedAt:
    """SimpleSegmenter whose ``n``-th model call is interrupted (as SIGTERM/Ctrl-C would)."""

    def __init__(self, n: int) -> None:
        self.net = SimpleSegmenter(tile_size=64)
        self.name, self.task, self.classes = self.net.name, self.net.task, self.net.classes
        self.mpp, self.mpp_unit = self.net.mpp, self.net.mpp_unit
        self.tile_size, self.overlap, self.n, self.calls = 64, 8, n, 0

    def predict_batch(self, tiles):
        self.calls += 1
        if self.calls == self.n:
            raise KeyboardInterrupt
        return self.net.predict_batch(tiles)


def test_interrupt_stores_finished_batches_and_says_how_many(caplog):
    written = []
    with caplog.at_level("INFO", logger="tileseg"), pytest.raises(KeyboardInterrupt):
        run_tiles(_InterruptedAt(4), TILES, _read, lambda t, r: written.append(t.index),
                  batch_size=2, num_workers=1, desc="s.svs")
    assert written == list(range(6))  # the three batches the model finished were all stored
    assert (f"s.svs: stopped with 6 of {len(TILES)} tile(s) stored by this run; 0 tile(s) "
            "the model had finished were not stored") in caplog.text


def test_interrupt_with_model_threads_writes_a_prefix_and_says_so(caplog):
    written = []
    with caplog.at_level("INFO", logger="tileseg"), pytest.raises(KeyboardInterrupt):
        run_tiles(_InterruptedAt(4), TILES, _read, lambda t, r: written.append(t.index),
                  batch_size=2, num_workers=1, desc="s.svs", model_threads=2)
    assert written == list(range(len(written))) and 0 < len(written) <= 6
    assert f"s.svs: stopped with {len(written)} of {len(TILES)} tile(s) stored" in caplog.text


def test_a_complete_run_logs_no_stop_line(caplog):
    with caplog.at_level("INFO", logger="tileseg"):
        run_tiles(SimpleSegmenter(tile_size=64), TILES[:4], _read, lambda t, r: None,
                  batch_size=2, num_workers=1)
    assert "stopped with" not in caplog.text


class _Wrong:
    name, task, classes, mpp, mpp_unit, tile_size, overlap = "bad", "instance", (), 0.5, "um", 64, 8

    def predict_batch(self, tiles):
        return []


@pytest.mark.parametrize(("workers", "model_threads"), [(0, 1), (1, 2), (0, 2)])
def test_wrong_result_count_is_an_error(workers, model_threads):
    with pytest.raises(TilesegError, match="returned 0 results"):
        run_tiles(_Wrong(), TILES[:3], _read, lambda t, r: None, batch_size=1,
                  num_workers=workers, model_threads=model_threads)


def test_empty_and_bad_batch_size():
    assert run_tiles(_Wrong(), [], _read, lambda t, r: None).tiles == 0
    with pytest.raises(UsageError):
        run_tiles(_Wrong(), TILES, _read, lambda t, r: None, batch_size=0)
    with pytest.raises(UsageError):
        run_tiles(_Wrong(), TILES, _read, lambda t, r: None, model_threads=0)


def test_resolve_device():
    assert resolve_device("cpu") == "cpu"
    assert resolve_device("auto") in ("cpu", "cuda")
    with pytest.raises(UsageError):
        resolve_device("tpu")
