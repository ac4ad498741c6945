"""The Reader protocol every backend implements, and the behaviour they share.

Owns: window clamping + padding, the pixel normalisation rule (anything -> uint8 RGB), thumbnail
construction by bounded-memory block reads, error wrapping (any backend failure during a read
becomes a one-line :class:`SlideReadError` naming the file), and thread safety.

Normalisation rule (applied to every read, identical for every backend):
* channels: 1 band -> gray replicated to RGB; 2 bands (gray + alpha) -> first band replicated;
  3 bands -> as is; >= 4 bands -> the first three (RGBA -> RGB, RGB+NIR -> RGB, multispectral ->
  bands 1-3). An alpha band is never painted into the RGB; it feeds ``read_valid_mask``.
* dtype: uint8 as is; bool -> 0/255; complex -> magnitude; any other dtype (uint16, int16, float)
  is mapped linearly from a per-file robust range ``value_range`` = (0.5th, 99.5th) percentiles
  (all bands jointly) of the valid pixels of a strided sample of about 1024 x 1024 pixels,
  computed once at open so every tile of a file gets the same mapping; NaN -> 0.
* windows partly or fully outside the image are padded with ``background`` (255 white for
  brightfield slides, 0 for georeferenced rasters).

Thread safety: ``read_region``/``read_valid_mask``/``thumbnail`` may be called from any thread
(e.g. the runner's prefetch thread) and concurrently from several. OpenSlide handles are
thread-safe and not serialised (reads run in parallel). The tifffile backend serialises raw reads
with ``self._lock`` (tifffile itself decodes the chunks of one read in parallel on machines with
>= 3 cores); Pillow images are in memory. Closing a reader while another thread reads is not
supported: stop the reader threads first.
"""

from __future__ import annotations

import threading
from typing import Any, Protocol, runtime_checkable

import numpy as np

from tilesegcli.errors import SlideReadError, TilesegError
from tilesegcli.specs import SlideInfo


@runtime_checkable
class Reader(Protocol):
    info: SlideInfo

    def read_region(self, level: int, x: int, y: int, w: int, h: int) -> np.ndarray:
        """(h, w, 3) uint8 RGB of the window at level ``level`` in that level's pixels."""
        ...

    def read_valid_mask(self, level: int, x: int, y: int, w: int, h: int) -> np.ndarray | None:
        """(h, w) bool, True = valid data (alpha/nodata/mask), or None if the input has none."""
        ...

    def thumbnail(self, max_px: int) -> tuple[np.ndarray, float]:
        """(RGB uint8 whose long side is <= max_px, level-0 pixels per thumbnail pixel)."""
        ...

    def close(self) -> None: ...

    def __enter__(self) -> Reader: ...

    def __exit__(self, *exc: object) -> None: ...


def one_line(e: BaseException) -> str:
    msg = " ".join(str(e).split()) or type(e).__name__
    return msg if len(msg) < 300 else msg[:297] + "..."


def robust_range(sample: np.ndarray, valid: np.ndarray | None = None) -> tuple[float, float]:
    """(lo, hi) = 0.5th / 99.5th percentiles of the finite valid values (all bands jointly)."""
    a = np.abs(sample) if np.iscomplexobj(sample) else sample
    a = a.astype(np.float64)
    if valid is not None:
        a = a[valid]
    a = a[np.isfinite(a)]
    if a.size == 0:
        return 0.0, 1.0
    lo, hi = np.percentile(a, [0.5, 99.5])
    if hi <= lo:
        hi = lo + 1.0
    return float(lo), float(hi)


def to_rgb8(raw: np.ndarray, value_range: tuple[float, float] | None = None,
            invert: bool = False) -> np.ndarray:
    """Apply the module's normalisation rule to a raw (h, w) or (h, w, C) array."""
    a = raw if raw.ndim == 3 else raw[:, :, None]
    c = a.shape[2]
    a = a[:, :, :3] if c >= 3 else a[:, :, :1]
    if a.dtype == np.uint8:
        out = a
    elif a.dtype == np.bool_:
        out = a.astype(np.uint8) * 255
    else:
        f = np.abs(a) if np.iscomplexobj(a) else a
        f = f.astype(np.float32)
        lo, hi = value_range if value_range is not None else robust_range(f)
        f = (f - lo) * (255.0 / (hi - lo))
        f = np.nan_to_num(f, nan=0.0, posinf=255.0, neginf=0.0)
        out = np.clip(f + 0.5, 0, 255).astype(np.uint8)
    if invert:
        out = 255 - out
    if out.shape[2] == 1:
        out = np.repeat(out, 3, axis=2)
    return np.ascontiguousarray(out)


def resize_rgb(img: np.ndarray, out_w: int, out_h: int,
               box: tuple[float, float, float, float] | None = None,
               filter: str = "area") -> np.ndarray:
    """Resize (h, w, 3|1) uint8 (or (h, w) bool/uint8) to (out_h, out_w) with PIL.

    ``box`` = (x0, y0, x1, y1) fractional source region; filter "area" (box average, for
    thumbnails/masks), "lanczos" (downsampling tiles), "bicubic" (upsampling) or "nearest"."""
    from PIL import Image

    modes = {"area": Image.Resampling.BOX, "lanczos": Image.Resampling.LANCZOS,
             "bicubic": Image.Resampling.BICUBIC, "nearest": Image.Resampling.NEAREST,
             "bilinear": Image.Resampling.BILINEAR}
    is_bool = img.dtype == np.bool_
    src = img.astype(np.uint8) * 255 if is_bool else img
    pil = Image.fromarray(src)
    out = np.asarray(pil.resize((int(out_w), int(out_h)), modes[filter], box=box))
    return out >= 128 if is_bool else out


