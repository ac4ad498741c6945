"""Working resolution: which pyramid level to read and how to resample it to the model's mpp.

Owns ``choose_level`` (level just finer than the target + resample factor, unit checks, the
``--mpp`` override and the missing-resolution error), ``work_size`` and ``read_work_region`` /
``read_work_mask`` (what the runner calls for every tile).

Definitions (see specs.py): downsample = level-0 px per working px = target_mpp / mpp;
level_scale = level px per working px = downsample / level.downsample (>= 1 except when the
target is finer than level 0, where we upsample). A level within ``snap_tol`` (2%) of the target
is read as is (level_scale = 1, downsample = that level's): resampling by 0.2% (0.499 vs 0.5
µm/px) would only blur.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from tilesegcli.errors import MissingResolutionError, UsageError
from tilesegcli.readers.base import resize_rgb
from tilesegcli.specs import SlideInfo

UNIT_NAMES = {"um": "µm/px", "m": "m/px", "deg": "degrees/px"}


def effective_mpp(info: SlideInfo, mpp_override: float | None = None) -> float:
    """The level-0 pixel size to use: the override, else the file's; else a clear error."""
    if mpp_override is not None:
        if not (mpp_override > 0 and math.isfinite(mpp_override)):
            raise UsageError(f"--mpp must be a positive number, got {mpp_override}")
        return float(mpp_override)
    if info.mpp is None or not info.mpp > 0:
        unit = UNIT_NAMES.get(info.mpp_unit, info.mpp_unit)
        hint = "e.g. --mpp 0.25 for a 40x slide"
        try:  # a hint only: scanners differ, so we never turn this into a pixel size
            mag = float(info.properties.get("openslide.objective-power", "nan"))
        except ValueError:
            mag = math.nan
        if mag > 0:
            hint = f"it says {mag:g}x, typically ~{10.0 / mag:.2g} µm/px"
        raise MissingResolutionError(
            f"{info.path}: the file has no pixel size; pass --mpp (level-0 {unit}; {hint}) "
            f"to say what it is")
    return float(info.mpp)


def level0_mpp(info: SlideInfo, mpp_override: float | None = None, *,
               required: bool = True) -> float | None:
    """The one level-0 pixel size of a run: ``mpp_override`` (--mpp), else the file's.
    ``required`` (a model with a physical pixel size): :func:`effective_mpp`, an error without
    one; else (a model run on level-0 pixels as they are) it may be None."""
    if not required:
        return mpp_override if mpp_override is not None else info.mpp
    return effective_mpp(info, mpp_override)


def check_unit(info: SlideInfo, target_unit: str | None, model: str | None = None) -> None:
    """A model trained in µm/px cannot run on m/px rasters (and vice versa)."""
    if target_unit is None or target_unit == info.mpp_unit:
        return
    who = f"model {model!r}" if model else "the model"
    have = UNIT_NAMES.get(info.mpp_unit, info.mpp_unit)
    want = UNIT_NAMES.get(target_unit, target_unit)
    hint = ""
    if info.mpp_unit == "deg":
        hint = "; reproject the raster to a metric CRS (e.g. UTM) first"
    raise UsageError(f"{info.path}: {who} works in {want} but this input is in {have}{hint}")


def choose_level(
    info: SlideInfo,
    target_mpp: float,
    mpp_override: float | None = None,
    *,
    target_unit: str | None = None,
    snap_tol: float = 0.02,
    model: str | None = None,
) -> tuple[int, float, float]:
    """(level, downsample level-0 px per working px, level_scale level px per working px).

    ``target_unit`` (the model card's mpp_unit) must equal the input's ``mpp_unit`` (UsageError
    naming ``model`` otherwise); no pixel size and no ``mpp_override`` -> MissingResolutionError
    naming --mpp."""
    check_unit(info, target_unit, model)
    if not (target_mpp > 0 and math.isfinite(target_mpp)):
        raise UsageError(f"target mpp must be positive, got {target_mpp}")
    mpp0 = effective_mpp(info, mpp_override)
    want = target_mpp / mpp0
    level = 0
    for i, lv in enumerate(info.levels):
        if lv.downsample <= want * (1 + snap_tol) and lv.downsample > info.levels[level].downsample:
            level = i
    ds_level = info.levels[level].downsample
    scale = want / ds_level
    if abs(scale - 1.0) <= snap_tol:
        return level, ds_level, 1.0
    return level, want, scale


