"""Readers: one small interface (:class:`Reader`) over OpenSlide, tifffile + zarr, and Pillow.

``open_reader(path, backend="auto")`` picks the backend:
* GeoTIFF (geo tags), OME-TIFF, and TIFFs that are not 8-bit gray/RGB -> tifffile (OpenSlide
  would drop georeferencing and SubIFD pyramids / physical sizes, truncate 16-bit samples to
  their high byte and premultiply alpha);
* anything OpenSlide recognises (svs, ndpi, mrxs, scn, bif, vms, DICOM, generic tiled TIFF) ->
  OpenSlide, falling back to tifffile when OpenSlide then refuses to open it;
* other TIFFs (flat, stripped, e.g. kidney-48-5.tif) -> tifffile; everything else -> Pillow.
``backend="openslide"|"tifffile"|"pillow"`` forces one (the CLI's ``--backend``).
Every failure is a one-line :class:`SlideOpenError` naming the file.
Backends are imported lazily (nothing heavy when this package is imported).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from tilesegcli.errors import SlideOpenError, UsageError
from tilesegcli.readers.base import BaseReader, Reader

__all__ = ["BACKENDS", "BaseReader", "Reader", "detect_backend", "open_reader"]

BACKENDS = ("auto", "openslide", "tifffile", "pillow")
_TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")
log = logging.getLogger(__name__)


def _check_path(path: str | Path) -> Path:
    p = Path(path)
    if not p.exists():
        raise SlideOpenError(f"{p}: no such file")
    if p.is_dir():
        raise SlideOpenError(f"{p}: is a directory, not an image file")
    if not os.access(p, os.R_OK):
        raise SlideOpenError(f"{p}: permission denied")
    if p.stat().st_size == 0:
        raise SlideOpenError(f"{p}: empty file")
    return p


def _tiff_prefers_tifffile(p: Path) -> bool:
    """GeoTIFF / OME-TIFF (metadata only tifffile keeps) and anything but 8-bit gray/RGB
    (OpenSlide's libtiff path silently truncates 16-bit and premultiplies alpha)."""
    import tifffile

    from tilesegcli.readers.geotiff import GEO_TAGS
    from tilesegcli.readers.tiff_reader import _quiet_tifffile

    try:
        with _quiet_tifffile(), tifffile.TiffFile(p) as tf:
            page = tf.pages.first
            if tf.is_ome or any(code in page.tags for code in GEO_TAGS):
                return True
            return page.bitspersample != 8 or page.samplesperpixel not in (1, 3)
    except Exception:
        return False


def detect_backend(path: str | Path) -> str:
    """The backend ``auto`` would try first for this file."""
    p = _check_path(path)
    with open(p, "rb") as f:
        head = f.read(4)
    is_tiff = head in _TIFF_MAGIC
    if is_tiff and _tiff_prefers_tifffile(p):
        return "tifffile"
    try:
        import openslide

        if openslide.OpenSlide.detect_format(str(p)):
            return "openslide"
    except Exception:  # detection itself failing just means "not OpenSlide"
        pass
    return "tifffile" if is_tiff else "pillow"


def _open(backend: str, p: Path) -> BaseReader:
    if backend == "openslide":
        from tilesegcli.readers.openslide_reader import OpenSlideReader

        return OpenSlideReader(p)
    if backend == "tifffile":
        from tilesegcli.readers.tiff_reader import TiffReader

        return TiffReader(p)
    from tilesegcli.readers.pil_reader import PillowReader

    return PillowReader(p)


def open_reader(path: str | Path, backend: str = "auto") -> BaseReader:
    """Open an image/slide; see the module docstring for the choice. Use as a context manager."""
    if backend not in BACKENDS:
        raise UsageError(f"unknown backend {backend!r} (choose from {', '.join(BACKENDS)})")
    p = _check_path(path)
    if backend != "auto":
        return _open(backend, p)
    first = detect_backend(p)
    try:
        return _open(first, p)
    except SlideOpenError as e:
        fallback = {"openslide": "tifffile", "tifffile": "pillow"}.get(first)
        if fallback is None:
            raise SlideOpenError(f"{p}: not a slide or image format tileseg can read "
                                 f"(OpenSlide, tifffile and Pillow refuse it)") from e
        if fallback == "pillow":  # a TIFF tifffile refuses; Pillow only as a last resort
            try:
                return _open("pillow", p)
            except SlideOpenError:
                raise e from None
        log.warning("%s: OpenSlide refused it (%s); using tifffile", p, e)
        try:
            return _open(fallback, p)
        except SlideOpenError as e2:
            raise SlideOpenError(f"{p}: cannot open with OpenSlide ({_tail(e)}) "
                                 f"nor tifffile ({_tail(e2)})") from e2


def _tail(e: Exception) -> str:
    s = str(e)
    return s.split(": ", 1)[1] if ": " in s else s
