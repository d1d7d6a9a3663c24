#!/usr/bin/env bash
# `make demo`: every experiment of both papers on a synthetic cohort -> demo-out/report/index.html.
# QUICK=1 make demo: the ~10-minute profile. OUT=dir to choose the folder. Rerunning resumes.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-demo-out}
args=(--out "$OUT")
[[ -n ${QUICK:-} ]] && args+=(--quick)
.venv/bin/ichdet demo "${args[@]}"
