#!/usr/bin/env bash
# Load test of `trio serve`: text search and classification under `wrk`, 64 connections for
# 30 s each, three rounds. Prints requests/s, latency p50/p99 and non-2xx counts per run, and
# the server's resident memory before and after the rounds (from /proc/PID/status). Then a
# mixed run: items are added (POST /v1/items with an image, INGEST_CONNECTIONS connections)
# while searches go on at full load; the catalogue must grow by exactly the items answered 201.
#
# Only ever targets 127.0.0.1: the server is started here, on a local port.
#
# Settings (environment):
#   TRIO            the trio binary                  (default: target/release/trio)
#   TRIO_SERVE_ARGS extra arguments for `trio serve` (default: none), e.g. "--home /data/trio"
#   PORT            local port                       (default: 18080)
#   CONNECTIONS     wrk connections                  (default: 64)
#   THREADS         wrk threads                      (default: 4)
#   DURATION        wrk duration per run             (default: 30s)
#   ROUNDS          rounds of (search, classify)     (default: 3)
#   WRK_TIMEOUT     how long wrk waits for an answer  (default: 30s, the server's request
#                   timeout; wrk's own 2 s would count queueing behind 64 slow classifications
#                   on a small machine as errors)
#   IMAGE           optional image file to classify along with the title, and to attach to the
#                   items the mixed run adds (default: none there either)
#   INGEST_CONNECTIONS  wrk connections adding items in the mixed run (default: 4; 0 skips it)
#
# Typical run, on the demo catalogue:
#   trio ingest --demo --db demo.trio && trio train --db demo.trio
#   TRIO_SERVE_ARGS="--db demo.trio" IMAGE=$TRIO_HOME/data/photos/chelsea.png lab/scripts/load_test.sh
set -euo pipefail

TRIO=${TRIO:-target/release/trio}
PORT=${PORT:-18080}
CONNECTIONS=${CONNECTIONS:-64}
THREADS=${THREADS:-4}
DURATION=${DURATION:-30s}
ROUNDS=${ROUNDS:-3}
WRK_TIMEOUT=${WRK_TIMEOUT:-30s}
INGEST_CONNECTIONS=${INGEST_CONNECTIONS:-4}
HOST=127.0.0.1
BASE="http://${HOST}:${PORT}"

if ! command -v wrk >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "wrk not found: installing the Debian package" >&2
        apt-get install -y wrk >/dev/null || { apt-get update >/dev/null && apt-get install -y wrk >/dev/null; }
    else
        echo "wrk is required (Debian package 'wrk')" >&2
        exit 1
    fi
fi
command -v curl >/dev/null 2>&1 || { echo "curl is required" >&2; exit 1; }
[ -x "$TRIO" ] || { echo "no trio binary at $TRIO (set TRIO=...)" >&2; exit 1; }

work=$(mktemp -d)
server_pid=""
cleanup() {
    if [ -n "$server_pid" ] && kill -0 "$server_pid" 2>/dev/null; then
        kill -TERM "$server_pid" 2>/dev/null || true
        wait "$server_pid" 2>/dev/null || true
    fi
    rm -rf "$work"
}
trap cleanup EXIT

# Request bodies, built here so the Lua scripts only read files.
cat >"$work/search.json" <<'JSON'
{"text": "a smiling face with sunglasses", "k": 10}
JSON
if [ -n "${IMAGE:-}" ]; then
    printf '{"title": "a cat on a sofa", "top_k": 5, "image": "%s"}\n' "$(base64 -w0 "$IMAGE")" >"$work/classify.json"
else
    printf '{"title": "a cat on a sofa", "description": "grey fur, green eyes", "top_k": 5}\n' >"$work/classify.json"
fi

cat >"$work/post.lua" <<'LUA'
-- POSTs the JSON body in the file named by the first script argument; reports one
-- machine-readable line at the end.
local body
init = function(args)
  local f = assert(io.open(args[1], "rb"))
  body = f:read("*a")
  f:close()
end
request = function()
  return wrk.format("POST", nil, {["Content-Type"] = "application/json"}, body)
end
done = function(summary, latency, requests)
  local seconds = summary.duration / 1e6
  io.write(string.format(
    "RESULT rps=%.1f p50_ms=%.2f p99_ms=%.2f requests=%d non_2xx=%d socket_errors=%d timeouts=%d\n",
    summary.requests / seconds,
    latency:percentile(50) / 1000, latency:percentile(99) / 1000,
    summary.requests, summary.errors.status,
    summary.errors.connect + summary.errors.read + summary.errors.write,
    summary.errors.timeout))
end
LUA

# The mixed run writes, so the server gets a throwaway key (never printed).
TRIO_API_KEY=$(head -c 18 /dev/urandom | base64 | tr -d '/+=')
export TRIO_API_KEY

# Items for the mixed run: each request gets a fresh id and title, so each is a new item.
if [ -n "${IMAGE:-}" ]; then
    printf '%s' "$(base64 -w0 "$IMAGE")" >"$work/item_image.b64"
else
    : >"$work/item_image.b64"