def work_size(info: SlideInfo, downsample: float) -> tuple[int, int]:
    """(width, height) of the whole image at the working resolution (at least 1x1)."""
    return max(1, math.ceil(info.width / downsample - 1e-6)), max(1, math.ceil(info.height / downsample - 1e-6))


def _level_and_scale(params: Any) -> tuple[int, float]:
    if isinstance(params, tuple):
        return int(params[0]), float(params[2])
    return int(params.level), float(params.level_scale)


def _valid_work_box(reader: Any, level: int, s: float, x: int, y: int, w: int, h: int
                    ) -> tuple[int, int, int, int] | None:
    """The part of the working window that lies on the image (work px), or None."""
    lv = reader.info.levels[level]
    vx0, vy0 = max(x, 0), max(y, 0)
    vx1 = min(x + w, math.ceil(lv.width / s - 1e-9))
    vy1 = min(y + h, math.ceil(lv.height / s - 1e-9))
    return (vx0, vy0, vx1, vy1) if vx1 > vx0 and vy1 > vy0 else None


def _resample(reader: Any, level: int, s: float, box: tuple[int, int, int, int],
              mask: bool) -> np.ndarray | None:
    """Resample the on-image work box from the level, reading only pixels on the image so the
    filter never mixes in padding (no dark/white halo at image borders)."""
    vx0, vy0, vx1, vy1 = box
    lv = reader.info.levels[level]
    fx0, fy0 = vx0 * s, vy0 * s
    fx1, fy1 = min(vx1 * s, lv.width), min(vy1 * s, lv.height)
    m = 0 if mask else 2 + int(math.ceil(s))  # filter support margin
    lx0, ly0 = max(0, int(math.floor(fx0)) - m), max(0, int(math.floor(fy0)) - m)
    lx1 = min(lv.width, int(math.ceil(fx1)) + m)
    ly1 = min(lv.height, int(math.ceil(fy1)) + m)
    if mask:
        src = reader.read_valid_mask(level, lx0, ly0, lx1 - lx0, ly1 - ly0)
        if src is None:
            return None
    else:
        src = reader.read_region(level, lx0, ly0, lx1 - lx0, ly1 - ly0)
    filt = "nearest" if mask else ("lanczos" if s > 1 else "bicubic")
    return resize_rgb(src, vx1 - vx0, vy1 - vy0, (fx0 - lx0, fy0 - ly0, fx1 - lx0, fy1 - ly0), filt)


def read_work_region(reader: Any, params: Any, x: int, y: int, w: int, h: int) -> np.ndarray:
    """(h, w, 3) uint8 RGB of the working-resolution window (x, y, w, h).

    ``params`` is a GridSpec (or anything with ``.level`` and ``.level_scale``) or the tuple
    returned by :func:`choose_level`. Reads the covering window of the level (+ a margin for the
    filter, clipped to the image) and resamples with PIL: Lanczos when shrinking, bicubic when
    enlarging. Work pixels off the image are the reader's background, as in ``read_region``."""
    level, s = _level_and_scale(params)
    if s == 1.0:
        return reader.read_region(level, x, y, w, h)
    out = np.full((h, w, 3), getattr(reader, "background", 255), np.uint8)
    box = _valid_work_box(reader, level, s, x, y, w, h)
    if box is not None:
        part = _resample(reader, level, s, box, mask=False)
        assert part is not None
        out[box[1] - y : box[3] - y, box[0] - x : box[2] - x] = part
    return out


def read_work_mask(reader: Any, params: Any, x: int, y: int, w: int, h: int) -> np.ndarray | None:
    """(h, w) bool valid mask at working resolution (nearest; off-image = False), or None when
    the input has no mask source."""
    level, s = _level_and_scale(params)
    if s == 1.0:
        return reader.read_valid_mask(level, x, y, w, h)
    if not getattr(reader, "has_valid_mask", True):
        return None
    out = np.zeros((h, w), bool)
    box = _valid_work_box(reader, level, s, x, y, w, h)
    if box is not None:
        part = _resample(reader, level, s, box, mask=True)
        if part is None:
            return None
        out[box[1] - y : box[3] - y, box[0] - x : box[2] - x] = part
    return out
