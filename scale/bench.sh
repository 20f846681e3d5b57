#!/usr/bin/env bash
# Measures the Ray job (scale/ray_embed.py) on this machine: the same manifest of demo rows
# embedded over one node and over two nodes of one CPU each, with `trio ingest` on one thread
# and on every thread as the reference, all in one run. Each cluster lives in its own network
# and PID namespaces (scale/cluster.sh). Prints one line per setting.
#
#   scale/bench.sh ROWS SHARDS        (after `cargo build --workspace --all-targets`)
set -euo pipefail
rows=${1:?rows} shards=${2:?shards}
root="$(cd "$(dirname "$0")/.." && pwd)"
trio="$root/target/debug/trio"
python="$("$root/scale/install.sh")"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
"$root/target/debug/examples/demo_manifest" "$work/m.jsonl" --limit "$rows"

for threads in 1 "$(nproc)"; do
    start=$(date +%s.%N)
    RAYON_NUM_THREADS=$threads CANDLE_NUM_THREADS=$threads \
        "$trio" ingest "$work/m.jsonl" --db "$work/plain-$threads.trio" --quiet --device cpu
    end=$(date +%s.%N)
    awk -v t="$threads" -v n="$rows" -v s="$start" -v e="$end" 'BEGIN {
        printf "trio ingest, %s thread(s): %d rows in %.1f s = %.1f rows/s\n", t, n, e - s, n / (e - s) }'
done

for nodes in 1 2; do
    unshare --net --pid --fork --mount-proc bash -c '
        set -euo pipefail
        export RAY_PYTHON=$1
        source "$2/scale/cluster.sh"
        cluster_start "$3" 1
        start=$(date +%s.%N)
        "$RAY_PYTHON" "$2/scale/ray_embed.py" --manifest "$4" --out "$5/out-$3" \
            --db "$5/ray-$3.trio" --shards "$6" --trio "$7" --device cpu > "$5/job-$3.json" \
            2> "$5/job-$3.log"
        end=$(date +%s.%N)
        "$RAY_PYTHON" "$2/scale/bench_summary.py" "$5/job-$3.json" "$3" \
            "$(awk -v s="$start" -v e="$end" '"'"'BEGIN { print e - s }'"'"')" "$8"
    ' bash "$python" "$root" "$nodes" "$work/m.jsonl" "$work" "$shards" "$trio" "$rows"
done
