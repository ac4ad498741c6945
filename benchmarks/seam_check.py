"""Seam quality of a card on a real image, through the shipped path (``tilesegcli.predict``).

Reports, for the GeoJSON the pipeline writes: objects, objects below the card's ``min_area``,
MultiPolygons, and pairs of objects overlapping by more than 1 px² (level 0). With ``--shift S``
it also runs the same image cropped by S px at the top-left, which moves every tile seam by S
px, and matches the two outputs object by object inside the common area (IoU > 0.5, one-to-one
by ``scipy.optimize.linear_sum_assignment``): the matched fraction and mean IoU say how much the
result depends on where the seams fall (an untiled run, one tile for the whole image, is not
meaningful for a card whose query count fits its tile size; ``--untiled`` measures it anyway).

    python benchmarks/seam_check.py ../shared/data/nuclei/monuseg2018/train/images/X.tif \
        --mpp 0.2527 --shift 48
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path
from typing import Any

import numpy as np


def load_polygons(path: Path) -> list[Any]:
    import shapely

    data = json.loads(path.read_text())
    feats = data["features"] if isinstance(data, dict) else data
    return [shapely.geometry.shape(f["geometry"]) for f in feats]


def inside(geoms: list[Any], box: tuple[float, float, float, float]) -> list[Any]:
    """The objects whose centroid lies in ``box`` (x0, y0, x1, y1)."""
    import shapely

    arr = np.array(geoms, dtype=object)
    c = shapely.centroid(arr)
    x, y = shapely.get_x(c), shapely.get_y(c)
    return list(arr[(x >= box[0]) & (x < box[2]) & (y >= box[1]) & (y < box[3])])


def run(image: Path, mpp: float, seg: Any, out: Path, **options: Any) -> list[Any]:
    from tilesegcli import predict

    (res,) = predict([image], segmenter=seg, output=out, mpp=mpp, overwrite=True, quiet=True,
                     raise_errors=True, **options)
    return load_polygons(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("image", type=Path)
    ap.add_argument("--mpp", type=float, required=True, help="the image's µm/px")
    ap.add_argument("--model", default="aff-nuclei")
    ap.add_argument("--shift", type=int, default=0, help="also run cropped by this many px")
    ap.add_argument("--untiled", action="store_true",
                    help="also run the whole image as one tile (overlap 0) and match against it")
    ap.add_argument("--json", type=Path)
    a = ap.parse_args()
    from tilesegcli.eval.audit import audit_instances, match_instances
    from tilesegcli.train.data import read_rgb
    from tilesegcli.zoo import load_segmenter

    seg = load_segmenter(a.model, device="cpu")
    ds = seg.mpp / a.mpp  # level-0 px per working px
    min_area_l0 = seg.card.min_area * ds * ds
    report: dict[str, Any] = {"image": str(a.image), "model": a.model}
    with tempfile.TemporaryDirectory() as d:
        base = run(a.image, a.mpp, seg, Path(d) / "a.geojson")
        report["quality"] = audit_instances(base, min_area_l0)
        print("quality:", report["quality"], flush=True)
        if a.shift:
            from PIL import Image
            from shapely import affinity

            img = read_rgb(a.image)
            s = a.shift
            crop = Path(d) / "shifted.png"
            Image.fromarray(img[s:, s:]).save(crop)
            moved = [affinity.translate(g, s, s)
                     for g in run(crop, a.mpp, seg, Path(d) / "b.geojson")]
            report["shifted_quality"] = audit_instances(moved, min_area_l0)
            h, w = img.shape[:2]
            margin = s + 16  # away from both images' borders
            box = (margin, margin, w - 16, h - 16)
            report["shift_match"] = match_instances(inside(base, box), inside(moved, box))
            print("shifted quality:", report["shifted_quality"])
            print("tiled vs seams moved by", s, "px:", report["shift_match"], flush=True)
        if a.untiled:
            h, w = read_rgb(a.image).shape[:2]
            side = int(np.ceil(max(h, w) / ds)) + 1  # working px: the image in one tile
            whole = run(a.image, a.mpp, seg, Path(d) / "c.geojson", tile_size=side, overlap=0)
            report["untiled_quality"] = audit_instances(whole, min_area_l0)
            report["tiled_vs_untiled"] = match_instances(base, whole)
            print("untiled quality:", report["untiled_quality"])
            print("tiled vs one tile:", report["tiled_vs_untiled"], flush=True)
    if a.json:
        a.json.write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
