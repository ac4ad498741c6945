"""``merge_store``: stitch a complete tile store and write the outputs, atomically.

It is ``tileseg merge``: the checks (the store is complete, the output writable), then
``merger.merge_stored``, which feeds ``store.iter_results()`` into a
:class:`~tilesegcli.merger.Merger` (stitch, write a temp file per output and ``os.replace`` it,
then the provenance file). ``run_slide`` checks before its compute and calls ``merge_stored``
(sharded or non-streaming runs) or pushes its tiles into a Merger as they are computed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tilesegcli.errors import TilesegError
from tilesegcli.merger import merge_stored
from tilesegcli.outputs import check_writable
from tilesegcli.specs import OutputSpec
from tilesegcli.store import TileStore


def merge_store(
    store: TileStore | str | Path,
    output: OutputSpec,
) -> dict[str, Any]:
    """Stitch a complete store and write ``output`` (+ provenance, + optional labels).
    The output appears only via os.replace of a finished temp file."""
    if not isinstance(store, TileStore):
        store = TileStore.open(store)
    remaining = store.remaining()
    if remaining:
        raise TilesegError(f"tile store {store.path} is not complete: {remaining} tiles left")
    check_writable(output)
    fingerprint = {**store.meta["fingerprint"], "output": output.options()}
    return merge_stored(store, output, fingerprint=fingerprint)
