"""OpenSlide backend: svs, ndpi, mrxs, scn, bif, vms, DICOM WSI, philips tiff, generic tiled tiff.

Owns the translation from OpenSlide's world (read_region takes a *level-0* location and returns
non-premultiplied RGBA) to the Reader protocol (level-local windows, RGB on white). Transparent
pixels (outside the scanned area of sparse formats such as mrxs) are composited onto white.
OpenSlide handles are thread-safe, so reads are not serialised. Reads of levels whose
downsample is not an integer (e.g. 2.0005) are positioned by OpenSlide at level-0 coordinates and
may be interpolated by a fraction (< 0.5) of a pixel; the tifffile backend reads levels exactly. mpp comes from
``openslide.mpp-x/y`` (ignored when it only comes from TIFF resolution tags implying >= 20 µm/px,
i.e. a print DPI); ``openslide.bounds-*`` and every other property are kept in
``SlideInfo.properties`` (level-0 size is the full image, not the bounds).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tilesegcli.errors import SlideOpenError
from tilesegcli.readers.base import BaseReader, one_line
from tilesegcli.specs import LevelInfo, SlideInfo


def _float(props: dict[str, str], key: str) -> float | None:
    try:
        v = float(props[key])
    except (KeyError, ValueError):
        return None
    return v if np.isfinite(v) and v > 0 else None


class OpenSlideReader(BaseReader):
    background = 255

    def __init__(self, path: str | Path) -> None:
        super().__init__()
        import openslide

        self.path = str(path)
        try:
            self._slide = openslide.OpenSlide(self.path)
        except openslide.OpenSlideUnsupportedFormatError as e:
            raise SlideOpenError(f"{self.path}: not a format OpenSlide supports") from e
        except (openslide.OpenSlideError, OSError, ValueError) as e:
            raise SlideOpenError(f"{self.path}: OpenSlide cannot open it: {one_line(e)}") from e
        s = self._slide
        props = {str(k): str(v) for k, v in s.properties.items()}
        mx, my = _float(props, "openslide.mpp-x"), _float(props, "openslide.mpp-y")
        mpp = (mx + my) / 2 if mx and my else (mx or my)
        if mpp is not None and "tiff.ResolutionUnit" in props and mpp >= 20.0:
            # generic-tiff mpp derived from 72/300 dpi print resolution tags: not a pixel size
            props["tileseg.mpp_ignored"] = f"{mpp:g}"
            mpp = None
        levels = tuple(
            LevelInfo(width=int(w), height=int(h), downsample=float(d))
            for (w, h), d in zip(s.level_dimensions, s.level_downsamples, strict=True)
        )
        self.info = SlideInfo(
            path=self.path,
            backend="openslide",
            width=levels[0].width,
            height=levels[0].height,
            levels=levels,
            mpp=mpp,
            mpp_unit="um",
            vendor=props.get("openslide.vendor"),
            channels=3,
            dtype="uint8",
            properties=props,
        )

    def _read_raw(self, level: int, x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
        ds = self.info.levels[level].downsample
        # OpenSlide wants the top-left in level-0 pixels; round so x0*ds maps back onto x0.
        loc = (int(round(x0 * ds)), int(round(y0 * ds)))
        rgba = np.asarray(self._slide.read_region(loc, level, (x1 - x0, y1 - y0)))
        rgb = rgba[:, :, :3]
        alpha = rgba[:, :, 3]
        if alpha.min() == 255:
            return np.ascontiguousarray(rgb)
        a = alpha[:, :, None].astype(np.float32) / 255.0
        return (rgb * a + 255.0 * (1.0 - a) + 0.5).astype(np.uint8)

    def _close(self) -> None:
        self._slide.close()
