"""``merge_store``: stitch a complete tile store and write the outputs, atomically.

It is ``tileseg merge`` and the last step of a sharded or non-streaming ``run_slide``: it feeds
``store.iter_results()`` into a :class:`~tilesegcli.merger.Merger`, which stitches
(tilesegcli.stitching), writes a temp file per output and ``os.replace`` s it (tilesegcli.
writers), then writes the provenance file. Single-shard runs push their tiles into the same
Merger while the runner computes them (tilesegcli.pipeline).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tilesegcli.config import RunConfig, output_options
from tilesegcli.errors import TilesegError
from tilesegcli.merger import Merger
from tilesegcli.outputs import check_writable, output_format
from tilesegcli.store import TileStore


def merge_store(
    store: TileStore | str | Path,
    output: str | Path,
    *,
    fmt: str | None = None,
    labels: Path | None = None,
    min_area: float | None = None,
    simplify: float | None = None,
    fingerprint: dict[str, Any] | None = None,
    config: RunConfig | None = None,
) -> dict[str, Any]:
    """Stitch a complete store and write ``output`` (+ provenance, + optional labels).
    The output appears only via os.replace of a finished temp file."""
    if not isinstance(store, TileStore):
        store = TileStore.open(store)
    remaining = store.remaining()
    if remaining:
        raise TilesegError(f"tile store {store.path} is not complete: {remaining} tiles left")
    out = Path(output)
    fmt = output_format(out, fmt)
    if fingerprint is None:
        fingerprint = {**store.meta["fingerprint"],
                       "output": output_options(fmt, min_area, simplify, labels)}
    check_writable(out, labels)
    merger = Merger(store, out, fmt=fmt, labels=labels, min_area=min_area, simplify=simplify,
                    fingerprint=fingerprint, config=config)
    try:
        for tile, result in store.iter_results():
            merger.add(tile, result)
    except BaseException:
        merger.abort()
        raise
    return merger.finish()
