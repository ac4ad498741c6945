"""``tileseg merge STORE -o OUT``: stitch a finished tile store into outputs explicitly
(e.g. after a SLURM array whose tasks all finished, or to write another format)."""

from __future__ import annotations

from pathlib import Path

import click

from tilesegcli.cli.options import logging_options, output_options, setup_logging


@click.command("merge")
@click.argument("store", type=click.Path(path_type=Path, file_okay=False, exists=True))
@click.option("-o", "--output", type=click.Path(path_type=Path, allow_dash=True), required=True,
              help="Output file ('-' = stdout).")
@output_options()
@click.option("--overwrite", is_flag=True, help="Replace an existing output.")
@logging_options()
def merge(store: Path, output: Path, fmt: str | None, labels: Path | None,
          min_area: float | None, simplify: float | None, overwrite: bool, quiet: bool,
          log_level: str | None) -> None:
    """Stitch a complete tile store into polygons.

    \b
    $ tileseg merge slide.geojson.tiles.zarr -o slide.geojson
    $ tileseg merge /scratch/slide.geojson.tiles.zarr -o slide.geojson.gz --min-area 10
    """
    from tilesegcli.errors import OutputError
    from tilesegcli.merge import merge_store
    from tilesegcli.outputs import output_spec
    from tilesegcli.store import TileStore

    setup_logging(log_level, quiet)
    ts = TileStore.open(store)
    spec = output_spec(output, fmt, labels=labels, min_area=min_area, simplify=simplify)
    if not spec.to_stdout and spec.path.exists() and not overwrite:
        raise OutputError(f"{output} exists; pass --overwrite")
    merge_store(ts, spec)
    if not spec.to_stdout:
        click.echo(str(output))
