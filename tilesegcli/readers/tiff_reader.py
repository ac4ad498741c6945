"""tifffile + zarr 3 backend: any TIFF (flat, pyramidal, SVS, OME-TIFF, GeoTIFF/COG).

Pixels are read lazily through ``series.aszarr()`` (a tifffile ZarrTiffStore opened with
zarr 3): a window decodes only the tiles/strips it touches, never a whole level. Pyramid levels
come from tifffile's series (SubIFDs, reduced pages, COG overviews). Metadata:
* mpp (µm) from OME PhysicalSizeX/Y (unit-converted), the Aperio description ``MPP = x``, or
  X/YResolution (cm or inch) only when it implies < 20 µm/px: 72/300 dpi print resolutions
  (352.8 / 84.7 µm) written by default by many tools are not microscope pixel sizes.
* GeoTIFFs: geotransform, CRS and pixel size in m (or deg) via :mod:`.geotiff`.
Valid mask (first source found, GDAL's order): internal mask pages (SubfileType 4), a
``<file>.msk`` sidecar, GDAL_NODATA (a pixel is invalid when all its first <= 4 bands equal
nodata), an alpha extra sample, NaN in float data. None when none apply.
tifffile/zarr are not documented as thread-safe on one handle, so raw reads hold ``self._lock``.
"""

from __future__ import annotations

import contextlib
import logging
import re
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from tilesegcli.errors import SlideOpenError
from tilesegcli.readers.base import BaseReader, one_line, robust_range, to_rgb8
from tilesegcli.readers.geotiff import georef_of
from tilesegcli.specs import LevelInfo, SlideInfo

MEMMAP_MIN_CHUNK_BYTES = 16 << 20  # single chunks bigger than this are memory-mapped if possible
MAX_TAG_MPP = 20.0  # µm/px; resolution tags implying more are print/screen DPI, not microscopy
_OME_UNIT_TO_UM = {"µm": 1.0, "um": 1.0, "nm": 1e-3, "mm": 1e3, "cm": 1e4, "m": 1e6, "Å": 1e-4}


@contextlib.contextmanager
def _quiet_tifffile() -> Iterator[None]:
    """tifffile logs a warning per damaged IFD; we report one error line instead."""
    logger = logging.getLogger("tifffile")
    old = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(old)


class _LevelArrays:
    """zarr arrays of one series' levels plus the axes -> (y, x, c) indexing."""

    def __init__(self, series: Any, path: str | None = None, series_index: int = 0) -> None:
        import zarr

        self.store = series.aszarr(multiscales=True)
        group = zarr.open_group(self.store, mode="r")
        self.arrays: list[Any] = [group[str(i)] for i in range(len(series.levels))]
        self.axes = [lv.axes for lv in series.levels]
        if path is not None:
            self._memmap_huge_strips(series, path, series_index)

    def _memmap_huge_strips(self, series: Any, path: str, series_index: int) -> None:
        """An uncompressed image stored as one huge strip is a single zarr chunk, so every
        window would read all of it; such contiguous data is memory-mapped instead (the OS
        pages in only the rows a window touches)."""
        import tifffile

        for i, lv in enumerate(series.levels):
            arr = self.arrays[i]
            chunk_bytes = int(np.prod(arr.chunks)) * arr.dtype.itemsize
            if chunk_bytes < MEMMAP_MIN_CHUNK_BYTES or lv.keyframe.compression != 1:
                continue
            if lv.dataoffset is None:  # not contiguous in the file
                continue
            try:
                mm = tifffile.memmap(path, series=series_index, level=i, mode="r")
            except Exception:
                continue
            if tuple(mm.shape) == tuple(arr.shape):
                self.arrays[i] = mm

    def size(self, i: int) -> tuple[int, int]:
        ax, shp = self.axes[i], self.arrays[i].shape
        return shp[ax.index("X")], shp[ax.index("Y")]

    def channels(self) -> int:
        ax, shp = self.axes[0], self.arrays[0].shape
        for c in "SC":
            if c in ax:
                return int(shp[ax.index(c)])
        return 1

    def read(self, i: int, x0: int, y0: int, x1: int, y1: int, max_c: int = 4) -> np.ndarray:
        ax = self.axes[i]
        chan = "S" if "S" in ax else ("C" if "C" in ax else None)
        idx: list[Any] = []
        for a in ax:
            if a == "Y":
                idx.append(slice(y0, y1))
            elif a == "X":
                idx.append(slice(x0, x1))
            elif a == chan:
                idx.append(slice(0, max_c))
            else:
                idx.append(0)  # first plane of Z/T/extra channel axes
        arr = np.asarray(self.arrays[i][tuple(idx)])
        kept = [a for a in ax if a in ("Y", "X") or a == chan]
        order = [kept.index("Y"), kept.index("X")] + ([kept.index(chan)] if chan else [])
        arr = arr.transpose(order)
        return arr if arr.ndim == 3 else arr[:, :, None]


