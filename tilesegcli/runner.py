"""Batched inference: tiles -> Segmenter -> sink, with reading and writing overlapped with compute.

``run_tiles`` owns the three-stage pipeline of one slide's pending tiles:

    reader threads (``num_workers``)  ->  queue of batches  ->  model thread(s): predict_batch
                                                          ->  writer thread: store.write_tile

Reading/decoding (OpenSlide, tifffile, JPEG) and zarr encoding release the GIL, as does torch's
forward, so the three stages run concurrently on separate cores. Queues are bounded, so memory
stays at a few batches whatever the slide size. By default the main thread calls the model;
``model_threads`` K > 1 runs K batches at once, each on its own thread with 1/K of torch's
intra-op threads: a 128 px tile is too small for one forward to keep many cores busy (most of
its ops are small), while whole batches in parallel scale with the cores. Results are written in
tile order whatever K. Progress: a tqdm bar on a terminal, log lines elsewhere
(tilesegcli.progress).
"""

from __future__ import annotations

import contextlib
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
    model_threads: int = 1,
) -> RunStats:
    """Run ``segmenter`` over ``tiles`` (in order) and hand each result to ``write_tile``.

    ``progress``: None, ``"bar"`` (tqdm) or ``"lines"`` (a log line every ``progress_every_s``
    seconds and every tenth of the tiles; see tilesegcli.progress.progress_mode).

    ``model_threads``: batches computed at once (see the module docstring); results are still
    handed to ``write_tile`` in tile order.

    Raises whatever a stage raised (the first error wins); results already handed to the writer
    are written before returning or raising, so an interrupted run loses at most the batch in
    the model (``model_threads`` batches with several model threads).
    """
    if batch_size < 1:
        raise UsageError("--batch-size must be >= 1")
    if model_threads < 1:
        raise UsageError("--model-threads must be >= 1")
    stats = RunStats()
    t_start = time.perf_counter()
    batches = [list(tiles[i : i + batch_size]) for i in range(0, len(tiles), batch_size)]
    if not batches:
        return stats
    if model_threads > 1:
        return _run_parallel(segmenter, batches, read_tile, write_tile, stats, t_start,
                             num_workers=num_workers, progress=progress, desc=desc,
                             progress_every_s=progress_every_s, model_threads=model_threads)
    stop = threading.Event()
    read_errors: list[BaseException] = []  # tiles read before the failure still run
    errors: list[BaseException] = []  # writer/model failures: stop at once
    q_in: queue.Queue = queue.Queue(maxsize=max(2, num_workers + 1))
    q_out: queue.Queue = queue.Queue()
    # At most one finished-but-unwritten batch at any time: the model's next batch is handed
    # over only once the writer has stored the previous one, so a kill -9 loses <= 1 batch.
    slot = threading.Semaphore(1)

    bar = _progress_bar(progress, len(tiles), desc, progress_every_s)

    def produce(pool: ThreadPoolExecutor | None) -> None:
        try:
            for batch in batches:
                if stop.is_set():
                    return
                imgs = list(pool.map(read_tile, batch)) if pool else [read_tile(t) for t in batch]
                if not _put(q_in, (batch, np.stack(imgs)), stop):
                    return
        except BaseException as e:  # noqa: BLE001 - handed to the main thread
            read_errors.append(e)
        _put(q_in, _END, stop)

    def consume() -> None:
        try:
            while True:
                item = q_out.get()
                if item is _END:
                    return
                _write_batch(*item, write_tile, stats, bar)
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
        _end(bar, stats, t_start, finished, desc, len(tiles))
    if errors or read_errors:
        raise (errors or read_errors)[0]
    return stats


def _end(bar: Any, stats: RunStats, t_start: float, finished: bool, desc: str,
         n_tiles: int) -> None:
    """Close the progress display and time the run; an interrupted (SIGTERM, Ctrl-C) or failed
    run says what a rerun will compute again."""
    if bar is not None:
        bar.close()
    stats.wall_s = time.perf_counter() - t_start
    if finished:
        return
    log.info("%s: stopped with %d of %d tile(s) stored by this run; %d tile(s) the model "
             "had finished were not stored (a rerun computes them again)", desc or "run",
             stats.tiles, n_tiles, sum(stats.batch_sizes) - stats.tiles)


def _progress_bar(progress: str | None, total: int, desc: str, every_s: float) -> Any:
    if progress == "bar":
        from tqdm import tqdm

        return tqdm(total=total, desc=desc, unit="tile", file=sys.stderr, leave=False)
    if progress == "lines":
        from tilesegcli.progress import LineProgress

        return LineProgress(total, desc, every_s=every_s)
    return None


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
    results = _predict(segmenter, batch, imgs, stats)
    slot.acquire()  # released by the writer when the previous batch is stored (or it died)
    q_out.put((batch, results))


def _put(q: queue.Queue, item: object, stop: threading.Event) -> bool:
    """Put ``item`` on a bounded queue unless the run stops first (then False)."""
    while not stop.is_set():
        try:
            q.put(item, timeout=0.1)
            return True
        except queue.Full:
            continue
    return False


