"""One line of scale/bench.sh: a Ray job's output (JSON) summarised.

    python scale/bench_summary.py JOB.json NODES WALL_S ROWS
"""

import json
import sys

job = json.load(open(sys.argv[1]))
nodes, wall, rows = sys.argv[2], float(sys.argv[3]), int(sys.argv[4])
shards = job["shards"]
times = [s["times"] for s in shards]
load = job["ingest"]["times"]
startup = sum(s["wall_s"] - t["total_s"] for s, t in zip(shards, times)) / len(shards)
towers = sum(t["image_tower_s"] + t["text_tower_s"] for t in times) / len(times)
print(f"ray job, {nodes} node(s) x 1 CPU: {rows} rows in {wall:.1f} s = {rows / wall:.1f} rows/s "
      f"(embed {job['embed_s']:.1f} s, load {load['total_s']:.2f} s of which index "
      f"{load['index_s']:.2f} s; per shard of {rows // len(shards)} rows: start-up, fingerprint "
      f"and model load {startup:.2f} s, towers {towers:.2f} s)")
