"""GeoTIFF georeferencing from raw TIFF tags (no GDAL/pyproj needed).

Owns: the GDAL-order geotransform from ModelTransformation or ModelPixelScale + ModelTiepoint
(with GDAL's half-pixel shift for RasterPixelIsPoint), the CRS from the GeoKey directory
(ProjectedCSTypeGeoKey / GeographicTypeGeoKey -> "EPSG:n"; user-defined UTM / Albers / transverse
Mercator -> a PROJ string; otherwise None), and the pixel size with its unit: "m" for projected
CRSs (feet converted), "deg" for geographic ones; None when there is no CRS (unitless).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

GEO_TAGS = (33550, 33922, 34264, 34735)
USER_DEFINED = 32767
_LINEAR_TO_M = {9001: 1.0, 9002: 0.3048, 9003: 1200.0 / 3937.0, 9036: 1000.0}


@dataclass(frozen=True)
class Georef:
    geotransform: tuple[float, float, float, float, float, float] | None
    crs: str | None
    pixel_size: float | None  # in `unit`
    unit: str  # "m" | "deg"
    keys: dict[int, Any]


def _tag(page: Any, code: int) -> Any:
    t = page.tags.get(code)
    return None if t is None else t.value


def parse_geokeys(page: Any) -> dict[int, Any]:
    """GeoKey id -> value (int, float/tuple of floats, or str) from the raw directory tags."""
    d = _tag(page, 34735)
    if not d or len(d) < 4:
        return {}
    doubles = _tag(page, 34736) or ()
    ascii_ = _tag(page, 34737) or ""
    if isinstance(ascii_, bytes):
        ascii_ = ascii_.decode("latin-1")
    keys: dict[int, Any] = {}
    for i in range(int(d[3])):
        kid, loc, count, off = (int(v) for v in d[4 + 4 * i : 8 + 4 * i])
        if loc == 0:
            keys[kid] = off
        elif loc == 34736:
            vals = tuple(float(v) for v in doubles[off : off + count])
            keys[kid] = vals[0] if count == 1 else vals
        elif loc == 34737:
            keys[kid] = ascii_[off : off + count].rstrip("|\x00")
    return keys


def geotransform_of(page: Any, keys: dict[int, Any]) -> tuple[float, ...] | None:
    m = _tag(page, 34264)
    if m is not None and len(m) >= 16:
        gt = (m[3], m[0], m[1], m[7], m[4], m[5])
    else:
        scale, tie = _tag(page, 33550), _tag(page, 33922)
        if scale is None or tie is None or len(tie) < 6:
            return None
        sx, sy = float(scale[0]), float(scale[1])
        i, j, X, Y = float(tie[0]), float(tie[1]), float(tie[3]), float(tie[4])
        gt = (X - i * sx, sx, 0.0, Y + j * sy, 0.0, -sy)
    gt = tuple(float(v) for v in gt)
    if keys.get(1025) == 2:  # RasterPixelIsPoint: the tiepoint is a pixel centre (GDAL shifts)
        gt = (gt[0] - 0.5 * (gt[1] + gt[2]), gt[1], gt[2], gt[3] - 0.5 * (gt[4] + gt[5]),
              gt[4], gt[5])
    return gt


def _proj_string(keys: dict[int, Any]) -> str | None:
    """A PROJ string for the user-defined projections seen in practice, else None."""
    wgs84 = keys.get(2048) == 4326 or keys.get(2056) == 7030
    ell = " +ellps=WGS84" if wgs84 else ""
    units = " +units=m" if keys.get(3076, 9001) == 9001 else ""
    proj = keys.get(3074)
    if isinstance(proj, int) and (16001 <= proj <= 16060 or 16101 <= proj <= 16160):
        zone, south = proj % 100, proj > 16100
        return f"+proj=utm +zone={zone}{' +south' if south else ''}{ell}{units} +no_defs"
    ct = keys.get(3075)
    g = keys.get
    if ct == 11:  # Albers equal area
        return (f"+proj=aea +lat_1={g(3078)} +lat_2={g(3079)} +lat_0={g(3081, g(3085, 0.0))} "
                f"+lon_0={g(3080, g(3088, 0.0))} +x_0={g(3082, 0.0)} +y_0={g(3083, 0.0)}"
                f"{ell}{units} +no_defs")
    if ct == 1:  # transverse Mercator
        return (f"+proj=tmerc +lat_0={g(3081, 0.0)} +lon_0={g(3080, 0.0)} "
                f"+k={g(3092, 1.0)} +x_0={g(3082, 0.0)} +y_0={g(3083, 0.0)}{ell}{units} +no_defs")
    return None


def georef_of(page: Any) -> Georef | None:
    """Georeferencing of a TIFF page, or None when it has no geotransform tags."""
    if not any(code in page.tags for code in GEO_TAGS):
        return None
    keys = parse_geokeys(page)
    gt = geotransform_of(page, keys)
    model = keys.get(1024)
    pcs, gcs = keys.get(3072), keys.get(2048)
    crs: str | None = None
    unit = "m"
    if isinstance(pcs, int) and 0 < pcs != USER_DEFINED:
        crs = f"EPSG:{pcs}"
    elif model == 2 and isinstance(gcs, int) and 0 < gcs != USER_DEFINED:
        crs, unit = f"EPSG:{gcs}", "deg"
    elif model == 1:
        crs = _proj_string(keys)
    elif model == 2:
        unit = "deg"
    pixel: float | None = None
    if gt is not None and (crs is not None or model in (1, 2)):
        px = (math.hypot(gt[1], gt[4]) + math.hypot(gt[2], gt[5])) / 2
        factor = _LINEAR_TO_M.get(int(keys.get(3076, 9001)), 1.0) if unit == "m" else 1.0
        pixel = px * factor
    return Georef(geotransform=gt, crs=crs, pixel_size=pixel, unit=unit, keys=keys)  # type: ignore[arg-type]
