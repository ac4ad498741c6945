"""Exactly-once instance stitching through the oracle segmenter: one-to-one with ground truth,
tiled == untiled, over several tile sizes, overlaps and grid offsets."""

from __future__ import annotations

import numpy as np
import pytest
import shapely
from scipy import ndimage

from tilesegcli.segmenter import ClassInfo
from tilesegcli.stitching import StitchStats, stitch_instances
from tilesegcli.testing.oracle import OracleSegmenter
from tilesegcli.tiling import core_bounds, iter_tiles, make_grid
from tilesegcli.vectorize import labels_to_geometries

CLASSES = [ClassInfo("background", (0, 0, 0)), ClassInfo("Tumor", (200, 0, 0)), ClassInfo("Immune", (0, 0, 200))]
H, W = 820, 1100


def _place(gt: np.ndarray, mask: np.ndarray, y0: int, x0: int, label: int) -> bool:
    """Paint ``mask`` at (y0, x0) if it fits inside the image without touching other objects'
    pixels (it may be 4-adjacent to them)."""
    h, w = mask.shape
    ys, xs = slice(max(0, y0), min(gt.shape[0], y0 + h)), slice(max(0, x0), min(gt.shape[1], x0 + w))
    if ys.stop <= ys.start or xs.stop <= xs.start:
        return False
    m = mask[ys.start - y0 : ys.stop - y0, xs.start - x0 : xs.stop - x0]
    if not m.any() or (gt[ys, xs][m] != 0).any():
        return False
    lab, n = ndimage.label(m)  # keep objects 4-connected after clipping to the image
    if n > 1:
        m = lab == (np.argmax(np.bincount(lab.ravel())[1:]) + 1)
    gt[ys, xs][m] = label
    return True


def _ellipse(rng: np.random.Generator, rmax: float) -> np.ndarray:
    a, b = rng.uniform(1.2, rmax, 2)
    t = rng.uniform(0, np.pi)
    r = int(np.ceil(max(a, b))) + 1
    yy, xx = np.mgrid[-r : r + 1, -r : r + 1].astype(float)
    u, v = xx * np.cos(t) + yy * np.sin(t), -xx * np.sin(t) + yy * np.cos(t)
    return (u / a) ** 2 + (v / b) ** 2 <= 1.0


def _blob(rng: np.random.Generator, size: int) -> np.ndarray:
    f = ndimage.gaussian_filter(rng.standard_normal((size, size)), size / 8)
    m = f > np.quantile(f, 0.6)
    lab, n = ndimage.label(m)
    if n == 0:
        return m
    return lab == (np.argmax(np.bincount(lab.ravel())[1:]) + 1)  # one 4-connected piece, maybe with holes


