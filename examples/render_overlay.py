"""Render a tileseg GeoJSON over a region of its slide as a PNG (a quick visual check).

    python examples/render_overlay.py examples/cmu-1-small-region.svs cmu1.geojson overlay.png \
        --box 900 1100 600 500
"""

from __future__ import annotations

import argparse
import json

from PIL import ImageDraw

from tilesegcli.readers import open_reader


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("slide")
    ap.add_argument("geojson")
    ap.add_argument("png")
    ap.add_argument("--box", type=int, nargs=4, default=(900, 1100, 600, 500),
                    metavar=("X", "Y", "W", "H"), help="level-0 region to draw")
    args = ap.parse_args()
    x0, y0, w, h = args.box
    from PIL import Image

    with open_reader(args.slide) as reader:
        im = Image.fromarray(reader.read_region(0, x0, y0, w, h))
    draw = ImageDraw.Draw(im)
    with open(args.geojson) as f:
        features = json.load(f)["features"]
    for feat in features:
        geom = feat["geometry"]
        polys = [geom["coordinates"]] if geom["type"] == "Polygon" else geom["coordinates"]
        color = tuple(feat["properties"].get("classification", {}).get("color", (0, 255, 0)))
        for poly in polys:
            ring = [(x - x0, y - y0) for x, y in poly[0]]
            if any(0 <= a < w and 0 <= b < h for a, b in ring):
                draw.line([*ring, ring[0]], fill=color, width=2)
    im.save(args.png)
    print(args.png)


if __name__ == "__main__":
    main()
