"""Semantic stitching: tiled class maps give exactly the polygons of the untiled map (holes kept,
no seam lines), with bounded pending memory."""

from __future__ import annotations

import numpy as np
import pytest
import shapely
from scipy import ndimage

from tilesegcli.segmenter import ClassInfo
from tilesegcli.stitching import StitchStats, stitch_semantic
from tilesegcli.testing.oracle import OracleSegmenter
from tilesegcli.tiling import core_bounds, iter_tiles, make_grid
from tilesegcli.vectorize import class_map_to_geometries

CLASSES = [ClassInfo("background", (0, 0, 0)), ClassInfo("Tissue", (0, 160, 0)),
           ClassInfo("Tumor", (200, 0, 0)), ClassInfo("Necrosis", (60, 60, 60))]


def make_class_map(h: int = 700, w: int = 950, seed: int = 1) -> np.ndarray:
    """Smooth random fields: large regions spanning many tiles, nested classes -> holes."""
    rng = np.random.default_rng(seed)
    f = ndimage.gaussian_filter(rng.standard_normal((h, w)), 14)
    g = ndimage.gaussian_filter(rng.standard_normal((h, w)), 5)
    cm = np.zeros((h, w), np.uint8)
    cm[f > -0.01] = 1
    cm[(f > 0.035) & (g > 0)] = 2
    cm[(f > -0.01) & (g < -0.09)] = 3
    cm[100:600, 200:210] = 2  # a long thin vertical strip crossing many row bands
    cm[300:305, 50:900] = 3  # and a horizontal one crossing many columns
    return cm


def run(cm: np.ndarray, tile: int, overlap: int, stats: StitchStats | None = None, **kw):
    h, w = cm.shape
    grid = make_grid(w, h, tile, overlap)
    oracle = OracleSegmenter(None, None, CLASSES, tile, overlap, semantic=cm)
    tiles = ((s, oracle.predict_tiles([s])[0]) for s in iter_tiles(grid))
    return list(stitch_semantic(grid, tiles, classes=CLASSES, stats=stats, **kw)), grid


def canon(geoms) -> list[bytes]:
    return sorted(shapely.normalize(shapely.simplify(g, 0.0)).wkb for g in geoms)


@pytest.fixture(scope="module")
def cmap() -> tuple[np.ndarray, dict]:
    cm = make_class_map()
    return cm, class_map_to_geometries(cm)


@pytest.mark.parametrize("tile,overlap,offset", [(128, 32, (0, 0)), (100, 20, (17, 3)), (64, 0, (5, 9)),
                                                 (90, 45, (0, 33))])
def test_tiled_regions_equal_untiled(cmap, tile, overlap, offset) -> None:
    cm, _ = cmap
    cm = np.pad(cm, ((offset[0], 0), (offset[1], 0)))
    ref = class_map_to_geometries(cm)
    st = StitchStats()
    out, grid = run(cm, tile, overlap, stats=st)
    assert all(o.kind == "annotation" and o.geometry.is_valid for o in out)
    assert sum(len(v) for v in ref.values()) == len(out) == st.regions
    assert st.merged > 0  # regions spanning several row bands were joined
    holes = 0
    for c, geoms in ref.items():
        got = [o.geometry for o in out if o.class_id == c]
        assert canon(got) == canon(geoms)  # identical polygons
        a_got, a_ref = sum(g.area for g in got), sum(g.area for g in geoms)
        assert a_got == pytest.approx(a_ref, rel=1e-3)
        assert a_ref == (cm == c).sum()
        holes += sum(len(g.interiors) for g in got if g.geom_type == "Polygon")
    assert holes > 5
    # zero seam artefacts: no polygon has a vertex on a core seam line unless the class map
    # really changes there (the polygons equal the untiled ones; check the seam rows directly)
    seams_y = {core_bounds(r, grid.rows, grid.stride_px, overlap, grid.height)[0] for r in range(1, grid.rows)}
    for o in out:
        ys = shapely.get_coordinates(o.geometry)[:, 1]
        xs = shapely.get_coordinates(o.geometry)[:, 0]
        for y in seams_y:
            on = ys == y
            for x in xs[on].astype(int):
                x = min(x, cm.shape[1] - 1)
                # a vertex on the seam must be a real corner of the class map there
                above = cm[y - 1, max(x - 1, 0) : x + 1]
                below = cm[y, max(x - 1, 0) : x + 1]
                assert not (np.all(above == o.class_id) and np.all(below == o.class_id)
                            and above.size == 2 and below.size == 2)


