"""`tileseg info FILE`: size, levels, mpp, vendor, CRS of a slide/image (text or --json).

\b
$ tileseg info slide.svs
$ tileseg info sample_geotiff.tif --json | jq .crs
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from tilesegcli.specs import SlideInfo


def bounds(info: SlideInfo) -> list[int] | None:
    """OpenSlide's non-empty region (x, y, w, h) in level-0 px when the format records one."""
    keys = ("openslide.bounds-x", "openslide.bounds-y", "openslide.bounds-width",
            "openslide.bounds-height")
    try:
        return [int(info.properties[k]) for k in keys]
    except (KeyError, ValueError):
        return None


def info_dict(info: SlideInfo, *, properties: bool = False) -> dict[str, Any]:
    d: dict[str, Any] = {
        "path": info.path,
        "backend": info.backend,
        "vendor": info.vendor,
        "width": info.width,
        "height": info.height,
        "levels": [
            {"width": lv.width, "height": lv.height, "downsample": round(lv.downsample, 6)}
            for lv in info.levels
        ],
        "mpp": info.mpp,
        "mpp_unit": info.mpp_unit,
        "channels": info.channels,
        "dtype": info.dtype,
        "crs": info.crs,
        "geotransform": list(info.geotransform) if info.geotransform else None,
        "valid_mask": info.properties.get("tileseg.mask"),
        "bounds": bounds(info),
    }
    if properties:
        d["properties"] = dict(info.properties)
    return d


def format_text(info: SlideInfo) -> str:
    unit = {"um": "µm/px", "m": "m/px", "deg": "deg/px"}.get(info.mpp_unit, info.mpp_unit)
    lines = [
        f"file:      {info.path}",
        f"backend:   {info.backend}" + (f" (vendor {info.vendor})" if info.vendor else ""),
        f"size:      {info.width} x {info.height} px, {info.channels} channel(s) {info.dtype}",
        f"mpp:       {info.mpp:.6g} {unit}" if info.mpp else "mpp:       unknown (pass --mpp to predict)",
        f"levels:    {len(info.levels)}",
    ]
    for i, lv in enumerate(info.levels):
        lines.append(f"  [{i}] {lv.width} x {lv.height}  downsample {lv.downsample:.4g}")
    if info.geotransform is not None:
        lines.append(f"crs:       {info.crs or 'none (not defined in the file)'}")
        lines.append("transform: " + ", ".join(f"{v:.10g}" for v in info.geotransform))
    b = bounds(info)
    if b is not None:
        lines.append(f"bounds:    x={b[0]} y={b[1]} w={b[2]} h={b[3]} (scanned region, level 0)")
    if "tileseg.mpp_ignored" in info.properties:
        lines.append(f"note:      ignored mpp {info.properties['tileseg.mpp_ignored']} "
                     "(TIFF print resolution, not a pixel size)")
    mask = info.properties.get("tileseg.mask")
    if mask:
        lines.append(f"valid mask: {mask}")
    return "\n".join(lines)


@click.command("info")
@click.argument("file", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print a JSON object instead of text.")
@click.option("--backend", type=click.Choice(["auto", "openslide", "tifffile", "pillow"]),
              default="auto", show_default=True, help="Force a reader backend.")
@click.option("--properties", is_flag=True, help="Include every backend property (JSON only).")
def info(file: Path, as_json: bool, backend: str, properties: bool) -> None:
    """Print size, pyramid levels, pixel size (mpp), vendor and CRS of FILE.

    \b
    $ tileseg info slide.svs
    $ tileseg info aerial.tif --json
    """
    from tilesegcli.readers import open_reader

    with open_reader(file, backend=backend) as reader:
        if as_json:
            click.echo(json.dumps(info_dict(reader.info, properties=properties), indent=2))
        else:
            click.echo(format_text(reader.info))
