"""The bundled default model (``aff-nuclei``) on the bundled CC0 slide: real weights, real
OpenSlide, real pipeline. A window of tissue must give nuclei of nuclear size and density."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")

from tilesegcli.zoo import DEFAULT_MODEL, card_names  # noqa: E402

SLIDE = Path(__file__).resolve().parents[2] / "examples" / "cmu-1-small-region.svs"
# a 200 x 200 µm window of the slide's tissue (level-0 px at 0.499 µm/px)
WINDOW = (900, 1100, 1300, 1500)


def _roi(tmp_path: Path, box: tuple[int, int, int, int]) -> Path:
    """A QuPath-style GeoJSON annotation of the level-0 rectangle ``box`` (x0, y0, x1, y1)."""
    x0, y0, x1, y1 = box
    roi = tmp_path / "roi.geojson"
    roi.write_text(json.dumps({"type": "FeatureCollection", "features": [{
        "type": "Feature", "properties": {"objectType": "annotation"},
        "geometry": {"type": "Polygon", "coordinates": [[[x0, y0], [x1, y0], [x1, y1], [x0, y1],
                                                         [x0, y0]]]}}]}))
    return roi


def test_default_model_finds_nuclei_on_bundled_slide(tmp_path: Path, one_thread: None) -> None:
    if DEFAULT_MODEL not in card_names() or not SLIDE.exists():
        pytest.skip("default model or bundled slide not present")
    from tilesegcli import predict

    x0, y0, x1, y1 = WINDOW
    roi = _roi(tmp_path, WINDOW)
    out = tmp_path / "nuclei.geojson"
    [r] = predict(SLIDE, model=DEFAULT_MODEL, output=out, roi=roi)
    assert r.status == "done", r.error
    feats = json.loads(out.read_text())["features"]
    areas = np.array([f["properties"]["measurements"]["Area µm^2"] for f in feats])
    window_mm2 = (x1 - x0) * (y1 - y0) * 0.499**2 / 1e6
    density = len(feats) / window_mm2
    # H&E tissue holds roughly 1,000-10,000 nuclei per mm²; a nucleus is ~10-150 µm²
    assert 1000 < density < 12000, (len(feats), density)
    assert 10 < float(np.median(areas)) < 120, float(np.median(areas))


# the epidermis: the slide's densest nuclei, so many of them sit on tile seams
DENSE_WINDOW = (1000, 1600, 1400, 2000)


def test_default_model_leaves_no_seam_artefacts_on_real_slide(tmp_path: Path, one_thread: None) -> None:
    """Real model, real slide, card defaults (4 views, 128 px tiles at 0.25 µm/px: 0.499 µm/px
    upsampled 2x): no detection below the card's min_area, no MultiPolygon speck, no two
    overlapping."""
    if DEFAULT_MODEL not in card_names() or not SLIDE.exists():
        pytest.skip("default model or bundled slide not present")
    import shapely

    from tilesegcli import predict
    from tilesegcli.eval.audit import audit_instances
    from tilesegcli.zoo import load_card

    roi = _roi(tmp_path, DENSE_WINDOW)
    out = tmp_path / "nuclei.geojson"
    [r] = predict(SLIDE, model=DEFAULT_MODEL, output=out, roi=roi)
    assert r.status == "done", r.error
    geoms = [shapely.geometry.shape(f["geometry"]) for f in json.loads(out.read_text())["features"]]
    card = load_card(DEFAULT_MODEL)
    ds = card.mpp / 0.499  # level-0 px per working px
    audit = audit_instances(geoms, card.min_area * ds * ds - 1e-6, overlap_tol=1e-6)
    assert audit["objects"] > 150, audit
    # a MultiPolygon may remain only when every part is nucleus-sized (no speck)
    assert audit["below_min_area"] == 0 and audit["multipolygon_specks"] == 0, audit
    assert audit["multipolygons"] <= 0.01 * audit["objects"], audit
    assert audit["overlapping_pairs"] == 0, audit


def test_model_threads_give_the_same_output(tmp_path: Path, one_thread: None,
                                            feature_set) -> None:
    """Two batches in the real model at once (two threads) write exactly what one thread does."""
    if DEFAULT_MODEL not in card_names() or not SLIDE.exists():
        pytest.skip("default model or bundled slide not present")
    from tilesegcli import predict

    roi = _roi(tmp_path, (1000, 1600, 1120, 1720))
    outs = []
    for k in (1, 2):
        out = tmp_path / f"k{k}.geojson"
        [r] = predict(SLIDE, model=DEFAULT_MODEL, output=out, roi=roi, model_threads=k,
                      batch_size=2, flips=1)
        assert r.status == "done" and r.tiles_computed >= 4, (r.error, r.tiles_computed)
        outs.append(feature_set(out))
    assert outs[0] and outs[0] == outs[1]


def test_view_agreement_option_end_to_end(tmp_path: Path, one_thread: None, run_cli,
                                          feature_set) -> None:
    """``--view-agreement`` reaches the card: with a tiny agreement every tile stops after its
    first two views, so 4 flips give exactly the output of ``--flips 2``."""
    if DEFAULT_MODEL not in card_names() or not SLIDE.exists():
        pytest.skip("default model or bundled slide not present")
    roi = _roi(tmp_path, (1000, 1600, 1100, 1700))
    outs = []
    for opts in (["--flips", "2"], ["--flips", "4", "--view-agreement", "0.01"]):
        out = tmp_path / f"{len(opts)}.geojson"
        code, _, err = run_cli("predict", SLIDE, "-o", out, "--roi", roi, "-q", *opts)
        assert code == 0, err
        outs.append(feature_set(out))
    assert outs[0] and outs[0] == outs[1]
