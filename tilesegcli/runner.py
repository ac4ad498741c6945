"""Batched inference: tiles -> Segmenter -> sink, with reading and writing overlapped with compute.

``run_tiles`` owns the three-stage pipeline of one slide's pending tiles:

    reader threads (``num_workers``)  ->  queue of batches  ->  main thread: predict_batch
                                                          ->  writer thread: store.write_tile

Reading/decoding (OpenSlide, tifffile, JPEG) and zarr encoding release the GIL, as does torch's
forward, so the three stages run concurrently on separate cores. Queues are bounded, so memory
stays at a few batches whatever the slide size. Only the main thread calls the model.
It also resolves ``--device``. Progress: a tqdm bar on a terminal, log lines elsewhere
(tilesegcli.progress).
"""

from __future__ import annotations

import logging
import os
import queue
import sys
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from tilesegcli.errors import TilesegError, UsageError
from tilesegcli.segmenter import Segmenter, TileResult
from tilesegcli.specs import TileSpec

_END = object()
log = logging.getLogger("tileseg")


@dataclass
class RunStats:
    tiles: int = 0
    batches: int = 0
    forward_s: float = 0.0  # summed time inside predict_batch
    wall_s: float = 0.0
    batch_sizes: list[int] = field(default_factory=list)


def default_num_workers() -> int:
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - macOS
        n = os.cpu_count() or 1
    return max(1, min(4, n))


def run_tiles(
    segmenter: Segmenter,
    tiles: Sequence[TileSpec],
    read_tile: Callable[[TileSpec], np.ndarray],
    write_tile: Callable[[TileSpec, TileResult], None],
    *,
    batch_size: int = 8,
    num_workers: int = 2,
    progress: str | None = None,
    desc: str = "",
    progress_every_s: float = 30.0,
) -> RunStats:
    """Run ``segmenter`` over ``tiles`` (in order) and hand each result to ``write_tile``.

    ``progress``: None, ``"bar"`` (tqdm) or ``"lines"`` (a log line every ``progress_every_s``
    seconds and every tenth of the tiles; see tilesegcli.progress.progress_mode).

    Raises whatever a stage raised (the first error wins); results already handed to the writer
    are written before returning or raising, so an interrupted run loses at most the batch in
    the model.
    """
    if batch_size < 1:
        raise UsageError("--batch-size must be >= 1")
    stats = RunStats()
    t_start = time.perf_counter()
    batches = [list(tiles[i : i + batch_size]) for i in range(0, len(tiles), batch_size)]
    if not batches:
        return stats
    stop = threading.Event()
    read_errors: list[BaseException] = []  # tiles read before the failure still run
    errors: list[BaseException] = []  # writer/model failures: stop at once
    q_in: queue.Queue = queue.Queue(maxsize=max(2, num_workers + 1))
    q_out: queue.Queue = queue.Queue()
    # At most one finished-but-unwritten batch at any time: the model's next batch is handed
    # over only once the writer has stored the previous one, so a kill -9 loses <= 1 batch.
    slot = threading.Semaphore(1)

    bar: Any = None
    if progress == "bar":
        from tqdm import tqdm

        bar = tqdm(total=len(tiles), desc=desc, unit="tile", file=sys.stderr, leave=False)
    elif progress == "lines":
        from tilesegcli.progress import LineProgress

        bar = LineProgress(len(tiles), desc, every_s=progress_every_s)

    def put(q: queue.Queue, item: object) -> bool:
        while not stop.is_set():
            try:
                q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce(pool: ThreadPoolExecutor | None) -> None:
        try:
            for batch in batches:
                if stop.is_set():
                    return
                imgs = list(pool.map(read_tile, batch)) if pool else [read_tile(t) for t in batch]
                if not put(q_in, (batch, np.stack(imgs))):
                    return
        except BaseException as e:  # noqa: BLE001 - handed to the main thread
            read_errors.append(e)
        put(q_in, _END)

    def consume() -> None:
        try:
            while True:
                item = q_out.get()
                if item is _END:
                    return
                for tile, res in zip(*item, strict=True):
                    write_tile(tile, res)
                    stats.tiles += 1
                    if bar is not None:
                        bar.update(1)
                slot.release()
        except BaseException as e:  # noqa: BLE001
            errors.append(e)
            stop.set()
            slot.release()  # never leave the main thread waiting for a dead writer
            while q_out.get() is not _END:
                pass

    pool = ThreadPoolExecutor(max_workers=num_workers) if num_workers > 0 else None
    producer = threading.Thread(target=produce, args=(pool,), daemon=True, name="tile-reader")
    writer = threading.Thread(target=consume, daemon=True, name="tile-writer")
    writer.start()
    if pool is not None:
        producer.start()
    finished = False
    try:
        if pool is None:  # no background reading: read inline, same order
            for batch in batches:
                _forward(segmenter, batch, np.stack([read_tile(t) for t in batch]), stats, q_out,
                         slot)
                if errors:
                    break
        else:
            while True:
                item = None
                while item is None:
                    try:
                        item = q_in.get(timeout=0.1)
                    except queue.Empty:
                        if stop.is_set():
                            break
                if item is None or item is _END:
                    break
                _forward(segmenter, item[0], item[1], stats, q_out, slot)
                if errors:
                    break
        finished = not (errors or read_errors)
    finally:
        stop_reading(stop, q_in)
        q_out.put(_END)
        writer.join()
        if pool is not None:
            producer.join()
            pool.shutdown(wait=True, cancel_futures=True)
        if bar is not None:
            bar.close()
        stats.wall_s = time.perf_counter() - t_start
        if not finished:  # interrupted (SIGTERM, Ctrl-C) or failed: what a rerun redoes
            log.info("%s: stopped with %d of %d tile(s) stored by this run; %d tile(s) the model "
                     "had finished were not stored (a rerun computes them again)", desc or "run",
                     stats.tiles, len(tiles), sum(stats.batch_sizes) - stats.tiles)
    if errors or read_errors:
        raise (errors or read_errors)[0]
    return stats


def stop_reading(stop: threading.Event, q_in: queue.Queue) -> None:
    stop.set()
    try:
        while True:
            q_in.get_nowait()
    except queue.Empty:
        pass


def _forward(
    segmenter: Segmenter,
    batch: list[TileSpec],
    imgs: np.ndarray,
    stats: RunStats,
    q_out: queue.Queue,
    slot: threading.Semaphore,
) -> None:
    t0 = time.perf_counter()
    results = segmenter.predict_batch(imgs)
    stats.forward_s += time.perf_counter() - t0
    if len(results) != len(batch):
        raise TilesegError(
            f"segmenter {getattr(segmenter, 'name', '?')} returned {len(results)} results "
            f"for a batch of {len(batch)}"
        )
    stats.batches += 1
    stats.batch_sizes.append(len(batch))
    slot.acquire()  # released by the writer when the previous batch is stored (or it died)
    q_out.put((batch, results))
