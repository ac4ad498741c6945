"""GeoTIFF georeferencing, CRS, units and valid masks on synthetic rasters."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tilesegcli.readers import detect_backend, open_reader
from tilesegcli.testing import synthetic as syn


def _rgb(h: int = 64, w: int = 96, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(1, 256, (h, w, 3), dtype=np.uint8)


def test_projected_epsg_scale_tiepoint(tmp_path: Path) -> None:
    img = _rgb()
    p = syn.write_geotiff(tmp_path / "a.tif", img, epsg=32616, pixel_size=0.5,
                          origin=(733601.0, 3725139.0))
    assert detect_backend(p) == "tifffile"
    with open_reader(p) as r:
        i = r.info
        assert i.backend == "tifffile" and i.vendor == "geotiff"
        assert i.crs == "EPSG:32616" and i.mpp == 0.5 and i.mpp_unit == "m"
        assert i.geotransform == (733601.0, 0.5, 0.0, 3725139.0, 0.0, -0.5)
        assert i.is_georeferenced
        np.testing.assert_array_equal(r.read_region(0, 0, 0, 96, 64), img)
        # georeferenced rasters pad with 0, not white
        assert (r.read_region(0, 90, 60, 10, 10)[4:, :] == 0).all()
        assert r.read_valid_mask(0, 0, 0, 4, 4) is None


def test_rotated_transform_no_crs_has_no_mpp(tmp_path: Path) -> None:
    gt = (100.0, 17.32, 5.0, 200.0, 10.0, -8.66)
    p = syn.write_geotiff(tmp_path / "rot.tif", _rgb(15, 10)[..., 0], epsg=None, transform=gt)
    with open_reader(p) as r:
        assert r.info.geotransform == pytest.approx(gt)
        assert r.info.crs is None and r.info.mpp is None  # unitless: --mpp required


def test_geographic_crs_in_degrees(tmp_path: Path) -> None:
    p = syn.write_geotiff(tmp_path / "g.tif", _rgb(), epsg=4326, geographic=True,
                          pixel_size=1e-4, origin=(6.8, 53.4))
    with open_reader(p) as r:
        assert r.info.crs == "EPSG:4326" and r.info.mpp_unit == "deg"
        assert r.info.mpp == pytest.approx(1e-4)


def test_nodata_mask_and_16bit(tmp_path: Path) -> None:
    img = np.random.default_rng(1).integers(100, 4000, (50, 70), dtype=np.uint16)
    img[:, :10] = 0
    p = syn.write_geotiff(tmp_path / "n.tif", img, nodata=0, tile=32)
    with open_reader(p) as r:
        assert r.info.dtype == "uint16" and r.info.channels == 1
        m = r.read_valid_mask(0, -5, 0, 30, 50)
        assert not m[:, :15].any() and m[:, 15:].all()
        rgb = r.read_region(0, 0, 0, 70, 50)
        assert rgb.dtype == np.uint8 and (rgb[:, :10] == 0).all()
        lo, hi = (float(v) for v in r.info.properties["tileseg.value_range"].split(","))
        assert 100 <= lo < 200 and 3900 < hi <= 4000  # nodata excluded from the range


def test_rgba_alpha_and_overviews(tmp_path: Path) -> None:
    img = np.dstack([_rgb(128, 128), np.full((128, 128), 255, np.uint8)])
    img[64:, :, 3] = 0
    p = syn.write_geotiff(tmp_path / "rgba.tif", img, overviews=2, tile=32)
    with open_reader(p) as r:
        assert [lv.width for lv in r.info.levels] == [128, 64, 32]
        assert r.info.properties["tileseg.mask"] == "alpha"
        m0 = r.read_valid_mask(0, 0, 0, 128, 128)
        assert m0[:64].all() and not m0[64:].any()
        m1 = r.read_valid_mask(1, 0, 0, 64, 64)
        assert m1[:30].all() and not m1[34:].any()
        th, ds = r.thumbnail(32)
        assert th.shape == (32, 32, 3) and ds == 4.0
        vm, vds = r.valid_mask_thumbnail(32)
        assert vm.shape == (32, 32) and vm[:15].all() and not vm[17:].any()


def test_internal_mask_and_msk_sidecar(tmp_path: Path) -> None:
    img = _rgb(64, 64)
    mask = np.zeros((64, 64), bool)
    mask[8:40, 16:48] = True
    p = syn.write_geotiff(tmp_path / "im.tif", img, internal_mask=mask, tile=16)
    with open_reader(p) as r:
        assert r.info.properties["tileseg.mask"] == "internal"
        assert len(r.info.levels) == 1  # the mask page is not a pyramid level
        np.testing.assert_array_equal(r.read_valid_mask(0, 0, 0, 64, 64), mask)
    q = syn.write_geotiff(tmp_path / "side.tif", img, overviews=1)
    syn.write_msk_sidecar(q, mask)
    with open_reader(q) as r:
        assert r.info.properties["tileseg.mask"] == "msk"
        np.testing.assert_array_equal(r.read_valid_mask(0, 0, 0, 64, 64), mask)
        m1 = r.read_valid_mask(1, 0, 0, 32, 32)  # sidecar has no overview: nearest from full res
        np.testing.assert_array_equal(m1, mask[::2, ::2])


def test_feet_units_converted_to_metres(tmp_path: Path) -> None:
    import tifffile

    gk = syn.geokeys(2263, linear_unit=9002)
    p = tmp_path / "ft.tif"
    tifffile.imwrite(p, _rgb(), photometric="rgb", metadata=None, extratags=[
        (syn.TAG_MODEL_PIXEL_SCALE, "d", 3, (2.0, 2.0, 0.0), True),
        (syn.TAG_MODEL_TIEPOINT, "d", 6, (0, 0, 0, 1000.0, 2000.0, 0), True),
        (syn.TAG_GEO_KEY_DIRECTORY, "H", len(gk), gk, True)])
    with open_reader(p) as r:
        assert r.info.crs == "EPSG:2263" and r.info.mpp == pytest.approx(0.6096)
        assert r.info.geotransform[1] == 2.0  # transform stays in CRS units


def _raw_geotiff(path: Path, keys: list[tuple[int, int, int, int]], doubles: tuple[float, ...] = (),
                 ascii_: str = "") -> Path:
    import tifffile

    flat = [1, 1, 0, len(keys)] + [v for k in keys for v in k]
    tags = [(syn.TAG_MODEL_PIXEL_SCALE, "d", 3, (10.0, 10.0, 0.0), True),
            (syn.TAG_MODEL_TIEPOINT, "d", 6, (0, 0, 0, 1000.0, 2000.0, 0), True),
            (syn.TAG_GEO_KEY_DIRECTORY, "H", len(flat), tuple(flat), True)]
    if doubles:
        tags.append((34736, "d", len(doubles), doubles, True))
    if ascii_:
        tags.append((34737, "s", 0, ascii_, True))
    tifffile.imwrite(path, _rgb(20, 30), photometric="rgb", metadata=None, extratags=tags)
    return path


def test_pixel_is_point_shifts_half_a_pixel(tmp_path: Path) -> None:
    p = _raw_geotiff(tmp_path / "pt.tif", [(1024, 0, 1, 1), (1025, 0, 1, 2), (3072, 0, 1, 32618)])
    with open_reader(p) as r:
        assert r.info.geotransform == (995.0, 10.0, 0.0, 2005.0, 0.0, -10.0)
        assert r.info.crs == "EPSG:32618"


def test_user_defined_utm_and_albers_become_proj_strings(tmp_path: Path) -> None:
    utm = _raw_geotiff(tmp_path / "utm.tif", [
        (1024, 0, 1, 1), (1025, 0, 1, 1), (1026, 34737, 9, 0), (2048, 0, 1, 32767),
        (2056, 0, 1, 7030), (3072, 0, 1, 32767), (3074, 0, 1, 16133), (3076, 0, 1, 9001)],
        ascii_="UTM 33S|")
    with open_reader(utm) as r:
        assert r.info.crs == "+proj=utm +zone=33 +south +ellps=WGS84 +units=m +no_defs"
        assert r.info.mpp == 10.0 and r.info.mpp_unit == "m"
        assert r.info.properties["geokey.1026"] == "UTM 33S"
    aea = _raw_geotiff(tmp_path / "aea.tif", [
        (1024, 0, 1, 1), (2048, 0, 1, 4326), (3072, 0, 1, 32767), (3075, 0, 1, 11),
        (3078, 34736, 1, 0), (3079, 34736, 1, 1), (3080, 34736, 1, 2), (3081, 34736, 1, 3)],
        doubles=(29.5, 45.5, -96.0, 23.0))
    with open_reader(aea) as r:
        assert r.info.crs is not None and r.info.crs.startswith(
            "+proj=aea +lat_1=29.5 +lat_2=45.5 +lat_0=23.0 +lon_0=-96.0")
    odd = _raw_geotiff(tmp_path / "odd.tif", [(1024, 0, 1, 1), (3072, 0, 1, 32767),
                                               (3075, 0, 1, 7)])  # Mercator: not mapped
    with open_reader(odd) as r:
        assert r.info.crs is None and r.info.geotransform is not None
