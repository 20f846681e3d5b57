#!/usr/bin/env bash
# Label noise on real out-of-fold probabilities: `trio noise` vs cleanlab's find_label_issues on
# the same probabilities. Usage: lab/scripts/noise_eval.sh DEMO_DB WORKDIR [FRACTION] [SEED]
#   DEMO_DB: a database holding `trio ingest --demo` (copied with labels flipped, never changed).
# Needs `cargo build --workspace --all-targets` and PYTHON pointing at a Python with cleanlab.
# NEIGHBOUR_WEIGHT, when set, is passed to `trio noise --neighbour-weight`.
set -euo pipefail
db=$1 work=$2 fraction=${3:-0.2} seed=${4:-0}
trio=${TRIO:-target/debug/trio}
python=${PYTHON:-python3}
mkdir -p "$work"
flipped="$work/flipped.trio"
rm -rf "$flipped" "$flipped.index" "$flipped.truth.json"
target/debug/examples/flip_labels --db "$db" --out "$flipped" --fraction "$fraction" --seed "$seed"
n=$("$python" -c "import json,sys; print(json.load(open(sys.argv[1]))['flipped'])" "$flipped.truth.json")
/usr/bin/time -f "train: %e s wall, %U s user" "$trio" -q train --db "$flipped" --group-field emoji_key --seed "$seed" --json > "$work/train.json"
/usr/bin/time -f "noise: %e s wall, %U s user" "$trio" -q noise --db "$flipped" --group-field emoji_key --seed "$seed" \
  --top "$n" ${NEIGHBOUR_WEIGHT:+--neighbour-weight "$NEIGHBOUR_WEIGHT"} --export-oof "$work/oof.json" --json > "$work/noise.json"
"$python" lab/reference/noise_reference.py trio --oof "$work/oof.json" --issues "$work/noise.json" \
  --truth "$flipped.truth.json" --json-out "$work/noise_scores.json"
