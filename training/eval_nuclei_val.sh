#!/usr/bin/env bash
# End-to-end score of a nuclei model on the 4 held-out MoNuSeg validation images (one per organ,
# patients never trained on): `tileseg predict` on each 1000x1000 40x image (tissue mask, tiles,
# stitching, polygons) then `tileseg eval` against the official ImageScope XML at full resolution.
#   training/eval_nuclei_val.sh [MODEL] [OUTDIR]      (run from the repository root)
set -euo pipefail
MODEL=${1:-aff-nuclei}
OUT=${2:-runs/nuclei-val}
D=${TILESEG_NUCLEI_DATA:-../shared/data/nuclei}/monuseg2018/train
mkdir -p "$OUT/pred" "$OUT/gt"
for n in TCGA-50-5931-01Z-00-DX1 TCGA-E2-A1B5-01Z-00-DX1 TCGA-B0-5710-01Z-00-DX1 \
         TCGA-G9-6362-01Z-00-DX1; do
  tileseg predict "$D/images/$n.tif" --mpp 0.2527 --model "$MODEL" --overwrite \
    -o "$OUT/pred/$n.geojson"
  cp "$D/annotations/$n.xml" "$OUT/gt/$n.xml"
done
tileseg eval "$OUT/pred" "$OUT/gt" --size 1000 1000 --json "$OUT/scores.json"
