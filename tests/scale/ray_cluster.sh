#!/usr/bin/env bash
# Runs one scenario of the Ray scale-out test on a real two-node Ray cluster (scale/cluster.sh)
# that lives and dies with this script:
#
#   unshare --net --pid --fork --mount-proc bash tests/scale/ray_cluster.sh SCENARIO PYTHON TRIO \
#       MANIFEST OUT DB TRIO_HOME
#
# Scenarios:
#   plain      the job over 4 shards, the trio binary shipped to the workers by Ray
#   kill-task  SIGKILL one `trio embed` mid-shard; Ray retries the task
#   kill-node  SIGKILL the whole worker node while it runs a shard; Ray retries elsewhere
set -euo pipefail
scenario=$1 python=$2 trio=$3 manifest=$4 out=$5 db=$6 trio_home=$7
here="$(cd "$(dirname "$0")" && pwd)"
job="$here/../../scale/ray_embed.py"
export RAY_PYTHON=$python
# shellcheck source=../../scale/cluster.sh
source "$here/../../scale/cluster.sh"
cluster_start 2
worker_pid=${WORKER_PIDS[0]}

run_job() {
    "$python" "$job" --manifest "$manifest" --out "$out" \
        --db "$db" --shards 4 --trio "$trio" --trio-home "$trio_home" --device cpu \
        --batch-size 8 --retries 3 --summary "${out%/}.json" "$@"
}

# Waits for a `trio embed` process that `pick` accepts and prints its pid.
wait_for_embed() {
    local pick=$1 deadline=$((SECONDS + 120))
    while [ $SECONDS -lt $deadline ]; do
        for pid in $(pgrep -f "trio embed --manifest" || true); do
            if $pick "$pid"; then echo "$pid"; return 0; fi
        done
        sleep 0.05
    done
    echo "no trio embed process appeared" >&2
    return 1
}
any() { true; }
# Whether pid descends from the worker node's `ray start`.
on_worker() {
    local p=$1
    while [ -n "$p" ] && [ "$p" -gt 1 ]; do
        [ "$p" = "$worker_pid" ] && return 0
        p=$(ps -o ppid= -p "$p" 2>/dev/null | tr -d ' ')
    done
    return 1
}
# Every process of the worker node: its `ray start` and all it started.
node_processes() {
    ps -e -o pid=,ppid= | awk -v root="$worker_pid" '
        { parent[$1] = $2 }
        END { for (p in parent) { q = p; while (q > 1) { if (q == root) { print p; break } q = parent[q] } } }'
}

case "$scenario" in
plain)
    # The binary reaches the workers through Ray's runtime environment, as on a cluster whose
    # nodes do not have it.
    run_job --ship-trio
    ;;
kill-task)
    run_job > "$out.job.json" &
    job_pid=$!
    victim=$(wait_for_embed any)
    sleep 0.3
    kill -9 "$victim" 2>/dev/null || true
    echo "killed trio embed $victim" >&2
    wait "$job_pid"
    cat "$out.job.json"
    ;;
kill-node)
    run_job > "$out.job.json" &
    job_pid=$!
    wait_for_embed on_worker >/dev/null
    sleep 0.3
    victims=$(node_processes)
    kill -9 $victims 2>/dev/null || true
    echo "killed the worker node: $(echo $victims | wc -w) processes" >&2
    wait "$job_pid"
    cat "$out.job.json"
    ;;
*)
    echo "unknown scenario $scenario" >&2
    exit 2
    ;;
esac
