#!/usr/bin/env bash
# The most complete flow ichdet has today: synthesise a cohort, read it back, inspect real CT.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=.venv/bin
OUT=${OUT:-demo-out}
$BIN/ichdet synth --out "$OUT/cohort" --scans 6 --size 256 --seed 0 --format both --difficulty 0.5
first=$(sed -n 2p "$OUT/cohort/manifest.csv" | cut -d, -f3)
echo; echo "== ichdet info on a synthetic scan ($first)"
$BIN/ichdet info "$OUT/cohort/$first"
if [ -d ../shared/data/cq500-ct-1 ]; then
  echo; echo "== ichdet info on the real CQ500 series"
  $BIN/ichdet info ../shared/data/cq500-ct-1 2>/dev/null
fi
echo; echo "manifest: $OUT/cohort/manifest.csv (per-slice labels: $OUT/cohort/slice_labels.csv)"
