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
    echo "trio ingest, $threads thread(s): $rows rows in $(echo "$end - $start" | bc) s" \
         "= $(echo "scale=1; $rows / ($end - $start)" | bc) rows/s"
done

for nodes in 1 2; do
    unshare --net --pid --fork --mount-proc bash -c '
        set -euo pipefail
        export RAY_PYTHON=$1
        source "$2/scale/cluster.sh"
        cluster_start "$3" 1
        start=$(date +%s.%N)
        "$RAY_PYTHON" "$2/scale/ray_embed.py" --manifest "$4" --out "$5/out-$3" \
            --db "$5/ray-$3.trio" --shards "$6" --trio "$7" --device cpu > "$5/job-$3.json"
        end=$(date +%s.%N)
        "$RAY_PYTHON" - "$5/job-$3.json" "$3" "$(echo "$end - $start" | bc)" "$8" <<PY
import json, sys
job = json.load(open(sys.argv[1]))
nodes, wall, rows = sys.argv[2], float(sys.argv[3]), int(sys.argv[4])
shards = job["shards"]
load = job["ingest"]["times"]
per = [s["times"] for s in shards]
model = sum(s["wall_s"] - t["total_s"] for s, t in zip(shards, per)) / len(shards)
print(f"ray job, {nodes} node(s) x 1 CPU: {rows} rows in {wall:.1f} s = {rows / wall:.1f} rows/s "
      f"(embed {job[\"embed_s\"]:.1f} s, load {load[\"total_s\"]:.2f} s of which index "
      f"{load[\"index_s\"]:.2f} s; per shard: start-up and model load {model:.2f} s, "
      f"towers {sum(t[\"image_tower_s\"] + t[\"text_tower_s\"] for t in per) / len(per):.2f} s)")
PY
    ' bash "$python" "$root" "$nodes" "$work/m.jsonl" "$work" "$shards" "$trio" "$rows"
done