class TiffReader(BaseReader):
    def __init__(self, path: str | Path) -> None:
        super().__init__()
        import tifffile

        self.path = str(path)
        with _quiet_tifffile():
            try:
                self._tf = tifffile.TiffFile(self.path)
            except Exception as e:
                raise SlideOpenError(f"{self.path}: not a readable TIFF: {one_line(e)}") from e
            try:
                self._setup()
            except SlideOpenError:
                self._tf.close()
                raise
            except Exception as e:
                self._tf.close()
                raise SlideOpenError(f"{self.path}: cannot open TIFF image: {one_line(e)}") from e
        self._cache: tuple[tuple[int, ...], np.ndarray] | None = None

    # ------------------------------------------------------------------ metadata
    def _setup(self) -> None:
        tf = self._tf
        series = [s for s in tf.series if not (s.keyframe.subfiletype & 4)]
        if not series:
            raise SlideOpenError(f"{self.path}: not a readable TIFF (no image; damaged or truncated?)")
        s = series[0]
        page = s.keyframe
        self._levels = _LevelArrays(s, self.path, tf.series.index(s))
        sizes = [self._levels.size(i) for i in range(len(s.levels))]
        W, H = sizes[0]
        levels = tuple(
            LevelInfo(width=w, height=h, downsample=(W / w + H / h) / 2) for w, h in sizes
        )
        self._photometric = int(page.photometric)
        self._colormap = page.colormap if self._photometric == 3 else None
        c = self._levels.channels()
        dtype = np.dtype(s.dtype)
        extras = tuple(int(e) for e in (page.extrasamples or ()))
        self._alpha_index: int | None = None
        if extras and c >= 2:
            for k, e in enumerate(extras):
                if e in (1, 2):  # associated / unassociated alpha
                    self._alpha_index = c - len(extras) + k
                    break
        geo = georef_of(page)
        props: dict[str, str] = {"tiff.series": s.name or "", "tiff.axes": s.axes,
                                 "tiff.compression": page.compression.name,
                                 "tiff.photometric": page.photometric.name,
                                 "tiff.tiled": str(page.is_tiled)}
        desc = page.description or ""
        if desc:
            props["tiff.ImageDescription"] = desc[:2000]
        mpp, unit, vendor, crs, gt = None, "um", "tiff", None, None
        if geo is not None:
            mpp, unit, crs, gt, vendor = geo.pixel_size, geo.unit, geo.crs, geo.geotransform, "geotiff"
            props.update({f"geokey.{k}": str(v) for k, v in geo.keys.items()})
        elif tf.is_ome:
            vendor, mpp = "ome", self._ome_mpp()
        elif tf.is_svs or desc.startswith("Aperio"):
            vendor = "aperio"
            m = re.search(r"\|\s*MPP\s*=\s*([0-9.eE+-]+)", desc)
            mpp = float(m.group(1)) if m else None
        if mpp is None and geo is None:
            mpp = self._resolution_mpp(page)
        self._nodata = self._gdal_nodata(page)
        self._mask_levels: _LevelArrays | None = None
        self._sidecar: Any = None
        # GDAL's precedence: explicit mask (internal, then .msk sidecar), nodata, alpha, NaN.
        masks = [m for m in tf.series if m.keyframe.subfiletype & 4 and m.shape[:2] == s.shape[:2]]
        if masks:
            self._mask_levels, props["tileseg.mask"] = _LevelArrays(masks[0]), "internal"
        elif Path(self.path + ".msk").is_file():
            import tifffile

            self._sidecar = tifffile.TiffFile(self.path + ".msk")
            self._mask_levels, props["tileseg.mask"] = _LevelArrays(self._sidecar.series[0]), "msk"
        elif self._nodata is not None:
            props["tileseg.mask"] = f"nodata={self._nodata:g}"
            self._alpha_index = None
        elif self._alpha_index is not None:
            props["tileseg.mask"] = "alpha"
        elif dtype.kind == "f":
            props["tileseg.mask"] = "nan"
        self.has_valid_mask = "tileseg.mask" in props
        self.background = 0 if gt is not None else 255
        self._range: tuple[float, float] | None = None
        if dtype != np.uint8 and dtype != np.bool_ and self._colormap is None:
            self._range = self._sample_range()
            props["tileseg.value_range"] = f"{self._range[0]:g},{self._range[1]:g}"
        self.info = SlideInfo(
            path=self.path, backend="tifffile", width=W, height=H, levels=levels, mpp=mpp,
            mpp_unit=unit, vendor=vendor, channels=c, dtype=str(dtype), crs=crs,
            geotransform=gt, properties=props,  # type: ignore[arg-type]
        )

    def _ome_mpp(self) -> float | None:
        try:
            root = ET.fromstring(self._tf.ome_metadata or "")
        except ET.ParseError:
            return None
        for el in root.iter():
            if el.tag.endswith("Pixels") and "PhysicalSizeX" in el.attrib:
                f = _OME_UNIT_TO_UM.get(el.attrib.get("PhysicalSizeXUnit", "µm"))
                if f is None:
                    return None
                x = float(el.attrib["PhysicalSizeX"]) * f
                y = float(el.attrib.get("PhysicalSizeY", el.attrib["PhysicalSizeX"])) * f
                return (x + y) / 2
        return None

    @staticmethod
    def _resolution_mpp(page: Any) -> float | None:
        unit = page.tags.get(296)
        xr = page.tags.get(282)
        if unit is None or xr is None:
            return None
        num, den = xr.value if isinstance(xr.value, tuple) else (xr.value, 1)
        if not num or not den:
            return None
        per_unit = num / den
        mpp = {3: 1e4, 2: 25400.0}.get(int(unit.value), 0.0) / per_unit
        return mpp if 0 < mpp < MAX_TAG_MPP else None

    @staticmethod
    def _gdal_nodata(page: Any) -> float | None:
        t = page.tags.get(42113)
        if t is None:
            return None
        try:
            return float(str(t.value).strip().strip("\x00"))
        except ValueError:
            return None

    def _sample_range(self) -> tuple[float, float]:
        # coarsest level that still has >= 1024 px on its long side, then a strided (not
        # averaged) sample: averaging in coarse levels would shrink the value range
        sizes = [self._levels.size(k) for k in range(len(self._levels.arrays))]
        i = max([k for k, (w, h) in enumerate(sizes) if max(w, h) >= 1024], default=0)
        w, h = sizes[i]
        step = max(1, int(np.ceil(max(w, h) / 1024)))
        raw = self._read_level(i, 0, 0, w, h, step)
        valid = self._valid_from_raw(raw)
        return robust_range(raw[:, :, : 3 if raw.shape[2] >= 3 else 1], valid)

    # ------------------------------------------------------------------ pixels
    def _read_level(self, i: int, x0: int, y0: int, x1: int, y1: int, step: int = 1) -> np.ndarray:
        if step == 1:
            return self._levels.read(i, x0, y0, x1, y1)
        # strided sample for statistics: read row bands so memory stays bounded
        rows = []
        for yy in range(y0, y1, step * 64):
            band = self._levels.read(i, x0, yy, x1, min(y1, yy + step * 64))
            rows.append(band[::step, ::step])
        return np.concatenate(rows, axis=0)

    def _raw(self, level: int, x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
        key = (level, x0, y0, x1, y1)
        with self._lock:
            if self._cache is not None and self._cache[0] == key:
                return self._cache[1]
            raw = self._read_level(level, x0, y0, x1, y1)
            self._cache = (key, raw)
            return raw

    def _read_raw(self, level: int, x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
        raw = self._raw(level, x0, y0, x1, y1)
        if self._colormap is not None:
            cmap = np.asarray(self._colormap)
            cmap = (cmap >> 8 if cmap.max() > 255 else cmap).astype(np.uint8).T
            return cmap[raw[:, :, 0].astype(np.intp)]
        if self._alpha_index is not None and raw.shape[2] == 2:
            raw = raw[:, :, :1]
        return to_rgb8(raw, self._range, invert=self._photometric == 0)

    def _valid_from_raw(self, raw: np.ndarray) -> np.ndarray | None:
        bands = raw[:, :, : min(raw.shape[2], 4)]
        if self._alpha_index is not None and raw.shape[2] > self._alpha_index:
            return raw[:, :, self._alpha_index] > 0
        if self._nodata is not None:
            if np.isnan(self._nodata):
                return ~np.all(np.isnan(bands), axis=2)
            return ~np.all(bands == self._nodata, axis=2)
        if raw.dtype.kind == "f":
            return ~np.all(np.isnan(bands), axis=2)
        return None

    def _read_mask_raw(self, level: int, x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
        ml = self._mask_levels
        if ml is None:
            valid = self._valid_from_raw(self._raw(level, x0, y0, x1, y1))
            return np.ones((y1 - y0, x1 - x0), bool) if valid is None else valid
        lv = self.info.levels[level]
        with self._lock:
            for j in range(len(ml.arrays)):
                if ml.size(j) == (lv.width, lv.height):
                    return ml.read(j, x0, y0, x1, y1)[:, :, 0] > 0
            # no mask level of that size: nearest-sample the full-resolution mask
            mw, mh = ml.size(0)
            fx, fy = mw / lv.width, mh / lv.height
            cols = np.minimum(((np.arange(x0, x1) + 0.5) * fx).astype(int), mw - 1)
            rows = np.minimum(((np.arange(y0, y1) + 0.5) * fy).astype(int), mh - 1)
            m = ml.read(0, cols[0], rows[0], cols[-1] + 1, rows[-1] + 1)[:, :, 0] > 0
            return m[np.ix_(rows - rows[0], cols - cols[0])]

    def _close(self) -> None:
        with self._lock:
            self._levels.arrays = []  # drop zarr arrays / memmaps before the file handle
            if self._mask_levels is not None:
                self._mask_levels.arrays = []
            self._tf.close()
            if self._sidecar is not None:
                self._sidecar.close()
