"""Readers on synthetic inputs built in code: every backend, pyramid, padding, normalisation,
thumbnail, thread safety, backend choice."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest

from tilesegcli.readers import Reader, detect_backend, open_reader
from tilesegcli.readers.base import to_rgb8
from tilesegcli.testing import synthetic as syn


@pytest.fixture(scope="module")
def tissue() -> np.ndarray:
    return syn.tissue_like(1100, 700, seed=3)


@pytest.fixture(scope="module")
def slides(tmp_path_factory: pytest.TempPathFactory, tissue: np.ndarray) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("slides")
    out = {}
    for kind in ("svs", "generic", "ome", "flat"):
        out[kind] = syn.write_slide_tiff(d / f"{kind}.tif", tissue, kind=kind, mpp=0.25, tile=128)
    out["raw_svs"] = syn.write_slide_tiff(d / "raw.svs", tissue, kind="svs", mpp=0.5,
                                          tile=128, compression="zlib")
    return out


@pytest.mark.parametrize("kind,backend,vendor,levels", [
    ("svs", "openslide", "aperio", 5),
    ("generic", "openslide", "generic-tiff", 5),
    ("ome", "tifffile", "ome", 5),
    ("flat", "tifffile", "tiff", 1),  # one level: auto -> OpenSlide generic-tiff accepts it too
])
def test_auto_backend_and_metadata(slides: dict[str, Path], kind: str, backend: str,
                                   vendor: str, levels: int) -> None:
    p = slides[kind]
    with open_reader(p) as r:
        assert isinstance(r, Reader)
        i = r.info
        if kind == "flat":
            assert i.backend in ("openslide", "tifffile")
        else:
            assert (i.backend, i.vendor) == (backend, vendor)
        assert (i.width, i.height) == (1100, 700)
        assert len(i.levels) == levels
        assert i.mpp == pytest.approx(0.25, rel=1e-4)
        assert i.mpp_unit == "um" and i.crs is None and not i.is_georeferenced
        ds = [lv.downsample for lv in i.levels][:3]
        assert ds == pytest.approx([1, 2, 4][: len(ds)], rel=1e-3)


# OpenSlide ignores SubIFD pyramids/OME sizes (auto uses tifffile for OME), so no (ome, openslide)
@pytest.mark.parametrize("kind,backend", [
    (k, b) for k in ("svs", "generic", "ome", "flat") for b in ("openslide", "tifffile")
    if (k, b) != ("ome", "openslide")])
def test_read_region_matches_content(slides: dict[str, Path], tissue: np.ndarray,
                                     kind: str, backend: str) -> None:
    with open_reader(slides[kind], backend=backend) as r:
        assert r.info.backend == backend
        got = r.read_region(0, 300, 200, 256, 128)
        assert got.shape == (128, 256, 3) and got.dtype == np.uint8
        err = np.abs(got.astype(int) - tissue[200:328, 300:556]).mean()
        assert err < 4  # JPEG q90
        if len(r.info.levels) > 1:
            lvl = r.read_region(1, 0, 0, 550, 350)
            ref = syn.array_painter(tissue)(0, 0, 550, 350, 2.0)
            assert np.abs(lvl.astype(int) - ref).mean() < 4


def test_lossless_exact_and_padding(slides: dict[str, Path], tissue: np.ndarray) -> None:
    for backend in ("openslide", "tifffile"):
        with open_reader(slides["raw_svs"], backend=backend) as r:
            assert r.info.mpp == pytest.approx(0.5)
            np.testing.assert_array_equal(r.read_region(0, 17, 29, 300, 200), tissue[29:229, 17:317])
            # window hanging over the bottom-right corner: white padding
            win = r.read_region(0, 1000, 600, 200, 200)
            np.testing.assert_array_equal(win[:100, :100], tissue[600:, 1000:])
            assert (win[100:] == 255).all() and (win[:, 100:] == 255).all()
            # negative origin and fully outside
            win = r.read_region(0, -10, -20, 30, 40)
            assert (win[:20] == 255).all() and (win[:, :10] == 255).all()
            np.testing.assert_array_equal(win[20:, 10:], tissue[:20, :20])
            assert (r.read_region(0, 5000, 5000, 16, 16) == 255).all()
            assert r.read_valid_mask(0, 0, 0, 8, 8) is None


def test_thumbnail(slides: dict[str, Path], tissue: np.ndarray) -> None:
    with open_reader(slides["svs"]) as r:
        th, ds = r.thumbnail(256)
        assert max(th.shape[:2]) == 256 and th.dtype == np.uint8
        assert ds == pytest.approx(1100 / 256, rel=1e-3)
        assert th.shape[:2] == (round(700 / ds), 256)
        ref = syn.array_painter(tissue)(0, 0, th.shape[1], th.shape[0], ds)
        assert np.abs(th.astype(int) - ref).mean() < 4
        big, ds1 = r.thumbnail(4000)  # never upsampled past level 0
        assert ds1 == 1.0 and big.shape == (700, 1100, 3)


def test_concurrent_reads_are_consistent(slides: dict[str, Path]) -> None:
    for backend in ("openslide", "tifffile"):
        with open_reader(slides["generic"], backend=backend) as r:
            boxes = [(0, (k * 37) % 900, (k * 53) % 500, 200, 200) for k in range(24)]
            expected = [r.read_region(*b) for b in boxes]
            results: dict[int, np.ndarray] = {}

            def work(idx: list[int]) -> None:
                for k in idx:
                    results[k] = r.read_region(*boxes[k])  # noqa: B023

            threads = [threading.Thread(target=work, args=(list(range(t, 24, 4)),))
                       for t in range(4)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            for k in range(24):
                np.testing.assert_array_equal(results[k], expected[k])


def test_painter_pyramid_large_without_array(tmp_path: Path) -> None:
    scene = syn.disc_scene(3000, 2000, n=60, seed=1)
    p = syn.write_slide_tiff(tmp_path / "d.svs", scene.paint, width=3000, height=2000,
                             kind="svs", mpp=0.5, compression="zlib")
    with open_reader(p) as r:
        assert r.info.backend == "openslide" and len(r.info.levels) == 5
        np.testing.assert_array_equal(r.read_region(0, 500, 400, 300, 200),
                                      scene.paint(500, 400, 300, 200, 1.0))
        lab = scene.labels(0, 0, 3000, 2000)
        assert len(np.unique(lab)) == len(scene.cx) + 1


def _write_tiff(path: Path, arr: np.ndarray, **kw: object) -> Path:
    import tifffile

    tifffile.imwrite(path, arr, metadata=None, **kw)
    return path


def test_grayscale_16bit_rgba_multiband(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    gray = rng.integers(0, 256, (60, 80), dtype=np.uint8)
    with open_reader(_write_tiff(tmp_path / "g.tif", gray)) as r:
        out = r.read_region(0, 0, 0, 80, 60)
        assert out.shape == (60, 80, 3)
        for c in range(3):
            np.testing.assert_array_equal(out[..., c], gray)
    # 16-bit: linear robust scaling, monotone, saturates at the extremes
    ramp = np.tile(np.linspace(1000, 5000, 200).astype(np.uint16), (50, 1))
    with open_reader(_write_tiff(tmp_path / "u16.tif", ramp)) as r:
        assert r.info.dtype == "uint16" and r.info.properties["tileseg.value_range"]
        out = r.read_region(0, 0, 0, 200, 50)[0, :, 0].astype(int)
        assert (np.diff(out) >= 0).all() and out[0] == 0 and out[-1] == 255
        assert abs(out[100] - 128) < 4
        # same scaling for every tile: a sub-window gives the identical values
        np.testing.assert_array_equal(r.read_region(0, 50, 10, 20, 5)[0, :, 0], out[50:70])
    rgba = np.zeros((40, 50, 4), np.uint8)
    rgba[..., :3] = (10, 200, 30)
    rgba[:20, :, 3] = 255
    with open_reader(_write_tiff(tmp_path / "a.tif", rgba, photometric="rgb",
                                 extrasamples=["unassalpha"])) as r:
        assert (r.read_region(0, 0, 0, 50, 40) == (10, 200, 30)).all()
        m = r.read_valid_mask(0, 0, 0, 50, 40)
        assert m is not None and m[:20].all() and not m[20:].any()
        assert not r.read_valid_mask(0, 40, 30, 20, 20)[10:, :].any()  # outside = invalid
    five = rng.integers(0, 256, (5, 30, 40), dtype=np.uint8)  # planar 5-band
    with open_reader(_write_tiff(tmp_path / "m.tif", five, photometric="minisblack",
                                 planarconfig="separate")) as r:
        np.testing.assert_array_equal(r.read_region(0, 0, 0, 40, 30), five[:3].transpose(1, 2, 0))
    f32 = rng.normal(size=(30, 30)).astype(np.float32)
    f32[:5] = np.nan
    with open_reader(_write_tiff(tmp_path / "f.tif", f32)) as r:
        m = r.read_valid_mask(0, 0, 0, 30, 30)
        assert not m[:5].any() and m[5:].all()
        assert (r.read_region(0, 0, 0, 30, 5) == 0).all()


def test_pillow_images(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    rgb = rng.integers(0, 256, (33, 47, 3), dtype=np.uint8)
    p = syn.write_plain_image(tmp_path / "x.png", rgb)
    assert detect_backend(p) == "pillow"
    with open_reader(p) as r:
        assert r.info.backend == "pillow" and r.info.mpp is None
        np.testing.assert_array_equal(r.read_region(0, 0, 0, 47, 33), rgb)
        assert (r.read_region(0, 40, 30, 10, 10)[3:, :] == 255).all()
    rgba = np.dstack([rgb, np.where(np.arange(47) < 20, 255, 0).astype(np.uint8)[None].repeat(33, 0)])
    with open_reader(syn.write_plain_image(tmp_path / "a.png", rgba)) as r:
        m = r.read_valid_mask(0, 0, 0, 47, 33)
        assert m[:, :20].all() and not m[:, 20:].any()
    g16 = (np.arange(64 * 64).reshape(64, 64) * 10).astype(np.uint16)
    with open_reader(syn.write_plain_image(tmp_path / "g16.png", g16)) as r:
        out = r.read_region(0, 0, 0, 64, 64)
        assert out[0, 0, 0] == 0 and out[-1, -1, 0] == 255
    smooth = syn.tissue_like(120, 90, seed=2)
    with open_reader(syn.write_plain_image(tmp_path / "j.jpg", smooth, quality=95)) as r:
        assert r.info.vendor == "jpeg"
        assert np.abs(r.read_region(0, 0, 0, 120, 90).astype(int) - smooth).mean() < 6


def test_to_rgb8_rules() -> None:
    assert to_rgb8(np.ones((2, 2), bool)).tolist() == [[[255] * 3] * 2] * 2
    c = to_rgb8(np.array([[3 + 4j]], np.complex64), (0.0, 10.0))
    assert c[0, 0, 0] == 128  # |3+4j| = 5 -> half range
    two = to_rgb8(np.dstack([np.full((1, 1), 7, np.uint8), np.full((1, 1), 99, np.uint8)]))
    assert two.tolist() == [[[7, 7, 7]]]
    inv = to_rgb8(np.zeros((1, 1), np.uint8), invert=True)
    assert inv.tolist() == [[[255, 255, 255]]]


def test_closed_reader_and_bad_args(slides: dict[str, Path]) -> None:
    from tilesegcli.errors import SlideReadError

    r = open_reader(slides["ome"])
    with pytest.raises(ValueError):
        r.read_region(9, 0, 0, 4, 4)
    with pytest.raises(ValueError):
        r.read_region(0, 0, 0, 0, 4)
    r.close()
    r.close()  # idempotent
    with pytest.raises(SlideReadError, match="closed"):
        r.read_region(0, 0, 0, 4, 4)


@pytest.mark.parametrize("kind", ["svs", "generic"])
def test_non_8bit_rgb_pyramids_use_tifffile(tmp_path: Path, kind: str) -> None:
    """OpenSlide would open these but truncate 16-bit / premultiply alpha; auto avoids it."""
    rng = np.random.default_rng(5)
    g16 = rng.integers(0, 60000, (300, 260), dtype=np.uint16)
    rgba = rng.integers(0, 255, (300, 260, 4), dtype=np.uint8)
    for name, arr in (("g16", g16), ("rgba", rgba)):
        p = syn.write_slide_tiff(tmp_path / f"{name}.tif", arr, kind=kind, compression="zlib",
                                 tile=64)
        assert detect_backend(p) == "tifffile"
        with open_reader(p) as r:
            assert r.info.backend == "tifffile" and len(r.info.levels) == 4
            assert r.info.mpp == pytest.approx(0.5)
            got = r.read_region(0, 0, 0, 260, 300)
            if name == "rgba":
                np.testing.assert_array_equal(got, rgba[..., :3])
                np.testing.assert_array_equal(r.read_valid_mask(0, 0, 0, 260, 300), rgba[..., 3] > 0)
            else:
                lo, hi = np.percentile(g16, [0.5, 99.5])
                ref = np.clip((g16 - lo) * 255 / (hi - lo) + 0.5, 0, 255).astype(np.uint8)
                assert np.abs(got[..., 0].astype(int) - ref).max() <= 12  # range from a subsample


def test_single_strip_uncompressed_is_memory_mapped(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    import tifffile

    from tilesegcli.readers import tiff_reader

    monkeypatch.setattr(tiff_reader, "MEMMAP_MIN_CHUNK_BYTES", 1 << 16)
    img = syn.tissue_like(700, 500, seed=1)
    p = tmp_path / "strip.tif"
    tifffile.imwrite(p, img, photometric="rgb", rowsperstrip=500, metadata=None)
    with open_reader(p, backend="tifffile") as r:
        assert isinstance(r._levels.arrays[0], np.memmap)
        np.testing.assert_array_equal(r.read_region(0, 650, 480, 100, 40)[:20, :50], img[480:, 650:])
    q = tmp_path / "strip_z.tif"  # compressed single strip: stays a zarr chunk
    tifffile.imwrite(q, img, photometric="rgb", rowsperstrip=500, compression="zlib", metadata=None)
    with open_reader(q, backend="tifffile") as r:
        assert not isinstance(r._levels.arrays[0], np.memmap)
        np.testing.assert_array_equal(r.read_region(0, 0, 0, 700, 500), img)
