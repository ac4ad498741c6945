"""Bad inputs: one-line SlideOpenError/SlideReadError naming the file; `tileseg info` exit codes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tilesegcli.errors import SlideOpenError, SlideReadError, TilesegError, UsageError
from tilesegcli.readers import open_reader
from tilesegcli.testing import synthetic as syn


def _one_line(e: BaseException, path: Path) -> None:
    msg = str(e)
    assert "\n" not in msg and str(path) in msg


def test_nonexistent_directory_empty_text(tmp_path: Path) -> None:
    for p, word in [(tmp_path / "nope.svs", "no such file"), (tmp_path, "directory")]:
        with pytest.raises(SlideOpenError, match=word) as ei:
            open_reader(p)
        _one_line(ei.value, p)
    empty = tmp_path / "empty.svs"
    empty.write_bytes(b"")
    with pytest.raises(SlideOpenError, match="empty"):
        open_reader(empty)
    txt = tmp_path / "notes.svs"
    txt.write_text("this is not a slide\n" * 40)
    with pytest.raises(SlideOpenError, match="not a slide or image format") as ei:
        open_reader(txt)
    _one_line(ei.value, txt)
    for backend in ("openslide", "tifffile", "pillow"):
        with pytest.raises(SlideOpenError) as ei:
            open_reader(txt, backend=backend)
        _one_line(ei.value, txt)


def test_unknown_backend_is_usage_error(tmp_path: Path) -> None:
    p = syn.write_plain_image(tmp_path / "x.png", np.zeros((4, 4, 3), np.uint8))
    with pytest.raises(UsageError):
        open_reader(p, backend="gdal")


def test_truncated_synthetic_svs_fails_at_read(tmp_path: Path) -> None:
    img = syn.tissue_like(1200, 800, seed=5)
    full = syn.write_slide_tiff(tmp_path / "full.svs", img, kind="svs", mpp=0.5, tile=128)
    data = full.read_bytes()
    cut = tmp_path / "cut.svs"
    cut.write_bytes(data[: len(data) // 3])  # IFD 0 at the start survives, tiles do not
    with pytest.raises(TilesegError) as ei:
        with open_reader(cut) as r:
            r.read_region(0, 0, 0, 1200, 800)
    assert isinstance(ei.value, SlideOpenError | SlideReadError)
    _one_line(ei.value, cut)
    # and the fallback reader reports read failures as SlideReadError, not a library exception
    with open_reader(cut, backend="tifffile") as r:
        r.read_region(0, 0, 0, 64, 64)  # first tiles are intact
        with pytest.raises(SlideReadError) as ei:
            r.read_region(0, 0, 600, 1200, 200)
        _one_line(ei.value, cut)


def _tileseg(*args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, NO_COLOR="1")
    return subprocess.run([sys.executable, "-m", "tilesegcli", *args], capture_output=True,
                          text=True, timeout=120, env=env)


def test_info_cli_text_json_and_errors(tmp_path: Path) -> None:
    import json

    p = syn.write_slide_tiff(tmp_path / "s.svs", syn.tissue_like(600, 400), kind="svs", mpp=0.25)
    out = _tileseg("info", str(p))
    assert out.returncode == 0, out.stderr
    assert "600 x 400" in out.stdout and "0.25 µm/px" in out.stdout and "aperio" in out.stdout
    out = _tileseg("info", str(p), "--json", "--backend", "tifffile")
    d = json.loads(out.stdout)
    assert d["backend"] == "tifffile" and d["mpp"] == 0.25 and d["width"] == 600
    assert d["levels"][1]["downsample"] == pytest.approx(2.0)
    g = syn.write_geotiff(tmp_path / "g.tif", np.ones((8, 8, 3), np.uint8), epsg=32618)
    d = json.loads(_tileseg("info", "--json", str(g)).stdout)
    assert d["crs"] == "EPSG:32618" and d["mpp_unit"] == "m"
    bad = _tileseg("info", str(tmp_path / "missing.svs"))
    assert bad.returncode == 1 and bad.stdout == ""
    assert bad.stderr.strip().count("\n") == 0 and "missing.svs" in bad.stderr
    assert "Traceback" not in bad.stderr
    assert _tileseg("info", str(p), "--backend", "gdal").returncode == 2


@pytest.mark.parametrize("case", ["tiff_magic_noise", "bigtiff_magic_noise", "png_half",
                                  "jpeg_half", "geotiff_half", "dicom_stub"])
def test_damaged_files_give_one_line_errors(tmp_path: Path, case: str) -> None:
    rng = np.random.default_rng(0)
    noise = rng.integers(0, 256, 4000, dtype=np.uint8).tobytes()
    img = syn.tissue_like(300, 200, seed=1)
    if case == "tiff_magic_noise":
        data = b"II*\x00" + noise
    elif case == "bigtiff_magic_noise":
        data = b"II+\x00" + noise
    elif case == "dicom_stub":
        data = b"\x00" * 128 + b"DICM" + b"\x00" * 64
    else:
        ext = {"png_half": "png", "jpeg_half": "jpg", "geotiff_half": "tif"}[case]
        src = tmp_path / f"src.{ext}"
        if ext == "tif":
            syn.write_geotiff(src, img, tile=64)
        else:
            syn.write_plain_image(src, img)
        full = src.read_bytes()
        data = full[: len(full) // 2]
    p = tmp_path / f"{case}.img"
    p.write_bytes(data)
    with pytest.raises((SlideOpenError, SlideReadError)) as ei:
        with open_reader(p) as r:
            r.read_region(0, 0, 0, r.info.width, r.info.height)
    _one_line(ei.value, p)
