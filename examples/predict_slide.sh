#!/usr/bin/env bash
# Segment the bundled CC0 slide (CMU-1 small region, Aperio SVS) and write QuPath GeoJSON.
#   examples/predict_slide.sh                 # default model (aff-nuclei)
#   MODEL=simple examples/predict_slide.sh    # tiny built-in test net, no weights needed
# Outputs: out/cmu-1-small-region.geojson (+ .provenance.json), out/run.json, and the
# resumable tile store out/cmu-1-small-region.geojson.tiles.zarr (re-running resumes/skips).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
out="${OUT:-out}"
tileseg predict "$here/cmu-1-small-region.svs" \
    --model "${MODEL:-aff-nuclei}" \
    --outdir "$out" \
    --summary "$out/run.json" \
    --min-area 5
echo "open $out/cmu-1-small-region.geojson in QuPath (File > Import objects) on the slide" >&2