def _predict(segmenter: Segmenter, batch: list[TileSpec], imgs: np.ndarray, stats: RunStats,
             lock: threading.Lock | None = None) -> list[TileResult]:
    """One model call, its result count checked and its time and size added to ``stats``
    (under ``lock`` when several model threads share them)."""
    t0 = time.perf_counter()
    results = segmenter.predict_batch(imgs)
    dt = time.perf_counter() - t0
    if len(results) != len(batch):
        raise TilesegError(
            f"segmenter {getattr(segmenter, 'name', '?')} returned {len(results)} results "
            f"for a batch of {len(batch)}"
        )
    with lock if lock is not None else contextlib.nullcontext():
        stats.forward_s += dt
        stats.batches += 1
        stats.batch_sizes.append(len(batch))
    return results


def _write_batch(batch: list[TileSpec], results: list[TileResult],
                 write_tile: Callable[[TileSpec, TileResult], None], stats: RunStats,
                 bar: Any) -> None:
    """Hand one batch's results to the writer callback, counting and showing progress."""
    for tile, res in zip(batch, results, strict=True):
        write_tile(tile, res)
        stats.tiles += 1
        if bar is not None:
            bar.update(1)


def _run_parallel(
    segmenter: Segmenter,
    batches: list[list[TileSpec]],
    read_tile: Callable[[TileSpec], np.ndarray],
    write_tile: Callable[[TileSpec, TileResult], None],
    stats: RunStats,
    t_start: float,
    *,
    num_workers: int,
    progress: str | None,
    desc: str,
    progress_every_s: float,
    model_threads: int,
) -> RunStats:
    """``run_tiles`` with ``model_threads`` K > 1 batches in the model at once.

    A model thread takes a slot before it takes a batch and the writer gives the slot back once
    that batch is stored, so at most K batches are read-but-unwritten: a kill loses <= K. The
    writer stores batches in order (it holds later ones until the earlier ones arrive); the
    lowest unwritten batch is always in a model thread that holds its slot, so nobody waits on
    a slot forever.
    """
    n_tiles = sum(len(b) for b in batches)
    stop = threading.Event()
    read_errors: list[BaseException] = []
    errors: list[BaseException] = []
    lock = threading.Lock()
    q_in: queue.Queue = queue.Queue(maxsize=max(2, num_workers + model_threads))
    q_out: queue.Queue = queue.Queue()
    slots = threading.Semaphore(model_threads)
    bar = _progress_bar(progress, n_tiles, desc, progress_every_s)

    def produce(pool: ThreadPoolExecutor) -> None:
        try:
            for seq, batch in enumerate(batches):
                if stop.is_set():
                    return
                if not _put(q_in, (seq, batch, np.stack(list(pool.map(read_tile, batch)))),
                            stop):
                    return
        except BaseException as e:  # noqa: BLE001 - handed to the main thread
            read_errors.append(e)
        finally:
            _put(q_in, _END, stop)  # after a stop nobody waits for the end mark

    def compute() -> None:
        try:
            while not stop.is_set():
                if not slots.acquire(timeout=0.1):
                    continue
                item = None
                while item is None and not stop.is_set():
                    try:
                        item = q_in.get(timeout=0.1)
                    except queue.Empty:
                        continue
                if item is None or item is _END:
                    slots.release()
                    if item is _END:
                        q_in.put(_END)  # for the other model threads
                    return
                seq, batch, imgs = item
                q_out.put((seq, batch, _predict(segmenter, batch, imgs, stats, lock)))
        except BaseException as e:  # noqa: BLE001
            errors.append(e)
            stop.set()

    def consume() -> None:
        pending: dict[int, tuple[list[TileSpec], list[TileResult]]] = {}
        nxt = 0
        try:
            while True:
                item = q_out.get()
                if item is _END:
                    return
                seq, batch, results = item
                pending[seq] = (batch, results)
                while nxt in pending:
                    _write_batch(*pending.pop(nxt), write_tile, stats, bar)
                    nxt += 1
                    slots.release()
        except BaseException as e:  # noqa: BLE001
            errors.append(e)
            stop.set()
            while q_out.get() is not _END:
                pass

    restore = _split_torch_threads(model_threads)
    pool = ThreadPoolExecutor(max_workers=max(1, num_workers))
    producer = threading.Thread(target=produce, args=(pool,), daemon=True, name="tile-reader")
    writer = threading.Thread(target=consume, daemon=True, name="tile-writer")
    workers = [threading.Thread(target=compute, daemon=True, name=f"tile-model-{i}")
               for i in range(model_threads)]
    writer.start()
    producer.start()
    for w in workers:
        w.start()
    finished = False
    try:
        for w in workers:
            w.join()
        finished = not (errors or read_errors)
    finally:
        stop.set()
        stop_reading(stop, q_in)
        for w in workers:
            w.join()
        q_out.put(_END)
        writer.join()
        producer.join()
        pool.shutdown(wait=True, cancel_futures=True)
        restore()
        _end(bar, stats, t_start, finished, desc, n_tiles)
    if errors or read_errors:
        raise (errors or read_errors)[0]
    return stats


def _split_torch_threads(model_threads: int) -> Callable[[], None]:
    """Give each of ``model_threads`` concurrent forwards 1/K of torch's intra-op threads (torch
    is only touched when a model already imported it); returns the function that restores."""
    torch = sys.modules.get("torch")
    if torch is None:
        return lambda: None
    before = torch.get_num_threads()
    torch.set_num_threads(max(1, before // model_threads))
    return lambda: torch.set_num_threads(before)
