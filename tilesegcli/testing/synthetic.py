"""Synthetic test inputs written in code (used by the tests and benchmarks).

Owns: pyramidal tiled TIFFs that OpenSlide opens (Aperio "SVS-like" and generic-tiff), flat TIFFs,
GeoTIFFs with a geotransform + EPSG GeoKeys (+ nodata, internal alpha, GDAL ``.msk`` sidecar),
PNG/JPEG, and a few content generators with known objects (fixed seeds).

Content is either a numpy array (H, W[, C]) or a *painter*: ``painter(x, y, w, h, downsample)``
returning the (h, w[, C]) pixels of the pyramid level with that downsample at level coordinates
(x, y). Painters let benchmarks write 100k x 100k slides tile by tile without holding them in
memory. Every level of a pyramid is written from the painter (or by 2x area-averaging an array).

What OpenSlide 4 accepts (checked with openslide-bin 4.0.1): the *aperio* driver wants an
ImageDescription starting with "Aperio" on the first (tiled) directory and reads "MPP = x" from
it; further tiled directories are the levels. The *generic-tiff* driver wants a tiled first
directory; further tiled directories of decreasing size are levels; mpp comes from
X/YResolution when ResolutionUnit is centimetre.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, TypedDict

import numpy as np

if TYPE_CHECKING:
    from typing_extensions import Unpack

Painter = Callable[[int, int, int, int, float], np.ndarray]

# GeoTIFF tag codes
TAG_MODEL_PIXEL_SCALE = 33550
TAG_MODEL_TIEPOINT = 33922
TAG_MODEL_TRANSFORMATION = 34264
TAG_GEO_KEY_DIRECTORY = 34735
TAG_GDAL_NODATA = 42113


# --------------------------------------------------------------------------- content generators
class TissueOptions(TypedDict, total=False):
    """Keyword options of :func:`tissue_like` (defaults in :func:`tissue_like_with_truth`)."""

    seed: int
    n_blobs: int
    background: int
    pen: str | None
    black_border: int


def tissue_like(width: int, height: int, **opts: Unpack[TissueOptions]) -> np.ndarray:
    """An H&E-looking RGB image: pink tissue blobs with purple nuclei on a near-white glass
    background (+ optional "blue"/"green"/"black" pen stroke and black border of that width).
    Options: ``seed=0, n_blobs=3, background=242, pen=None, black_border=0``.
    Returns (H, W, 3) uint8. The tissue pixels are exactly those where ``tissue_truth`` is True."""
    return tissue_like_with_truth(width, height, **opts)[0]


def tissue_like_with_truth(
    width: int,
    height: int,
    *,
    seed: int = 0,
    n_blobs: int = 3,
    background: int = 242,
    pen: str | None = None,
    black_border: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Like :func:`tissue_like` and also the boolean tissue ground truth (H, W)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    tissue = np.zeros((height, width), bool)
    for _ in range(n_blobs):
        cx, cy = rng.uniform(0.2, 0.8) * width, rng.uniform(0.2, 0.8) * height
        rx, ry = rng.uniform(0.08, 0.2) * width, rng.uniform(0.08, 0.2) * height
        tissue |= ((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2 <= 1.0
    img = np.empty((height, width, 3), np.float32)
    img[:] = background
    noise = rng.normal(0, 3, (height, width, 1)).astype(np.float32)
    pink = np.array([230, 150, 190], np.float32)
    img[tissue] = pink
    # nuclei: small dark purple dots inside tissue
    n_nuc = int(tissue.sum() / 400)
    if n_nuc:
        ys, xs = np.nonzero(tissue)
        pick = rng.choice(len(ys), size=n_nuc, replace=False)
        nuc = np.zeros_like(tissue)
        nuc[ys[pick], xs[pick]] = True
        from scipy import ndimage

        nuc = ndimage.binary_dilation(nuc, iterations=2) & tissue
        img[nuc] = np.array([110, 60, 160], np.float32)
    img += noise
    if pen is not None:
        colour = {"blue": (40, 70, 190), "green": (40, 160, 80), "black": (25, 25, 30)}[pen]
        band = np.abs((yy - 0.5 * height) - 0.15 * (xx - 0.5 * width)) < max(2, height // 60)
        band &= (xx > 0.05 * width) & (xx < 0.95 * width)
        img[band] = colour
        tissue &= ~band
    if black_border:
        b = black_border
        border = np.zeros_like(tissue)
        border[:b], border[-b:], border[:, :b], border[:, -b:] = True, True, True, True
        img[border] = 5
        tissue &= ~border
    return np.clip(img, 0, 255).astype(np.uint8), tissue


@dataclass
class DiscScene:
    """Known round objects ("nuclei") on a plain background, paintable at any level/window.

    cx, cy, r are level-0 pixel floats; cls is a class id per disc (1-based); ids are 1..n."""

    width: int
    height: int
    cx: np.ndarray
    cy: np.ndarray
    r: np.ndarray
    cls: np.ndarray
    background: tuple[int, int, int] = (235, 200, 215)
    colours: tuple[tuple[int, int, int], ...] = ((90, 40, 140), (160, 60, 60))

    def _hits(self, x0: float, y0: float, x1: float, y1: float) -> np.ndarray:
        """Indices of discs whose bounding box meets [x0, x1] x [y0, y1]; a cx-sorted index
        keeps this O(log n + strip) so million-disc scenes paint tile by tile quickly."""
        if getattr(self, "_order", None) is None or len(self._order) != len(self.cx):
            self._order = np.argsort(self.cx, kind="stable")
            self._cx_sorted = self.cx[self._order]
            self._rmax = float(self.r.max()) if len(self.r) else 0.0
        a = np.searchsorted(self._cx_sorted, x0 - self._rmax, side="left")
        b = np.searchsorted(self._cx_sorted, x1 + self._rmax, side="right")
        idx = self._order[a:b]
        keep = ((self.cx[idx] + self.r[idx] >= x0) & (self.cx[idx] - self.r[idx] <= x1)
                & (self.cy[idx] + self.r[idx] >= y0) & (self.cy[idx] - self.r[idx] <= y1))
        return np.sort(idx[keep])

    def labels(self, x: int, y: int, w: int, h: int, downsample: float = 1.0) -> np.ndarray:
        """(h, w) int32 instance ids (0 = background) of the window at that downsample; a pixel
        belongs to a disc when its centre (in level-0 coordinates) is inside it."""
        out = np.zeros((h, w), np.int32)
        px = (x + np.arange(w) + 0.5) * downsample
        py = (y + np.arange(h) + 0.5) * downsample
        for i in self._hits(px[0] - downsample, py[0] - downsample, px[-1] + downsample,
                            py[-1] + downsample):
            c0 = max(0, int(np.searchsorted(px, self.cx[i] - self.r[i])))
            c1 = int(np.searchsorted(px, self.cx[i] + self.r[i], side="right"))
            r0 = max(0, int(np.searchsorted(py, self.cy[i] - self.r[i])))
            r1 = int(np.searchsorted(py, self.cy[i] + self.r[i], side="right"))
            if c1 <= c0 or r1 <= r0:
                continue
            d2 = (px[None, c0:c1] - self.cx[i]) ** 2 + (py[r0:r1, None] - self.cy[i]) ** 2
            sub = out[r0:r1, c0:c1]
            sub[d2 <= self.r[i] ** 2] = i + 1
        return out

    def paint(self, x: int, y: int, w: int, h: int, downsample: float = 1.0) -> np.ndarray:
        """RGB uint8 (h, w, 3) rendering of the window (a :data:`Painter`)."""
        lab = self.labels(x, y, w, h, downsample)
        out = np.empty((h, w, 3), np.uint8)
        out[:] = self.background
        fg = lab > 0
        pal = np.asarray(self.colours, np.uint8)
        out[fg] = pal[(self.cls[lab[fg] - 1] - 1) % len(pal)]
        return out


def disc_scene(
    width: int, height: int, *, n: int = 50, radius: tuple[float, float] = (6.0, 14.0),
    n_classes: int = 1, seed: int = 0, layout: str = "random",
) -> DiscScene:
    """Non-overlapping discs with a fixed seed. layout "random": rejection sampling (O(n²),
    for up to a few thousand discs); "grid": one disc per cell of a jittered lattice, O(n), for
    benchmark slides with millions of objects (radius capped to fit its cell)."""
    rng = np.random.default_rng(seed)
    if layout == "grid":
        cell = float(np.sqrt(width * height / max(n, 1)))
        cols, rows = max(1, int(width // cell)), max(1, int(height // cell))
        gx, gy = np.meshgrid(np.arange(cols), np.arange(rows))
        k = gx.size
        r = np.minimum(rng.uniform(*radius, size=k), cell / 2 - 1.5)
        px = (gx.ravel() * cell + r + rng.uniform(0, 1, k) * (cell - 2 * r - 2) + 1)
        py = (gy.ravel() * cell + r + rng.uniform(0, 1, k) * (cell - 2 * r - 2) + 1)
        return DiscScene(width, height, px, py, r, rng.integers(1, n_classes + 1, size=k))
    if layout != "random":
        raise ValueError(f"layout must be 'random' or 'grid', got {layout!r}")
    cx: list[float] = []
    cy: list[float] = []
    rr: list[float] = []
    for _ in range(n * 50):
        if len(cx) == n:
            break
        r = rng.uniform(*radius)
        x, y = rng.uniform(r, width - r), rng.uniform(r, height - r)
        if cx and np.min(np.hypot(np.array(cx) - x, np.array(cy) - y) - np.array(rr) - r) < 2:
            continue
        cx.append(x)
        cy.append(y)
        rr.append(r)
    return DiscScene(
        width, height, np.array(cx), np.array(cy), np.array(rr),
        rng.integers(1, n_classes + 1, size=len(cx)),
    )


# --------------------------------------------------------------------------- pyramid helpers
def array_painter(content: np.ndarray) -> Painter:
    """A painter over an in-memory array: level pixels are area averages of level-0 pixels."""
    from PIL import Image

    levels: dict[float, np.ndarray] = {1.0: content}

    def level_array(ds: float) -> np.ndarray:
        if ds not in levels:
            h, w = content.shape[:2]
            lw, lh = max(1, int(round(w / ds))), max(1, int(round(h / ds)))
            levels[ds] = _resize(content, lw, lh, Image.Resampling.BOX)
        return levels[ds]

    def paint(x: int, y: int, w: int, h: int, ds: float) -> np.ndarray:
        arr = level_array(float(ds))
        out = np.zeros((h, w) + arr.shape[2:], arr.dtype)
        sub = arr[y : y + h, x : x + w]
        out[: sub.shape[0], : sub.shape[1]] = sub
        return out

    return paint


def pattern_painter(pattern: np.ndarray) -> Painter:
    """A painter repeating ``pattern`` (h, w[, C]) over the plane at level 0 (at level ds the
    pattern is shrunk by ds, so levels stay consistent). O(pixels) numpy only: writes a
    100k x 100k pyramid at JPEG-encoder speed (for memory/throughput benchmarks)."""
    from PIL import Image

    cache: dict[float, np.ndarray] = {}

    def level_pattern(ds: float) -> np.ndarray:
        if ds not in cache:
            ph, pw = pattern.shape[:2]
            cache[ds] = _resize(pattern, max(1, round(pw / ds)), max(1, round(ph / ds)),
                                Image.Resampling.BOX)
        return cache[ds]

    def paint(x: int, y: int, w: int, h: int, ds: float) -> np.ndarray:
        pat = level_pattern(float(ds))
        ph, pw = pat.shape[:2]
        rows = (y + np.arange(h)) % ph
        cols = (x + np.arange(w)) % pw
        return pat[rows[:, None], cols[None, :]]

    return paint


def _resize(arr: np.ndarray, w: int, h: int, resample: int) -> np.ndarray:
    """Resize any-dtype (H, W[, C]) per channel with PIL in float32 mode."""
    from PIL import Image

    planes = arr[..., None] if arr.ndim == 2 else arr
    out = np.stack(
        [np.asarray(Image.fromarray(planes[..., c].astype(np.float32), mode="F").resize(
            (w, h), resample)) for c in range(planes.shape[2])], axis=-1)
    if np.issubdtype(arr.dtype, np.integer):
        info = np.iinfo(arr.dtype)
        out = np.clip(np.rint(out), info.min, info.max)
    out = out.astype(arr.dtype)
    return out[..., 0] if arr.ndim == 2 else out


def _tiles(paint: Painter, w: int, h: int, ds: float, tile: int) -> Iterator[np.ndarray]:
    for ty in range(0, h, tile):
        for tx in range(0, w, tile):
            t = paint(tx, ty, min(tile, w - tx), min(tile, h - ty), ds)
            if t.shape[0] != tile or t.shape[1] != tile:
                full = np.zeros((tile, tile) + t.shape[2:], t.dtype)
                full[: t.shape[0], : t.shape[1]] = t
                t = full
            yield t


def _level_sizes(width: int, height: int, n_levels: int | None, tile: int) -> list[tuple[int, int, float]]:
    sizes = [(width, height, 1.0)]
    while n_levels is None and max(sizes[-1][:2]) > tile or n_levels is not None and len(sizes) < n_levels:
        f = 2 ** len(sizes)
        lw, lh = max(1, width // f), max(1, height // f)
        sizes.append((lw, lh, width / lw))
    return sizes


def _as_painter(content: np.ndarray | Painter, width: int | None, height: int | None,
                ) -> tuple[Painter, int, int, tuple[int, ...], np.dtype]:
    if isinstance(content, np.ndarray):
        h, w = content.shape[:2]
        return array_painter(content), w, h, content.shape[2:], content.dtype
    if width is None or height is None:
        raise ValueError("a painter needs width= and height=")
    probe = np.asarray(content(0, 0, 1, 1, 1.0))
    return content, width, height, probe.shape[2:], probe.dtype


# --------------------------------------------------------------------------- writers
def write_slide_tiff(
    path: str | Path,
    content: np.ndarray | Painter,
    *,
    width: int | None = None,
    height: int | None = None,
    kind: str = "svs",
    mpp: float | None = 0.5,
    tile: int = 256,
    n_levels: int | None = None,
    compression: str | None = "jpeg",
    quality: int = 90,
    magnification: int = 20,
) -> Path:
    """Write a tiled pyramidal TIFF.

    kind: "svs" (Aperio description with MPP; OpenSlide vendor aperio), "generic" (resolution
    tags in cm; OpenSlide generic-tiff), "ome" (OME-XML with PhysicalSizeX/Y in µm, SubIFD
    pyramid; opened by tifffile), "flat" (one tiled level, no pyramid, resolution tags).
    n_levels None = halve until the level fits in one tile. JPEG needs uint8 RGB/gray content."""
    import tifffile

    path = Path(path)
    paint, w, h, extra, dtype = _as_painter(content, width, height)
    sizes = _level_sizes(w, h, 1 if kind == "flat" else n_levels, tile)
    channels = extra[0] if extra else 1
    if compression == "jpeg" and (np.dtype(dtype) != np.uint8 or channels not in (1, 3)):
        raise ValueError("JPEG needs uint8 gray/RGB content; use compression='zlib' or None")
    photometric = "rgb" if channels in (3, 4) else "minisblack"
    extrasamples = ("unassalpha",) if channels == 4 else None
    comp_args = {"level": quality} if compression == "jpeg" else None
    res = None
    if mpp is not None and kind in ("generic", "flat"):
        res = (1e4 / mpp, 1e4 / mpp)
    bigtiff = w * h * max(channels, 1) * np.dtype(dtype).itemsize > 2**31
    common = dict(tile=(tile, tile), compression=compression, compressionargs=comp_args,
                  photometric=photometric, extrasamples=extrasamples, dtype=dtype)
    with tifffile.TiffWriter(path, bigtiff=bigtiff, ome=(kind == "ome")) as tw:
        if kind == "ome":
            meta = {"axes": "YXS" if extra else "YX"}
            if mpp is not None:
                meta.update(PhysicalSizeX=mpp, PhysicalSizeXUnit="µm", PhysicalSizeY=mpp,
                            PhysicalSizeYUnit="µm")
            tw.write(_tiles(paint, w, h, 1.0, tile), shape=(h, w) + extra,
                     subifds=len(sizes) - 1, metadata=meta, **common)
            for lw, lh, ds in sizes[1:]:
                tw.write(_tiles(paint, lw, lh, ds, tile), shape=(lh, lw) + extra,
                         subfiletype=1, metadata=None, **common)
            return path
        for i, (lw, lh, ds) in enumerate(sizes):
            desc = None
            if kind == "svs":
                desc = (f"Aperio Image Library v12.0.15 \r\n{w}x{h} [0,0 {w}x{h}] ({tile}x{tile}) "
                        f"{(compression or 'raw').upper()} Q={quality}|AppMag = {magnification}")
                if mpp is not None:
                    desc += f"|MPP = {mpp}"
                if i:
                    desc = (f"Aperio Image Library v12.0.15 \r\n{w}x{h} ({tile}x{tile}) -> "
                            f"{lw}x{lh} {(compression or 'raw').upper()} Q={quality}")
            tw.write(_tiles(paint, lw, lh, ds, tile), shape=(lh, lw) + extra,
                     description=desc, metadata=None,
                     resolution=(res[0] / ds, res[1] / ds) if res else None,
                     resolutionunit="CENTIMETER" if res else None,
                     subfiletype=1 if i and kind != "svs" else 0, **common)
            if i == 0 and kind == "svs":
                # Aperio files carry a strip-based thumbnail as the 2nd directory (tifffile's SVS
                # series parser and OpenSlide's "thumbnail" associated image expect it there).
                f = max(1.0, max(w, h) / 256)
                tw_, th_ = max(1, int(w / f)), max(1, int(h / f))
                thumb = paint(0, 0, tw_, th_, w / tw_)
                tw.write(thumb, photometric=photometric, extrasamples=extrasamples,
                         compression=compression, compressionargs=comp_args, metadata=None,
                         description=f"Aperio Image Library v12.0.15 \r\n{w}x{h} -> {tw_}x{th_} - |")
    return path


def geokeys(epsg: int | None, *, geographic: bool = False, linear_unit: int = 9001) -> tuple[int, ...]:
    """A GeoKeyDirectory for a projected (ProjectedCSTypeGeoKey) or geographic CRS by EPSG code."""
    keys: list[tuple[int, int, int, int]] = [(1025, 0, 1, 1)]  # RasterPixelIsArea
    if epsg is not None and geographic:
        keys = [(1024, 0, 1, 2)] + keys + [(2048, 0, 1, epsg)]
    elif epsg is not None:
        keys = [(1024, 0, 1, 1)] + keys + [(3072, 0, 1, epsg), (3076, 0, 1, linear_unit)]
    flat = [1, 1, 0, len(keys)]
    for k in keys:
        flat.extend(k)
    return tuple(flat)


def write_geotiff(
    path: str | Path,
    content: np.ndarray,
    *,
    epsg: int | None = 32616,
    geographic: bool = False,
    pixel_size: float | tuple[float, float] = 0.5,
    origin: tuple[float, float] = (500000.0, 3700000.0),
    transform: tuple[float, float, float, float, float, float] | None = None,
    nodata: float | None = None,
    tile: int | None = None,
    overviews: int = 0,
    internal_mask: np.ndarray | None = None,
    compression: str | None = None,
) -> Path:
    """Write a GeoTIFF (north-up pixel-scale + tiepoint, or a full GDAL-order ``transform``
    written as ModelTransformation). A 4-channel uint8 content is written as RGBA (alpha = valid).
    ``overviews`` halved levels are appended as reduced-resolution pages (like a COG);
    ``internal_mask`` (H, W) bool is written as a GDAL internal mask page (SubfileType 4)."""
    import tifffile

    path = Path(path)
    h, w = content.shape[:2]
    channels = content.shape[2] if content.ndim == 3 else 1
    extratags: list[tuple[int, str, int, object, bool]] = []
    if transform is None:
        sx, sy = (pixel_size, pixel_size) if np.isscalar(pixel_size) else pixel_size  # type: ignore[misc]
        extratags.append((TAG_MODEL_PIXEL_SCALE, "d", 3, (float(sx), float(sy), 0.0), True))
        extratags.append((TAG_MODEL_TIEPOINT, "d", 6, (0.0, 0.0, 0.0, origin[0], origin[1], 0.0), True))
    else:
        g = transform
        m = (g[1], g[2], 0.0, g[0], g[4], g[5], 0.0, g[3], 0, 0, 0, 0, 0, 0, 0, 1.0)
        extratags.append((TAG_MODEL_TRANSFORMATION, "d", 16, tuple(float(v) for v in m), True))
    if epsg is not None:
        gk = geokeys(epsg, geographic=geographic)
        extratags.append((TAG_GEO_KEY_DIRECTORY, "H", len(gk), gk, True))
    if nodata is not None:
        extratags.append((TAG_GDAL_NODATA, "s", 0, f"{nodata:g}", True))
    photometric = "rgb" if channels in (3, 4) and content.dtype == np.uint8 else "minisblack"
    planar = "contig" if channels > 1 else None
    extrasamples = ("unassalpha",) if channels == 4 and photometric == "rgb" else None
    opts = dict(photometric=photometric, planarconfig=planar, extrasamples=extrasamples,
                compression=compression, tile=(tile, tile) if tile else None)
    with tifffile.TiffWriter(path) as tw:
        tw.write(content, extratags=extratags, metadata=None, **opts)
        if internal_mask is not None:
            tw.write(np.asarray(internal_mask, bool), subfiletype=4, photometric="mask",
                     metadata=None, compression=compression, tile=(tile, tile) if tile else None)
        paint = array_painter(content)
        for lw, lh, ds in _level_sizes(w, h, overviews + 1, 1)[1:]:
            tw.write(paint(0, 0, lw, lh, ds), subfiletype=1, metadata=None, **opts)
    return path


def write_msk_sidecar(image_path: str | Path, mask: np.ndarray) -> Path:
    """Write GDAL's ``<image>.msk`` sidecar (uint8, 255 = valid, 0 = invalid)."""
    import tifffile

    out = Path(str(image_path) + ".msk")
    tifffile.imwrite(out, np.where(mask, 255, 0).astype(np.uint8), photometric="minisblack",
                     metadata=None, compression="deflate")
    return out


def write_plain_image(path: str | Path, content: np.ndarray, *, quality: int = 95) -> Path:
    """PNG/JPEG (by suffix) via Pillow; 16-bit grayscale PNG is kept 16-bit."""
    from PIL import Image

    path = Path(path)
    img = Image.fromarray(content)
    kwargs = {"quality": quality} if path.suffix.lower() in (".jpg", ".jpeg") else {}
    img.save(path, **kwargs)
    return path
