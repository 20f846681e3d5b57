#!/usr/bin/env bash
# Runs one scenario of the Ray scale-out test on a real two-node Ray cluster that lives and dies
# with this script. Call it as
#
#   unshare --net --pid --fork --mount-proc bash tests/scale/ray_cluster.sh SCENARIO PYTHON TRIO \
#       MANIFEST OUT DB TRIO_HOME
#
# In its own network namespace only loopback exists, so no traffic can leave the machine (every
# node is on 127.0.0.1); in its own PID namespace `ray stop` sees only this cluster, and every
# process of it dies with the script, whatever happens. Scenarios:
#   plain      the job over 4 shards
#   kill-task  SIGKILL one `trio embed` mid-shard; Ray retries the task
#   kill-node  SIGKILL the whole worker node while it runs a shard; Ray retries elsewhere
set -euo pipefail
scenario=$1 python=$2 trio=$3 manifest=$4 out=$5 db=$6 trio_home=$7
here="$(cd "$(dirname "$0")" && pwd)"
job="$here/../../scale/ray_embed.py"
ray="$(dirname "$python")/ray"
port=6380
export RAY_USAGE_STATS_ENABLED=0
# Dead nodes are noticed in seconds rather than the default half minute.
export RAY_health_check_period_ms=1000 RAY_health_check_failure_threshold=3
ip link set lo up

worker_pid=""
stop() {
    "$ray" stop --force >/dev/null 2>&1 || true
    if [ -n "$worker_pid" ]; then kill -9 -- "-$worker_pid" 2>/dev/null || true; fi
}
trap stop EXIT

common=(--node-ip-address 127.0.0.1 --num-cpus 1 --object-store-memory 100000000
        --disable-usage-stats)
"$ray" start --head --port "$port" --include-dashboard false "${common[@]}" >/dev/null
# The worker node runs in the foreground of its own process group, so it can be killed whole.
setsid "$ray" start --address "127.0.0.1:$port" --block "${common[@]}" >/dev/null 2>&1 &
worker_pid=$!
"$python" - "$port" <<'PY'
import sys, time, ray
ray.init(address=f"127.0.0.1:{sys.argv[1]}", log_to_driver=False)
deadline = time.time() + 120
while sum(n["Alive"] for n in ray.nodes()) < 2:
    if time.time() > deadline:
        sys.exit("the worker node did not join within 120 s")
    time.sleep(0.5)
PY

run_job() {
    "$python" "$job" --address "127.0.0.1:$port" --manifest "$manifest" --out "$out" \
        --db "$db" --shards 4 --trio "$trio" --trio-home "$trio_home" --device cpu \
        --batch-size 8 --retries 3
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
    run_job
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
    worker_pid=""
    wait "$job_pid"
    cat "$out.job.json"
    ;;
*)
    echo "unknown scenario $scenario" >&2
    exit 2
    ;;
esac
