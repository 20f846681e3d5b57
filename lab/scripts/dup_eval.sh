#!/usr/bin/env bash
# Planted duplicates on real tower vectors: `trio duplicates` vs imagededup (PHash, CNN) on the
# same files, every reported pair judged (lab/reference/dup_eval.py).
# Usage: lab/scripts/dup_eval.sh DEMO_DB WORKDIR [EVERY] [OFFSET]
#   DEMO_DB: a database holding `trio ingest --demo` (copied for the planted run; duplicates on
#            it alone fill in its image thumbnails, nothing else).
#   EVERY:   plant copies of every EVERY-th base emoji render (default 50), starting at the
#            OFFSET-th (default 0; choose settings on another offset than the one reported).
# Needs `cargo build --workspace --all-targets`, TRIO_HOME, and PYTHON pointing at a Python with
# imagededup and efficientnet_lite_pytorch (its CNN runs on EfficientNet-Lite0, Trio's image
# tower, since its default MobileNetV3 weights are a download); METHODS="" scores Trio alone.
# imagededup's links are kept in WORKDIR/imagededup, so a rerun on the same files rescores them
# instead of recomputing. Extra `trio duplicates` flags go in TRIO_FLAGS.
set -euo pipefail
db=$1 work=$2 every=${3:-50} offset=${4:-0}
trio=${TRIO:-target/debug/trio}
python=${PYTHON:-python3}
methods=${METHODS-phash,cnn}
flags=${TRIO_FLAGS:-}
mkdir -p "$work"
target/debug/examples/plant_duplicates --out "$work" --every "$every" --offset "$offset"
if [ ! -e "$work/dup.trio" ]; then
  cp "$db" "$work/dup.trio"
  "$trio" -q ingest "$work/planted.jsonl" --db "$work/dup.trio" --json > "$work/ingest.json"
fi
# shellcheck disable=SC2086
"$trio" -q duplicates --db "$db" --space image $flags --json > "$work/trio_clean.json"
start=$(date +%s.%N)
# shellcheck disable=SC2086
"$trio" -q duplicates --db "$work/dup.trio" --space image $flags --json > "$work/trio_dups.json"
end=$(date +%s.%N)
"$python" lab/reference/dup_eval.py "$work" --trio "$work/trio_dups.json" \
  --trio-clean "$work/trio_clean.json" \
  --trio-seconds "$(echo "$end - $start" | bc)" --methods "$methods" \
  --cnn-lite0-weights "${TRIO_HOME:-$HOME/.cache/trio}/models/efficientnet-lite0/efficientnet-lite0.pth" \
  --cache "$work/imagededup" --json-out "$work/dup_scores.json"
