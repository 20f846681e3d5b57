#!/usr/bin/env bash
# Planted duplicates on real tower vectors: `trio duplicates` vs imagededup (PHash, CNN) on the
# same files. Usage: lab/scripts/dup_eval.sh DEMO_DB WORKDIR [EVERY]
#   DEMO_DB: a database holding `trio ingest --demo` (it is copied, never changed).
#   EVERY:   plant copies of every EVERY-th base emoji render (default 50).
# Needs `cargo build --workspace --all-targets`, TRIO_HOME, and PYTHON pointing at a Python with
# imagededup and efficientnet_lite_pytorch (its CNN runs on EfficientNet-Lite0, Trio's image
# tower, since its default MobileNetV3 weights are a download). imagededup's links are kept in
# WORKDIR/imagededup, so a rerun on the same files rescores them instead of recomputing.
set -euo pipefail
db=$1 work=$2 every=${3:-50}
trio=${TRIO:-target/debug/trio}
python=${PYTHON:-python3}
mkdir -p "$work"
target/debug/examples/plant_duplicates --out "$work" --every "$every"
rm -rf "$work/dup.trio" "$work/dup.trio.index"
cp "$db" "$work/dup.trio"
"$trio" -q ingest "$work/planted.jsonl" --db "$work/dup.trio" --json > "$work/ingest.json"
start=$(date +%s.%N)
"$trio" -q duplicates --db "$work/dup.trio" --space image --json > "$work/trio_dups.json"
end=$(date +%s.%N)
"$python" lab/reference/dup_eval.py "$work" --trio "$work/trio_dups.json" \
  --trio-seconds "$(echo "$end - $start" | bc)" \
  --cnn-lite0-weights "${TRIO_HOME:-$HOME/.cache/trio}/models/efficientnet-lite0/efficientnet-lite0.pth" \
  --cache "$work/imagededup" --json-out "$work/dup_scores.json"
