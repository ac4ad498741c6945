"""Level choice, mpp override, unit checks and working-resolution reads."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tilesegcli.errors import MissingResolutionError, UsageError
from tilesegcli.readers import open_reader
from tilesegcli.resolution import (
    choose_level,
    effective_mpp,
    read_work_mask,
    read_work_region,
    work_size,
)
from tilesegcli.specs import LevelInfo, SlideInfo
from tilesegcli.testing import synthetic as syn
from tilesegcli.tiling import make_grid


def _info(mpp: float | None, downsamples: tuple[float, ...] = (1, 4, 16), unit: str = "um") -> SlideInfo:
    levels = tuple(LevelInfo(int(40000 / d), int(30000 / d), d) for d in downsamples)
    return SlideInfo(path="s.svs", backend="openslide", width=40000, height=30000,
                     levels=levels, mpp=mpp, mpp_unit=unit)


@pytest.mark.parametrize("mpp,target,expected", [
    (0.25, 0.25, (0, 1.0, 1.0)),
    (0.25, 0.5, (0, 2.0, 2.0)),        # between levels 0 and 1: read level 0, shrink 2x
    (0.25, 1.0, (1, 4.0, 1.0)),        # exactly level 1
    (0.25, 2.0, (1, 8.0, 2.0)),
    (0.25, 8.0, (2, 32.0, 2.0)),       # coarser than every level: the coarsest, shrink
    (0.5, 0.25, (0, 0.5, 0.5)),        # finer than level 0: upsample
    (0.499, 0.5, (0, 1.0, 1.0)),       # within 2%: no resampling at all
    (0.2525, 1.0, (1, 4.0, 1.0)),      # 0.99 x level-1 downsample snaps to level 1
])
def test_choose_level(mpp: float, target: float, expected: tuple[int, float, float]) -> None:
    level, ds, scale = choose_level(_info(mpp), target)
    assert level == expected[0]
    assert ds == pytest.approx(expected[1]) and scale == pytest.approx(expected[2])
    assert ds == pytest.approx(_info(mpp).levels[level].downsample * scale)


def test_level_just_finer_than_target_with_odd_downsamples() -> None:
    info = _info(0.25, (1, 4.000235, 16.0028))
    level, ds, scale = choose_level(info, 0.5 * 4.1)
    assert level == 1 and scale > 1 and ds == pytest.approx(8.2)


def test_missing_mpp_and_override() -> None:
    info = _info(None)
    with pytest.raises(MissingResolutionError, match="--mpp") as ei:
        choose_level(info, 0.5)
    assert "s.svs" in str(ei.value)
    from dataclasses import replace

    with pytest.raises(MissingResolutionError, match="it says 20x, typically ~0.5 µm/px"):
        choose_level(replace(info, properties={"openslide.objective-power": "20"}), 0.5)
    assert choose_level(info, 0.5, mpp_override=0.25) == (0, 2.0, 2.0)
    assert choose_level(_info(0.5), 0.5, mpp_override=0.25)[1] == 2.0  # override wins
    with pytest.raises(UsageError):
        effective_mpp(info, -1.0)
    with pytest.raises(UsageError):
        choose_level(_info(0.5), 0.0)


def test_unit_mismatch_is_clear() -> None:
    with pytest.raises(UsageError, match="model 'roads' works in m/px but this input is in µm/px"):
        choose_level(_info(0.25), 0.5, target_unit="m", model="roads")
    with pytest.raises(UsageError, match="reproject"):
        choose_level(_info(1e-5, unit="deg"), 0.5, target_unit="m")
    assert choose_level(_info(0.3, unit="m"), 0.6, target_unit="m")[1] == pytest.approx(2.0)


def test_work_size() -> None:
    assert work_size(_info(0.25), 2.0) == (20000, 15000)
    assert work_size(_info(0.25), 3.0) == (13334, 10000)


@pytest.fixture(scope="module")
def slide(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, syn.DiscScene]:
    scene = syn.disc_scene(1600, 1200, n=80, radius=(10, 20), seed=3)
    p = syn.write_slide_tiff(tmp_path_factory.mktemp("res") / "d.svs", scene.paint,
                             width=1600, height=1200, kind="svs", mpp=0.25, compression="zlib")
    return p, scene


def test_read_work_region_matches_direct_render(slide: tuple[Path, syn.DiscScene]) -> None:
    p, scene = slide
    with open_reader(p) as r:
        for target in (0.25, 0.5, 0.75, 1.5, 0.125):
            level, ds, scale = choose_level(r.info, target)
            grid = make_grid(*work_size(r.info, ds), 128, 16, level=level, downsample=ds,
                             level_scale=scale)
            for x, y in ((0, 0), (200, 100), (grid.width - 64, grid.height - 64)):
                got = read_work_region(r, grid, x, y, 128, 128)
                assert got.shape == (128, 128, 3) and got.dtype == np.uint8
                ref = scene.paint(x, y, 128, 128, ds)
                inside = np.zeros((128, 128), bool)
                inside[: max(0, grid.height - y), : max(0, grid.width - x)] = True
                err = np.abs(got.astype(int) - ref)[inside].mean()
                assert err < (0.5 if scale == 1 else 8), (target, x, y, err)
                assert (~inside).sum() == 0 or got[~inside].mean() > 250  # padded white
            # the tuple returned by choose_level works as params too
            np.testing.assert_array_equal(read_work_region(r, (level, ds, scale), 10, 10, 32, 32),
                                          read_work_region(r, grid, 10, 10, 32, 32))
            assert read_work_mask(r, grid, 0, 0, 8, 8) is None


def test_read_work_mask_geotiff(tmp_path: Path) -> None:
    img = np.full((200, 200, 3), 90, np.uint8)
    img[:, :50] = 0
    p = syn.write_geotiff(tmp_path / "g.tif", img, nodata=0, pixel_size=0.5, overviews=1)
    with open_reader(p) as r:
        level, ds, scale = choose_level(r.info, 1.5, target_unit="m")
        assert (level, ds, scale) == (1, 3.0, 1.5)
        m = read_work_mask(r, (level, ds, scale), 0, 0, 70, 70)
        assert m.shape == (70, 70) and not m[:, :16].any() and m[:66, 17:66].all()
        assert not m[:, 67:].any() and not m[67:].any()  # past the image edge
        rgb = read_work_region(r, (level, ds, scale), 0, 0, 70, 70)
        assert (rgb[:66, 20:66] == 90).all()  # no halo: padding never enters the filter
