"""Pillow backend for plain images (PNG, JPEG, BMP, ...): one level, no pixel size.

PNG/JPEG have no random access, so the image is decoded once at open and kept in memory (these
formats are used for small crops; gigapixel inputs are TIFF/slide formats). Modes: L/I;16/I/F
gray, LA/RGBA/PA alpha (alpha feeds ``read_valid_mask``), P via its palette, CMYK/YCbCr -> RGB.
Normalisation follows :mod:`.base` (16-bit/float scaled by the robust range of the whole image).
DPI metadata is ignored (a print resolution is not a microscope pixel size): use ``--mpp``.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

from tilesegcli.errors import SlideOpenError
from tilesegcli.readers.base import BaseReader, one_line, robust_range, to_rgb8
from tilesegcli.specs import LevelInfo, SlideInfo


class PillowReader(BaseReader):
    background = 255

    def __init__(self, path: str | Path) -> None:
        super().__init__()
        from PIL import Image

        self.path = str(path)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # corrupt-EXIF chatter; failures still raise
                with Image.open(self.path) as im:
                    fmt = im.format
                    if im.mode == "P":
                        im = im.convert("RGBA" if "transparency" in im.info else "RGB")
                    elif im.mode in ("CMYK", "YCbCr", "HSV", "LAB", "1"):
                        im = im.convert("L" if im.mode == "1" else "RGB")
                    elif im.mode == "PA":
                        im = im.convert("RGBA")
                    arr = np.asarray(im)
                    mode = im.mode
        except Exception as e:  # PIL raises many types (UnidentifiedImageError, OSError, ...)
            raise SlideOpenError(f"{self.path}: not a readable image: {one_line(e)}") from e
        if arr.ndim == 2:
            arr = arr[:, :, None]
        self._alpha = arr[:, :, -1] > 0 if mode in ("LA", "RGBA") else None
        self._pixels = arr[:, :, :-1] if self._alpha is not None else arr
        self._range = None
        if self._pixels.dtype != np.uint8:
            self._range = robust_range(self._pixels)
        self.has_valid_mask = self._alpha is not None
        h, w = arr.shape[:2]
        props = {"pillow.format": str(fmt), "pillow.mode": mode}
        self.info = SlideInfo(
            path=self.path, backend="pillow", width=w, height=h,
            levels=(LevelInfo(width=w, height=h, downsample=1.0),), mpp=None, mpp_unit="um",
            vendor=(fmt or "image").lower(), channels=arr.shape[2], dtype=str(arr.dtype),
            properties=props,
        )

    def _read_raw(self, level: int, x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
        return to_rgb8(self._pixels[y0:y1, x0:x1], self._range)

    def _read_mask_raw(self, level: int, x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
        assert self._alpha is not None
        return self._alpha[y0:y1, x0:x1]
