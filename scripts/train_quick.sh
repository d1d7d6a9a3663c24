#!/usr/bin/env bash
# Train every quick experiment of both papers (and the subtype models) on one cohort: scripts/train_quick.sh MANIFEST RUNS [--set k=v ...]
# (2d_alexnet trains from random weights unless you add --set model.weights=imagenet or a local file).
set -euo pipefail
manifest=$1; runs=$2; shift 2
here=$(cd "$(dirname "$0")/.." && pwd)
ichdet=${ICHDET:-ichdet}
order=(3d_slice_cnn 3d_slice_max 3d_slice_p95 3d_feature_svm 3d_lstm1_frozen 3d_lstm2_frozen 3d_lstm1_e2e
       3d_lstm2_e2e 3d_e2e_nostage 2d_cnn 2d_alexnet 2d_alexnet_svm
       3d_slice_cnn_subtypes 3d_slice_max_subtypes 3d_lstm2_frozen_subtypes 3d_lstm2_e2e_subtypes
       2d_cnn_subtypes 2d_alexnet_subtypes)
for name in "${order[@]}"; do
  extra=()
  [[ $name == 2d_alexnet* ]] && extra=(--set model.weights=)
  resume=()
  [[ -f $runs/$name/latest.pt ]] && resume=(--resume)
  if [[ -f $runs/$name/bundle/bundle.json && ! -f $runs/$name/latest.pt ]]; then continue; fi
  start=$(date +%s)
  "$ichdet" train "$here/configs/quick/$name.yaml" --out "$runs/$name" --data "$manifest" --quiet "${resume[@]}" "${extra[@]}" "$@"
  echo "$name: $(( $(date +%s) - start )) s" | tee -a "$runs/timings.txt"
done