def test_single_tile_and_scores(cmap) -> None:
    cm, ref = cmap
    out, _ = run(cm, max(cm.shape) + 4, 0)
    assert canon(o.geometry for o in out) == canon(g for v in ref.values() for g in v)
    assert all(o.score == pytest.approx(1.0) and not o.merged for o in out)


def test_min_area_and_simplify(cmap) -> None:
    cm, ref = cmap
    out, _ = run(cm, 128, 32, min_area_px=200)
    assert len(out) == sum(1 for v in ref.values() for g in v if g.area >= 200)
    out2, _ = run(cm, 128, 32, simplify_px=1.5)
    assert len(out2) == sum(len(v) for v in ref.values())
    n_ref = sum(len(shapely.get_coordinates(g)) for v in ref.values() for g in v)
    assert sum(len(shapely.get_coordinates(o.geometry)) for o in out2) < 0.7 * n_ref
    assert all(o.geometry.is_valid for o in out2)


def test_pending_regions_bounded_by_band(cmap) -> None:
    cm, _ = cmap
    peaks = []
    for reps in (1, 3):
        st = StitchStats()
        run(np.concatenate([cm] * reps, axis=0), 128, 32, stats=st)
        peaks.append(st.pending_peak)
    assert peaks[1] <= peaks[0] + 5


def test_missing_tiles_are_background() -> None:
    cm = np.ones((300, 300), np.uint8)
    grid = make_grid(300, 300, 128, 32)
    oracle = OracleSegmenter(None, None, CLASSES[:2], 128, 32, semantic=cm)
    specs = [s for s in iter_tiles(grid) if s.index != 4]  # the centre tile never ran
    out = list(stitch_semantic(grid, ((s, oracle.predict_tiles([s])[0]) for s in specs), classes=CLASSES[:2]))
    centre = [t for t in iter_tiles(grid) if t.index == 4][0].core
    assert len(out) == 1 and len(out[0].geometry.interiors) == 1
    assert out[0].geometry.area == 300 * 300 - (centre[2] - centre[0]) * (centre[3] - centre[1])


@pytest.mark.parametrize("tile,overlap", [(128, 32), (100, 60), (64, 8)])
def test_linear_blend_exact_model_equals_untiled(cmap, tile, overlap) -> None:
    cm, ref = cmap
    out, _ = run(cm, tile, overlap, blend="linear")
    assert canon(o.geometry for o in out) == canon(g for v in ref.values() for g in v)
    assert all(o.score == pytest.approx(1.0) for o in out)


def test_linear_blend_matches_full_canvas_reference() -> None:
    """Noisy per-tile probabilities (tiles disagree in the overlaps): the streamed blend equals a
    whole-image weighted average computed in one canvas; a skipped tile row is background."""
    rng = np.random.default_rng(4)
    cm = make_class_map(300, 420, seed=2)
    grid = make_grid(420, 300, 96, 32)
    t, o = 96, 32
    d = np.minimum(np.arange(t), np.arange(t)[::-1]).astype(np.float32)
    ramp = np.minimum(d + 1, o + 1) / (o + 1)
    wt = np.minimum(ramp[:, None], ramp[None, :])
    acc = np.zeros((len(CLASSES), 300, 420), np.float64)
    tiles = []
    for s in iter_tiles(grid):
        if s.row == 1:
            continue  # whole tile row skipped (no tissue)
        win = np.zeros((t, t), np.int64)
        h, w = min(t, 300 - s.y), min(t, 420 - s.x)
        win[:h, :w] = cm[s.y : s.y + h, s.x : s.x + w]
        p = np.eye(len(CLASSES), dtype=np.float32)[win].transpose(2, 0, 1) + rng.uniform(0, 0.9, (len(CLASSES), t, t)).astype(np.float32)
        p /= p.sum(0)
        acc[:, s.y : s.y + h, s.x : s.x + w] += p[:, :h, :w] * wt[:h, :w]
        from tilesegcli.segmenter import TileResult

        tiles.append((s, TileResult(semantic=p)))
    ref = class_map_to_geometries(acc.argmax(0).astype(np.uint8))
    out = list(stitch_semantic(grid, iter(tiles), classes=CLASSES, blend="linear"))
    assert canon(o.geometry for o in out) == canon(g for v in ref.values() for g in v)
    with pytest.raises(ValueError):
        list(stitch_semantic(grid, iter(tiles), classes=CLASSES, blend="gaussian"))


