#!/usr/bin/env bash
# Segment a GeoTIFF; polygons come out in the raster's CRS (declared in the GeoJSON, opens in
# QGIS / ogrinfo). Without an argument a small synthetic GeoTIFF (EPSG:32616) is generated.
#   examples/predict_geotiff.sh [raster.tif]
# The default model here is the built-in simple net at the raster's own resolution, loaded
# through the "bring your own model" route: --model package.module:factory. Natural-image
# cards (nominal pixel size, e.g. MODEL=aff-mini.ade20k) also run on the raster's own pixels;
# cards with a physical µm/px (aff-nuclei) are refused on m/px rasters.
set -euo pipefail
out="${OUT:-out}"
mkdir -p "$out"
src="${1:-}"
if [[ -z "$src" ]]; then
    src="$out/synthetic_geotiff.tif"
    python - "$src" <<'PY'
import sys
from tilesegcli.testing import synthetic
img = synthetic.tissue_like(1200, 900, seed=7, background=200)
synthetic.write_geotiff(sys.argv[1], img, epsg=32616, pixel_size=0.5, tile=256)
PY
fi
tileseg predict "$src" \
    --model "${MODEL:-tilesegcli.segmenters.simple:native}" \
    --outdir "$out" \
    --format geojson \
    --min-area 2 \
    --summary "$out/geotiff_run.json"
if command -v ogrinfo >/dev/null; then
    ogrinfo -so -al "$out/$(basename "${src%.*}").geojson" | head -20
fi
