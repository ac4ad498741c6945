"""`tileseg info` formatting (pure functions, no files)."""

from __future__ import annotations

from tilesegcli.cli.info import bounds, format_text, info_dict
from tilesegcli.specs import LevelInfo, SlideInfo


def _info(**kw: object) -> SlideInfo:
    base = dict(path="x.mrxs", backend="openslide", width=1000, height=800,
                levels=(LevelInfo(1000, 800, 1.0), LevelInfo(250, 200, 4.0)), mpp=0.243,
                vendor="mirax")
    base.update(kw)
    return SlideInfo(**base)  # type: ignore[arg-type]


def test_bounds_and_text() -> None:
    props = {"openslide.bounds-x": "10", "openslide.bounds-y": "20",
             "openslide.bounds-width": "900", "openslide.bounds-height": "700"}
    info = _info(properties=props)
    assert bounds(info) == [10, 20, 900, 700]
    text = format_text(info)
    assert "bounds:    x=10 y=20 w=900 h=700" in text and "0.243 µm/px" in text
    assert "[1] 250 x 200  downsample 4" in text and "crs" not in text
    d = info_dict(info)
    assert d["bounds"] == [10, 20, 900, 700] and "properties" not in d
    assert info_dict(info, properties=True)["properties"] == props


def test_text_for_geotiff_and_missing_mpp() -> None:
    g = _info(path="a.tif", backend="tifffile", mpp=None, mpp_unit="m", crs=None,
              geotransform=(100.0, 17.3, 5.0, 200.0, 10.0, -8.66))
    text = format_text(g)
    assert "mpp:       unknown (pass --mpp to predict)" in text
    assert "crs:       none (not defined in the file)" in text and "transform: 100, 17.3" in text
    assert bounds(g) is None