def make_ground_truth(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """~2300 objects: ellipses and blobs from 4 px to larger than any overlap used below, many
    centred on tile seams and corners of the tested grids, some pairs touching each other."""
    rng = np.random.default_rng(seed)
    gt = np.zeros((H, W), np.int32)
    n = 0
    # big objects first (larger than every overlap), blobs with holes among them
    for _ in range(40):
        m = _blob(rng, int(rng.integers(60, 160))) if rng.random() < 0.6 else _ellipse(rng, 70)
        n += _place(gt, m, int(rng.integers(-20, H)), int(rng.integers(-20, W)), n + 1)
    # small/medium objects on seams and corners of the tested grids
    seams_x, seams_y = set(), set()
    for tile, ov in ((96, 24), (128, 32), (200, 48)):
        g = make_grid(W, H, tile, ov)
        for c in range(g.cols):
            seams_x.update(core_bounds(c, g.cols, g.stride_px, ov, W))
            seams_x.update((c * g.stride_px, c * g.stride_px + tile))  # window borders too
        for r in range(g.rows):
            seams_y.update(core_bounds(r, g.rows, g.stride_px, ov, H))
            seams_y.update((r * g.stride_px, r * g.stride_px + tile))
    sx, sy = np.array(sorted(seams_x)), np.array(sorted(seams_y))
    for _ in range(8000):
        m = _ellipse(rng, 11) if rng.random() < 0.7 else _blob(rng, int(rng.integers(6, 26)))
        kind = rng.random()
        cy, cx = rng.integers(0, H), rng.integers(0, W)
        if kind < 0.35:
            cx = int(rng.choice(sx)) + int(rng.integers(-3, 4))
        elif kind < 0.6:
            cy = int(rng.choice(sy)) + int(rng.integers(-3, 4))
        elif kind < 0.75:
            cx, cy = int(rng.choice(sx)), int(rng.choice(sy))  # corners
        n += _place(gt, m, cy - m.shape[0] // 2, cx - m.shape[1] // 2, n + 1)
    # pairs of touching objects: an ellipse split in two labels
    for _ in range(60):
        m = _ellipse(rng, 20)
        y0, x0 = int(rng.integers(0, H)), int(rng.integers(0, W))
        half = np.zeros_like(m)
        half[:, : m.shape[1] // 2] = True
        left, right = m & half, m & ~half
        if ndimage.label(left)[1] == 1 and ndimage.label(right)[1] == 1:
            if _place(gt, left, y0, x0, n + 1):
                n += 1
                n += _place(gt, right, y0, x0, n + 1)
    # relabel densely (clipping may have removed some), keep only 4-connected labels
    ids = np.unique(gt)
    ids = ids[ids > 0]
    remap = np.zeros(int(gt.max()) + 1, np.int32)
    remap[ids] = np.arange(1, len(ids) + 1)
    gt = remap[gt]
    k = len(ids)
    classes = np.concatenate([[0], rng.integers(1, 3, k)])
    scores = np.concatenate([[0.0], rng.uniform(0.3, 1.0, k)]).astype(np.float32)
    return gt, classes, scores


@pytest.fixture(scope="module")
def truth() -> tuple[np.ndarray, np.ndarray, np.ndarray, dict]:
    gt, classes, scores = make_ground_truth()
    return gt, classes, scores, labels_to_geometries(gt)


def run(gt: np.ndarray, classes, scores, tile: int, overlap: int, stats: StitchStats | None = None,
        skip_empty: bool = False, min_area_px: float = 0):
    h, w = gt.shape
    grid = make_grid(w, h, tile, overlap)
    oracle = OracleSegmenter(gt, classes, CLASSES, tile, overlap, gt_scores=scores)

    def tiles():
        for spec in iter_tiles(grid):
            res = oracle.predict_tiles([spec])[0]
            if skip_empty and res.num_instances == 0:
                continue  # what a tissue mask does: the tile is never run
            yield spec, res

    return list(stitch_instances(grid, tiles(), stats=stats, min_area_px=min_area_px))


def match_one_to_one(objs, ref: dict, gt_classes, gt_scores) -> float:
    """Assert every output object matches a distinct GT object and every GT object is found;
    returns the smallest IoU."""
    keys = np.array(list(ref.keys()))
    tree = shapely.STRtree(list(ref.values()))
    seen: dict[int, int] = {}
    worst = 1.0
    for o in objs:
        assert o.geometry.is_valid and not o.geometry.is_empty
        cand = tree.query(o.geometry, predicate="intersects")
        ious = [o.geometry.intersection(ref[keys[c]]).area / o.geometry.union(ref[keys[c]]).area for c in cand]
        assert ious, "output object matches no ground-truth object"
        best = int(np.argmax(ious))
        k = int(keys[cand[best]])
        worst = min(worst, ious[best])
        assert k not in seen, f"ground-truth object {k} emitted twice"
        seen[k] = 1
        assert o.class_id == gt_classes[k]
        assert o.score == pytest.approx(float(gt_scores[k]), abs=1e-6)
    missing = set(ref) - set(seen)
    assert not missing, f"{len(missing)} ground-truth objects missing"
    assert worst >= 0.95
    return worst


@pytest.mark.parametrize(
    "tile,overlap,offset",
    [(128, 32, (0, 0)), (96, 24, (7, 13)), (200, 48, (31, 5)), (128, 64, (3, 50)), (64, 16, (0, 0))],
)
def test_tiled_matches_ground_truth_one_to_one(truth, tile, overlap, offset) -> None:
    gt, classes, scores, _ = truth
    dy, dx = offset  # shift the slide under the grid: seams fall elsewhere
    gt = np.pad(gt, ((dy, 0), (dx, 0)))
    ref = labels_to_geometries(gt)
    assert len(ref) > 2000
    st = StitchStats()
    objs = run(gt, classes, scores, tile, overlap, stats=st)
    worst = match_one_to_one(objs, ref, classes, scores)
    assert worst == 1.0  # the oracle is exact, so is the stitching
    assert st.objects == len(ref) == st.owned + st.merged
    assert st.merged > 0  # objects larger than the overlap were cut everywhere and merged
    assert st.pending_peak < len(ref) / 3  # only a band of seam views is held


def test_tiled_equals_untiled(truth) -> None:
    gt, classes, scores, ref = truth
    whole = run(gt, classes, scores, tile=max(gt.shape) + 8, overlap=0)
    assert all(not o.merged for o in whole)
    tiled = run(gt, classes, scores, tile=112, overlap=28)

    def key(objs):
        return sorted((shapely.normalize(o.geometry).wkb, o.class_id, round(o.score, 6)) for o in objs)

    assert len(whole) == len(ref)
    assert key(whole) == key(tiled)


def test_skipped_empty_tiles_change_nothing(truth) -> None:
    gt, classes, scores, ref = truth
    sub = gt.copy()
    sub[:, 500:] = 0  # right half empty: those tiles are skipped like background
    ref = labels_to_geometries(sub)
    objs = run(sub, classes, scores, 128, 32, skip_empty=True)
    match_one_to_one(objs, ref, classes, scores)


def test_min_area_and_row_major_order(truth) -> None:
    gt, classes, scores, ref = truth
    st = StitchStats()
    objs = run(gt, classes, scores, 128, 32, stats=st, min_area_px=50)
    assert all(o.geometry.area >= 50 for o in objs)
    assert len(objs) == sum(1 for g in ref.values() if g.area >= 50)
    assert st.small_dropped == len(ref) - len(objs)
    grid = make_grid(300, 300, 128, 32)
    oracle = OracleSegmenter(gt[:300, :300], classes, CLASSES, 128, 32)
    specs = iter_tiles(grid)[::-1]
    with pytest.raises(ValueError, match="row-major"):
        list(stitch_instances(grid, ((s, oracle.predict_tiles([s])[0]) for s in specs)))


def test_pending_memory_does_not_grow_with_rows(truth) -> None:
    gt, classes, scores, _ = truth
    gt = gt[:, :420]  # a narrow strip, stacked 1x and 3x: pending views must not scale with rows
    peaks = []
    for reps in (1, 3):
        tall = np.concatenate([gt] * reps, axis=0)
        # distinct ids per copy
        tall = np.where(tall > 0, tall + np.repeat(np.arange(reps), gt.shape[0])[:, None] * int(gt.max()), 0)
        cls = np.tile(classes, reps)
        cls = np.concatenate([[0]] + [classes[1:]] * reps)
        sc = np.concatenate([[0.0]] + [scores[1:]] * reps)
        st = StitchStats()
        objs = run(tall, cls, sc, 128, 32, stats=st)
        assert len(objs) == reps * len(labels_to_geometries(gt))
        peaks.append(st.pending_peak)
    assert peaks[1] <= 1.2 * peaks[0] + 10


def test_object_cut_by_every_tile_is_merged_exactly() -> None:
    gt = np.zeros((300, 300), np.int32)
    yy, xx = np.mgrid[:300, :300]
    gt[(yy - 150) ** 2 / 120**2 + (xx - 150) ** 2 / 90**2 <= 1] = 1  # spans 3x3 tiles
    gt[140:160, 140:160] = 0  # with a hole
    objs = run(gt, [0, 2], [0, 0.7], 96, 16)
    assert len(objs) == 1 and objs[0].merged and objs[0].class_id == 2
    assert objs[0].geometry.area == (gt > 0).sum()
    assert len(objs[0].geometry.interiors) == 1
    assert objs[0].geometry.symmetric_difference(labels_to_geometries(gt)[1]).area == 0


def test_zero_overlap_grid() -> None:
    """Overlap 0: cut views are joined along the seam (objects here do not touch each other;
    with no overlap, two objects touching exactly on a seam cannot be told apart)."""
    rng = np.random.default_rng(5)
    gt = np.zeros((400, 500), np.int32)
    n = 0
    for _ in range(600):
        m = _ellipse(rng, 25)
        y0, x0 = int(rng.integers(-10, 400)), int(rng.integers(-10, 500))
        grown = ndimage.binary_dilation(np.pad(m, 1))
        probe = np.zeros_like(gt)
        if _place(probe, grown, y0 - 1, x0 - 1, 1) and not (gt[probe > 0] != 0).any():
            n += _place(gt, m, y0, x0, n + 1)
    classes = np.ones(n + 1, np.int64)
    scores = np.ones(n + 1, np.float32)
    ref = labels_to_geometries(gt)
    st = StitchStats()
    objs = run(gt, classes, scores, 100, 0, stats=st)
    assert match_one_to_one(objs, ref, classes, scores) == 1.0
    assert st.merged > 0


class NoisyOracle(OracleSegmenter):
    """A model-like oracle: each tile sees every object grown or shrunk by one pixel at random
    (tiles disagree near seams), and drops objects it sees as fewer than 3 pixels."""

    def __init__(self, *args, seed: int = 0, **kw) -> None:
        super().__init__(*args, **kw)
        self.rng = np.random.default_rng(seed)

    def _one(self, spec):
        res = super()._one(spec)
        lab = res.labels
        out = np.zeros_like(lab)
        for k in range(1, res.num_instances + 1):
            m = lab == k
            op = self.rng.integers(0, 3)
            if op == 1:
                m = ndimage.binary_erosion(m) if m.sum() > 12 else m
            elif op == 2:
                m = ndimage.binary_dilation(m) & ((lab == 0) | (lab == k)) & (out == 0)
            if m.sum() >= 3:
                out[m] = k
        res.labels = out
        return res


@pytest.mark.parametrize("tile,overlap", [(128, 32), (96, 24)])
def test_inconsistent_tiles_still_exactly_once(tile: int, overlap: int) -> None:
    rng = np.random.default_rng(11)
    gt = np.zeros((500, 600), np.int32)
    n = 0
    for _ in range(1500):
        m = _ellipse(rng, 9 if rng.random() < 0.9 else 40)
        if m.sum() < 20:
            continue
        grown = ndimage.binary_dilation(np.pad(m, 2), iterations=2)
        y0, x0 = int(rng.integers(0, 490)), int(rng.integers(0, 590))
        probe = np.zeros_like(gt)
        if _place(probe, grown, y0 - 2, x0 - 2, 1) and not (gt[probe > 0] != 0).any():
            n += _place(gt, m, y0, x0, n + 1)
    ref = labels_to_geometries(gt)
    grid = make_grid(600, 500, tile, overlap)
    noisy = NoisyOracle(gt, None, CLASSES, tile, overlap, seed=tile)
    objs = list(stitch_instances(grid, ((s, noisy.predict_tiles([s])[0]) for s in iter_tiles(grid))))
    keys = np.array(list(ref))
    tree = shapely.STRtree(list(ref.values()))
    hits: dict[int, int] = {}
    for o in objs:
        cand = tree.query(o.geometry, predicate="intersects")
        ious = [o.geometry.intersection(ref[keys[c]]).area / o.geometry.union(ref[keys[c]]).area for c in cand]
        assert ious and max(ious) >= 0.1  # 1-px grow/shrink of small objects moves IoU a lot
        k = int(keys[cand[int(np.argmax(ious))]])
        hits[k] = hits.get(k, 0) + 1
    assert len(ref) > 300
    assert not [k for k, v in hits.items() if v > 1], "duplicates"
    assert set(hits) == set(ref), f"{len(set(ref) - set(hits))} missing"
