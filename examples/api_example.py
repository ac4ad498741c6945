"""Bring your own model to tileseg through the Python API.

Any object with these attributes and method is a Segmenter (tilesegcli.segmenter.Segmenter):

    name: str                  enters the run fingerprint (a store from another model is refused)
    task: str                  "semantic" | "instance" | "panoptic"
    classes: list[ClassInfo]   index 0 = background
    mpp: float | None          pixel size the model expects (µm/px; m/px with mpp_unit "m");
                               None = run on the input's own level-0 pixels
    mpp_unit: str              "um" or "m"
    tile_size: int             tile edge at that resolution (px)
    overlap: int               tile overlap (px); objects up to ~overlap/2 are seen whole
    predict_batch(tiles)       tiles: (B, H, W, 3) uint8 RGB -> list of B TileResult with
                               semantic (C, H, W) float32 probabilities and/or
                               labels (H, W) int32 (0 = none, k = instance k) +
                               instance_classes (K,) int + instance_scores (K,) float
    weights_sha256 (optional)  enters the fingerprint; card (optional dict) goes to provenance

tileseg reads the slide at the model's resolution, skips background tiles, batches the rest
through predict_batch, keeps every finished tile in a resumable zarr store, stitches every
object exactly once across tile seams and writes QuPath GeoJSON.

    python examples/api_example.py [slide] [out.geojson]
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from scipy import ndimage

from tilesegcli.pipeline import predict
from tilesegcli.segmenter import ClassInfo, TileResult


class HematoxylinBlobs:
    """A model without any network: nuclei = connected dark-purple blobs."""

    name = "hematoxylin-blobs"
    task = "instance"
    classes = [ClassInfo("background", (0, 0, 0)), ClassInfo("nucleus", (220, 40, 40))]
    mpp = 0.5
    mpp_unit = "um"
    tile_size = 256
    overlap = 48

    def predict_batch(self, tiles: np.ndarray) -> list[TileResult]:
        out = []
        for rgb in tiles.astype(np.float32):
            r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
            nuclei = (r + g + b < 3 * 150) & (b > g)  # dark and bluish
            nuclei = ndimage.binary_opening(nuclei, iterations=1)
            labels, n = ndimage.label(nuclei)
            out.append(TileResult(labels=labels.astype(np.int32),
                                  instance_classes=np.ones(n, np.int64),
                                  instance_scores=np.full(n, 0.5, np.float32)))
        return out


def main() -> int:
    here = Path(__file__).resolve().parent
    slide = Path(sys.argv[1]) if len(sys.argv) > 1 else here / "cmu-1-small-region.svs"
    output = Path(sys.argv[2]) if len(sys.argv) > 2 else Path("out") / "api_example.geojson"
    [result] = predict(slide, segmenter=HematoxylinBlobs(), output=output, batch_size=8,
                       min_area=4.0)  # µm²
    print(f"{result.status}: {result.objects} nuclei -> {result.output}", file=sys.stderr)
    if result.status == "failed":
        print(result.error, file=sys.stderr)
        return 1
    # The same call with the bundled nuclei model: predict(slide, model="aff-nuclei", ...)
    return 0


if __name__ == "__main__":
    sys.exit(main())