class BaseReader:
    """Shared implementation; a backend sets ``info``, ``background`` and implements
    ``_read_raw(level, x0, y0, x1, y1) -> (h, w, 3) uint8`` for in-bounds windows (and may
    implement ``_read_mask_raw`` the same way, returning bool)."""

    info: SlideInfo
    background: int = 255
    has_valid_mask: bool = False

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._closed = False

    # ------------------------------------------------------------------ backend hooks
    def _read_raw(self, level: int, x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
        raise NotImplementedError

    def _read_mask_raw(self, level: int, x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
        raise NotImplementedError

    def _close(self) -> None:
        pass

    # ------------------------------------------------------------------ public API
    def _clip(self, level: int, x: int, y: int, w: int, h: int
              ) -> tuple[int, int, int, int] | None:
        if not 0 <= level < len(self.info.levels):
            raise ValueError(f"level {level} out of range (0..{len(self.info.levels) - 1})")
        if w <= 0 or h <= 0:
            raise ValueError(f"empty window {w}x{h}")
        lv = self.info.levels[level]
        x0, y0 = max(0, x), max(0, y)
        x1, y1 = min(lv.width, x + w), min(lv.height, y + h)
        if x1 <= x0 or y1 <= y0:
            return None
        return x0, y0, x1, y1

    def _wrap(self, fn: Any, *args: Any) -> Any:
        if self._closed:
            raise SlideReadError(f"{self.info.path}: reader is closed")
        try:
            return fn(*args)
        except TilesegError:
            raise
        except (Exception, MemoryError) as e:  # any decoder/library failure
            raise SlideReadError(f"{self.info.path}: cannot read level {args[0]} window "
                                 f"{args[1:]}: {one_line(e)}") from e

    def read_region(self, level: int, x: int, y: int, w: int, h: int) -> np.ndarray:
        out = np.full((h, w, 3), self.background, np.uint8)
        inner = self._clip(level, x, y, w, h)
        if inner is None:
            return out
        x0, y0, x1, y1 = inner
        raw = self._wrap(self._read_raw, level, x0, y0, x1, y1)
        if raw.shape != (y1 - y0, x1 - x0, 3):
            raise SlideReadError(f"{self.info.path}: backend returned {raw.shape} for a "
                                 f"{x1 - x0}x{y1 - y0} window")
        out[y0 - y : y1 - y, x0 - x : x1 - x] = raw
        return out

    def read_valid_mask(self, level: int, x: int, y: int, w: int, h: int) -> np.ndarray | None:
        if not self.has_valid_mask:
            return None
        out = np.zeros((h, w), bool)
        inner = self._clip(level, x, y, w, h)
        if inner is None:
            return out
        x0, y0, x1, y1 = inner
        out[y0 - y : y1 - y, x0 - x : x1 - x] = self._wrap(self._read_mask_raw, level, x0, y0, x1, y1)
        return out

    def best_level_for(self, downsample: float) -> int:
        """Index of the coarsest level whose downsample is <= ``downsample`` (+0.5% slack)."""
        best = 0
        for i, lv in enumerate(self.info.levels):
            if lv.downsample <= downsample * 1.005 and lv.downsample >= self.info.levels[best].downsample:
                best = i
        return best

    def _thumb_geometry(self, max_px: int) -> tuple[float, int, int]:
        W, H = self.info.width, self.info.height
        d = max(1.0, max(W, H) / max(1, max_px))
        tw, th = max(1, min(max_px, round(W / d))), max(1, min(max_px, round(H / d)))
        return d, tw, th

    def _blockwise(self, max_px: int, read: Any, fill: Any, filter: str) -> np.ndarray:
        """Build a thumbnail-sized image from the best level, read in full-width row bands of
        <= ~16 M level pixels (full width so stripped TIFFs decode each strip once)."""
        d, tw, th = self._thumb_geometry(max_px)
        level = self.best_level_for(d)
        lv = self.info.levels[level]
        sy = lv.height / th  # level rows per thumbnail row
        band_rows = min(2048, max(16, (16 << 20) // max(1, lv.width)))
        bh_max = max(1, int(band_rows / sy))  # thumbnail rows per band
        out = None
        for ty in range(0, th, bh_max):
            bh = min(bh_max, th - ty)
            fy0, fy1 = ty * sy, (ty + bh) * sy
            ly0, ly1 = int(np.floor(fy0)), min(lv.height, int(np.ceil(fy1)))
            src = read(level, 0, ly0, lv.width, ly1 - ly0)
            part = resize_rgb(src, tw, bh, (0.0, fy0 - ly0, float(lv.width), min(fy1, ly1) - ly0),
                              filter)
            if out is None:
                out = fill((th, tw) + part.shape[2:], part.dtype)
            out[ty : ty + bh] = part
        assert out is not None
        return out

    def thumbnail(self, max_px: int) -> tuple[np.ndarray, float]:
        d, tw, th = self._thumb_geometry(max_px)
        img = self._blockwise(max_px, self.read_region, np.zeros, "area")
        return img, self.info.width / tw

    def valid_mask_thumbnail(self, max_px: int) -> tuple[np.ndarray, float] | None:
        """Thumbnail-sized valid mask (True = valid), or None without a mask source."""
        if not self.has_valid_mask:
            return None
        d, tw, th = self._thumb_geometry(max_px)
        m = self._blockwise(max_px, self.read_valid_mask, np.zeros, "nearest")
        return m, self.info.width / tw

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._close()

    def __enter__(self) -> BaseReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        i = self.info
        return f"<{type(self).__name__} {i.path} {i.width}x{i.height} levels={len(i.levels)}>"
