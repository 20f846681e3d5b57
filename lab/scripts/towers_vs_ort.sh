#!/usr/bin/env bash
# Trio's towers against ONNX Runtime in one run, alternating: for each round, `trio bench` in f32
# and in bf16, the text tower alone in int8 (the image tower has no int8 path), then
# `lab/reference/ort_bench.py bench` (f32 image, f32 and int8 MiniLM), all on 2 threads (THREADS
# to change; 1 compares per-core speed on a machine others are loading), the five
# test photos and `benches/text_sentences.txt`, batches 1, 8 and 32. Prints each round's rates,
# the median over rounds as a Markdown table, and Trio's text rates over ORT int8's.
#
#   lab/reference/ort_install.sh && TRIO_HOME=... /work/venvs/ort/bin/python lab/reference/ort_export.py
#   cargo build -p trio-cli
#   TRIO_HOME=~/.cache/trio flock /tmp/trio-bench.lock lab/scripts/towers_vs_ort.sh [ROUNDS] [PYTHON]
set -euo pipefail
rounds="${1:-2}"
python="${2:-/work/venvs/ort/bin/python}"
root="$(cd "$(dirname "$0")/../.." && pwd)"
trio="${TRIO:-$root/target/debug/trio}"
out="$(mktemp -d)"
threads="${THREADS:-2}"
export RAYON_NUM_THREADS="$threads"
for round in $(seq "$rounds"); do
    for precision in f32 bf16 int8; do
        only=()
        [ "$precision" = int8 ] && only=(--no-image)
        "$trio" bench --texts-file "$root/benches/text_sentences.txt" --tower-precision "$precision" \
            "${only[@]}" --json > "$out/trio-$precision-$round.json"
    done
    "$python" "$root/lab/reference/ort_bench.py" bench --threads "$threads" --json > "$out/ort-$round.json"
done
python3 - "$out" "$rounds" <<'PY'
import json, statistics, sys
from pathlib import Path
out, rounds = Path(sys.argv[1]), int(sys.argv[2])
rates = {}
rss = {}
for r in range(1, rounds + 1):
    for name in ("trio-f32", "trio-bf16", "trio-int8", "ort"):
        d = json.loads((out / f"{name}-{r}.json").read_text())
        rss.setdefault(name, []).append(d.get("peak_rss_mib") or 0)
        for row in d["rows"]:
            label = row.get("model") or name
            rates.setdefault((row["tower"], label, row["batch"]), []).append(row["items_per_second"])
for key in sorted(rates):
    print(f"round rates {key}: {[round(v, 1) for v in rates[key]]}")
cols = [("image", "trio-f32"), ("image", "trio-bf16"), ("image", "ort-f32"),
        ("text", "trio-f32"), ("text", "trio-bf16"), ("text", "trio-int8"), ("text", "ort-f32"),
        ("text", "ort-int8")]
print("\n| batch | " + " | ".join(f"{t} {m}" for t, m in cols) + " |")
print("|---:|" + "---:|" * len(cols))
for batch in (1, 8, 32):
    cells = [statistics.median(rates[(t, m, batch)]) for t, m in cols]
    print(f"| {batch} | " + " | ".join(f"{c:.1f}" for c in cells) + " |")
print("\n| batch | text bf16 / ORT int8 | text int8 / ORT int8 |\n|---:|---:|---:|")
for batch in (1, 8, 32):
    ort8 = statistics.median(rates[("text", "ort-int8", batch)])
    bf, i8 = (statistics.median(rates[("text", m, batch)]) for m in ("trio-bf16", "trio-int8"))
    print(f"| {batch} | {bf / ort8:.2f} | {i8 / ort8:.2f} |")
print("\npeak RSS MiB (max over rounds): " + ", ".join(f"{k} {max(v):.0f}" for k, v in rss.items()))
PY
rm -rf "$out"
