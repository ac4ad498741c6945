"""`tileseg eval PRED GT`: instance (PQ, DQ, SQ, AJI, F1, Dice) and semantic (mIoU) metrics."""

from __future__ import annotations

import json
import math
from pathlib import Path

import click

from tilesegcli.atomic import atomic_path
from tilesegcli.errors import OutputError


@click.command("eval")
@click.argument("pred", type=click.Path(exists=True, path_type=Path))
@click.argument("gt", type=click.Path(exists=True, path_type=Path))
@click.option("--size", nargs=2, type=click.IntRange(min=1), default=None, metavar="H W",
              help="Image size (height width) in pixels, needed when both sides are polygons.")
@click.option("--json", "json_out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also write every number as JSON to this file ('-' = stdout instead of the table).")
def eval_cmd(pred: Path, gt: Path, size: tuple[int, int] | None, json_out: Path | None) -> None:
    """Score predictions against ground truth, per image and overall.

    PRED and GT are files or directories (paired by file stem) of QuPath GeoJSON, ImageScope XML,
    CPM-15 mask text, NuCLS .npy or label images (PNG/TIFF/npy). Objects match at IoU > 0.5.

    \b
    $ tileseg eval pred.geojson gt.xml --size 1000 1000
    $ tileseg eval preds/ labels/ --json scores.json
    """
    from tilesegcli.eval.evaluate import evaluate

    report = evaluate(pred, gt, tuple(size) if size else None)
    data = report.to_dict()
    text = json.dumps(_clean(data), indent=2, allow_nan=False)
    if json_out is not None and str(json_out) == "-":
        click.echo(text)
        return
    click.echo(report.table())
    if json_out is not None:
        _write_atomic(json_out, text)


def _clean(x: object) -> object:
    """NaN (undefined metric) -> null, numpy scalars -> Python numbers."""
    if isinstance(x, dict):
        return {k: _clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_clean(v) for v in x]
    if hasattr(x, "item"):
        x = x.item()  # type: ignore[union-attr]
    if isinstance(x, float) and math.isnan(x):
        return None
    return x


def _write_atomic(path: Path, text: str) -> None:
    try:
        with atomic_path(path.resolve()) as tmp:
            tmp.write_text(text + "\n")
    except OSError as e:
        raise OutputError(f"cannot write {path}: {e}") from e
