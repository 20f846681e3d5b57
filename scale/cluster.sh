# A local Ray cluster of N nodes on 127.0.0.1, for tests and benchmarks: source this file, then
# `cluster_start N` (exports RAY_ADDRESS and WORKER_PIDS) and `cluster_stop` (also set as the
# EXIT trap). Run the sourcing script inside its own namespaces,
#
#   unshare --net --pid --fork --mount-proc bash SCRIPT ...
#
# so only loopback exists (no traffic leaves the machine; every node is on 127.0.0.1), `ray stop`
# sees only this cluster, and every process of it dies with the script whatever happens.
# Needs RAY_PYTHON: the python of the pinned Ray (scale/install.sh prints it).

RAY_PORT=${RAY_PORT:-6380}
WORKER_PIDS=()
export RAY_USAGE_STATS_ENABLED=0
# Dead nodes are noticed in seconds rather than the default half minute.
export RAY_health_check_period_ms=1000 RAY_health_check_failure_threshold=3

cluster_stop() {
    "$(dirname "$RAY_PYTHON")/ray" stop --force >/dev/null 2>&1 || true
    local pid
    for pid in "${WORKER_PIDS[@]}"; do kill -9 -- "-$pid" 2>/dev/null || true; done
}

# cluster_start NODES [CPUS_PER_NODE]: a head and NODES-1 workers, each with its CPUs.
cluster_start() {
    local nodes=$1 cpus=${2:-1} ray
    ray="$(dirname "$RAY_PYTHON")/ray"
    trap cluster_stop EXIT
    ip link set lo up
    local common=(--node-ip-address 127.0.0.1 --num-cpus "$cpus" --object-store-memory 100000000
                  --disable-usage-stats)
    "$ray" start --head --port "$RAY_PORT" --include-dashboard false "${common[@]}" >/dev/null
    local i
    for ((i = 1; i < nodes; i++)); do
        # Each worker node runs in the foreground of its own process group, so it can be
        # found (and killed) whole.
        setsid "$ray" start --address "127.0.0.1:$RAY_PORT" --block "${common[@]}" \
            >/dev/null 2>&1 &
        WORKER_PIDS+=($!)
    done
    export RAY_ADDRESS="127.0.0.1:$RAY_PORT"
    "$RAY_PYTHON" - "$nodes" <<'PY'
import sys, time, ray
ray.init(log_to_driver=False)
deadline = time.time() + 120
while sum(n["Alive"] for n in ray.nodes()) < int(sys.argv[1]):
    if time.time() > deadline:
        sys.exit("the worker nodes did not join within 120 s")
    time.sleep(0.5)
PY
}