def _sparse_noisy_tiles(cm: np.ndarray, tile: int, overlap: int, seed: int):
    """Noisy per-tile probabilities; ~30 % of the tiles and one whole tile column never ran."""
    from tilesegcli.segmenter import TileResult

    rng = np.random.default_rng(seed)
    h, w = cm.shape
    grid = make_grid(w, h, tile, overlap)
    out = []
    for s in iter_tiles(grid):
        if s.col == 2 or rng.random() < 0.3:
            continue
        win = np.zeros((tile, tile), np.int64)
        th, tw = min(tile, h - s.y), min(tile, w - s.x)
        win[:th, :tw] = cm[s.y : s.y + th, s.x : s.x + tw]
        p = np.eye(len(CLASSES), dtype=np.float32)[win].transpose(2, 0, 1) * 1.5
        p += rng.uniform(0, 1, p.shape).astype(np.float32)
        p /= p.sum(0)
        out.append((s, TileResult(semantic=p)))
    return grid, out


def _check_regions_and_scores(out, ref_cls: np.ndarray, ref_prob: np.ndarray) -> None:
    from rasterio.features import rasterize

    ref = class_map_to_geometries(ref_cls)
    assert canon(o.geometry for o in out) == canon(g for v in ref.values() for g in v)
    for o in out:  # score = mean winning probability (uint8) over the region's pixels
        m = rasterize([(o.geometry, 1)], out_shape=ref_cls.shape, fill=0, dtype="uint8").astype(bool)
        assert np.all(ref_cls[m] == o.class_id)
        assert o.score == pytest.approx(ref_prob[m].mean() / 255.0, rel=1e-9)


def test_sparse_tiles_noisy_crop_equals_assembled_map() -> None:
    """Only tiles that ran hold memory (column segments): missing tiles and tile columns are
    background; polygons and scores equal those of the whole assembled core-crop map."""
    cm = make_class_map(420, 700, seed=3)
    grid, tiles = _sparse_noisy_tiles(cm, 96, 24, seed=5)
    ref_cls = np.zeros(cm.shape, np.uint8)
    ref_prob = np.zeros(cm.shape, np.uint8)
    for s, r in tiles:
        cx0, cy0, cx1, cy1 = s.core
        crop = r.semantic[:, cy0 - s.y : cy1 - s.y, cx0 - s.x : cx1 - s.x]
        ref_cls[cy0:cy1, cx0:cx1] = crop.argmax(0)
        ref_prob[cy0:cy1, cx0:cx1] = np.clip(np.rint(crop.max(0) * 255.0), 0, 255)
    st = StitchStats()
    out = list(stitch_semantic(grid, iter(tiles), classes=CLASSES, stats=st))
    assert st.merged > 0 and len(out) > 50
    _check_regions_and_scores(out, ref_cls, ref_prob)


def test_sparse_tiles_linear_blend_across_column_blocks(monkeypatch) -> None:
    """Blend canvases live in column blocks (here 50 px, not aligned with the tiles): the result
    equals one whole-image weighted average with missing tiles contributing nothing."""
    from tilesegcli.stitching import semantic

    monkeypatch.setattr(semantic, "_BLEND_BLOCK_PX", 50)
    cm = make_class_map(300, 420, seed=2)
    t, o = 96, 32
    grid, tiles = _sparse_noisy_tiles(cm, t, o, seed=7)
    d = np.minimum(np.arange(t), np.arange(t)[::-1]).astype(np.float32)
    ramp = np.minimum(d + 1, o + 1) / (o + 1)
    wt = np.minimum(ramp[:, None], ramp[None, :])
    acc = np.zeros((len(CLASSES), *cm.shape), np.float32)
    wsum = np.zeros(cm.shape, np.float32)
    for s, r in tiles:
        h, w = min(t, cm.shape[0] - s.y), min(t, cm.shape[1] - s.x)
        acc[:, s.y : s.y + h, s.x : s.x + w] += r.semantic[:, :h, :w] * wt[:h, :w]
        wsum[s.y : s.y + h, s.x : s.x + w] += wt[:h, :w]
    ref_cls = acc.argmax(0).astype(np.uint8)
    with np.errstate(invalid="ignore", divide="ignore"):
        p = np.where(wsum > 0, acc.max(0) / wsum, 0.0)
    ref_prob = np.clip(np.rint(p * 255.0), 0, 255).astype(np.uint8)
    out = list(stitch_semantic(grid, iter(tiles), classes=CLASSES, blend="linear"))
    assert len(out) > 20
    _check_regions_and_scores(out, ref_cls, ref_prob)