fi
cat >"$work/ingest.lua" <<'LUA'
-- POSTs a new item per request (id unique per run, thread and counter); args: key, image base64
-- file, run prefix.
local key, image, run
local counter = 0
local threads = {}
setup = function(thread)
  thread:set("tid", #threads + 1)
  table.insert(threads, thread)
end
init = function(args)
  key = args[1]
  run = args[3]
  local f = assert(io.open(args[2], "rb"))
  image = f:read("*a")
  f:close()
end
request = function()
  counter = counter + 1
  local id = string.format("load-%s-%d-%d", run, tid, counter)
  local body
  if #image > 0 then
    body = string.format('{"id": "%s", "title": "load item %s", "label": "load", "image": "%s"}', id, id, image)
  else
    body = string.format('{"id": "%s", "title": "load item %s", "label": "load"}', id, id)
  end
  return wrk.format("POST", "/v1/items", {["Content-Type"] = "application/json",
    ["Authorization"] = "Bearer " .. key}, body)
end
done = function(summary, latency, requests)
  local seconds = summary.duration / 1e6
  io.write(string.format(
    "RESULT rps=%.1f p50_ms=%.2f p99_ms=%.2f requests=%d non_2xx=%d socket_errors=%d timeouts=%d\n",
    summary.requests / seconds,
    latency:percentile(50) / 1000, latency:percentile(99) / 1000,
    summary.requests, summary.errors.status,
    summary.errors.connect + summary.errors.read + summary.errors.write,
    summary.errors.timeout))
end
LUA

rss() { awk '/^VmRSS/ {print $2 " " $3}' "/proc/$server_pid/status"; }

# shellcheck disable=SC2086 # TRIO_SERVE_ARGS is a list of words on purpose
"$TRIO" serve --addr "${HOST}:${PORT}" ${TRIO_SERVE_ARGS:-} >"$work/server.log" 2>&1 &
server_pid=$!
for _ in $(seq 1 600); do
    if curl -fsS "$BASE/healthz" >/dev/null 2>&1; then break; fi
    if ! kill -0 "$server_pid" 2>/dev/null; then
        echo "trio serve exited early:" >&2; cat "$work/server.log" >&2; exit 1
    fi
    sleep 0.5
done
curl -fsS "$BASE/healthz" >/dev/null || { echo "server never became healthy" >&2; cat "$work/server.log" >&2; exit 1; }

# Warm-up (models, allocator) so that the first round is comparable to the others.
wrk -t1 -c4 -d3s -s "$work/post.lua" "$BASE/v1/search" -- "$work/search.json" >/dev/null
wrk -t1 -c4 -d3s -s "$work/post.lua" "$BASE/v1/classify" -- "$work/classify.json" >/dev/null

echo "server pid $server_pid on $BASE; $CONNECTIONS connections, $THREADS threads, $DURATION per run"
echo "RSS before: $(rss)"
printf '%-6s %-9s %10s %9s %9s %10s %8s %8s\n' round route req/s p50_ms p99_ms requests non2xx sockerr
for round in $(seq 1 "$ROUNDS"); do
    for route in search classify; do
        line=$(wrk -t"$THREADS" -c"$CONNECTIONS" -d"$DURATION" --latency --timeout "$WRK_TIMEOUT" -s "$work/post.lua" \
            "$BASE/v1/$route" -- "$work/$route.json" | grep '^RESULT')
        eval "${line#RESULT }"   # sets rps, p50_ms, p99_ms, requests, non_2xx, socket_errors, timeouts
        # shellcheck disable=SC2154 # set by the eval above
        printf '%-6s %-9s %10s %9s %9s %10s %8s %8s\n' "$round" "$route" "$rps" "$p50_ms" "$p99_ms" \
            "$requests" "$non_2xx" "$((socket_errors + timeouts))"
    done
    echo "RSS after round $round: $(rss)"
done

items() { curl -fsS "$BASE/v1/stats" | sed -E 's/.*"items":([0-9]+).*/\1/'; }
if [ "$INGEST_CONNECTIONS" -gt 0 ]; then
    before=$(items)
    echo "mixed run: adding items ($INGEST_CONNECTIONS connections) while searching ($CONNECTIONS connections), $DURATION"
    wrk -t1 -c"$INGEST_CONNECTIONS" -d"$DURATION" --latency --timeout "$WRK_TIMEOUT" -s "$work/ingest.lua" \
        "$BASE/v1/items" -- "$TRIO_API_KEY" "$work/item_image.b64" "$(date +%s)" >"$work/ingest.out" &
    ingest_pid=$!
    search_line=$(wrk -t"$THREADS" -c"$CONNECTIONS" -d"$DURATION" --latency --timeout "$WRK_TIMEOUT" -s "$work/post.lua" \
        "$BASE/v1/search" -- "$work/search.json" | grep '^RESULT')
    wait "$ingest_pid"
    ingest_line=$(grep '^RESULT' "$work/ingest.out")
    for pair in "search:$search_line" "ingest:$ingest_line"; do
        route=${pair%%:*}
        line=${pair#*:}
        eval "${line#RESULT }"
        printf '%-6s %-9s %10s %9s %9s %10s %8s %8s\n' mixed "$route" "$rps" "$p50_ms" "$p99_ms" \
            "$requests" "$non_2xx" "$((socket_errors + timeouts))"
    done
    # wrk counts a request cut off at the end of the run as neither 2xx nor error, so the
    # catalogue may hold a few more items than wrk saw answered.
    eval "${ingest_line#RESULT }"
    sleep 2 # requests still in flight when wrk stopped finish
    after=$(items)
    echo "items: $before before, $after after (wrk saw $((requests - non_2xx)) answered 2xx)"
    echo "RSS after the mixed run: $(rss)"
fi
echo "batch sizes and shed requests:"
curl -fsS "$BASE/metrics" | grep -E '^trio_(batch_size_(sum|count)|requests_shed_total)' || true
