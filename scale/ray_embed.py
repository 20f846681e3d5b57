#!/usr/bin/env python3
"""Embeds a manifest on a Ray cluster with `trio embed`, then bulk-loads it with one
`trio ingest --features`.

The manifest is split into N deterministic shards (`trio embed --shard I/N`); each shard is one
Ray task that runs the trio binary on whichever node Ray places it, asking for one GPU when the
cluster has GPUs and one CPU otherwise. A shard whose feature file already exists is skipped, so a
re-run after a failure only does what is missing; Ray retries a task whose process or node dies
(`--retries`). Every node must see the manifest, the images and the output folder at the same
paths (a shared file system), and the trio binary (`--trio`, a path on every node, or
`--ship-trio` to send this machine's binary through Ray's runtime environment).

    python scale/ray_embed.py --manifest M.jsonl --out features/ --db catalog.trio --shards 16
    RAY_ADDRESS=head:6379 python scale/ray_embed.py ...   # a running cluster

Prints one JSON object: per-shard results, the merged errors file and the ingest report.
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

import ray


def shard_stem(index, count):
    return f"part-{index:05d}-of-{count:05d}"


@ray.remote
def embed_shard(trio, manifest, out, index, count, device, threads, extra):
    """Runs `trio embed` for one shard; raises (so Ray retries) when trio fails or is killed."""
    features = os.path.join(out, shard_stem(index, count) + ".parquet")
    if os.path.exists(features):
        return {"shard": index, "skipped": True}
    if not os.path.isabs(trio) and os.sep in trio:
        # A binary shipped in the runtime environment sits in the task's working directory;
        # the package may not keep its executable bit.
        trio = os.path.abspath(trio)
        if not os.access(trio, os.X_OK):
            os.chmod(trio, os.stat(trio).st_mode | 0o111)
    cmd = [trio, "embed", "--manifest", manifest, "--out", out,
           "--shard", f"{index}/{count}", "--device", device, "--json", "--quiet", *extra]
    # The process uses the CPUs Ray reserved for the task, no more: decode and the CPU kernels
    # (rayon) and candle's matrix products each take this many threads.
    env = {**os.environ, "RAYON_NUM_THREADS": str(threads), "CANDLE_NUM_THREADS": str(threads)}
    started = time.time()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise RuntimeError(
            f"shard {index}/{count} on {ray.util.get_node_ip_address()}: trio embed exited "
            f"{proc.returncode}: {proc.stderr.strip()[-2000:]}")
    report = json.loads(proc.stdout)
    report["shard"] = index
    report["wall_s"] = round(time.time() - started, 3)
    report["node"] = ray.get_runtime_context().get_node_id()[:12]
    return report


def merge_errors(out, count):
    """The shards' errors in manifest row order, in `out/errors.jsonl`."""
    rows = []
    for index in range(count):
        path = os.path.join(out, shard_stem(index, count) + ".errors.jsonl")
        with open(path, encoding="utf-8") as f:
            rows.extend(json.loads(line) for line in f if line.strip())
    rows.sort(key=lambda e: e["row"])
    merged = os.path.join(out, "errors.jsonl")
    with open(merged, "w", encoding="utf-8") as f:
        for e in rows:
            f.write(json.dumps(e) + "\n")
    return merged, len(rows)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--manifest", required=True, help="JSONL or CSV manifest (shared path)")
    p.add_argument("--out", required=True, help="folder for the feature files (shared path)")
    p.add_argument("--db", help="catalogue to load the features into at the end (on this machine)")
    p.add_argument("--shards", type=int, required=True, help="number of shards (tasks)")
    p.add_argument("--trio", default=shutil.which("trio") or "trio",
                   help="the trio binary: a path valid on every node")
    p.add_argument("--ship-trio", action="store_true",
                   help="send the --trio binary to the workers in Ray's runtime environment")
    p.add_argument("--address", default=os.environ.get("RAY_ADDRESS"),
                   help="Ray cluster address (default: $RAY_ADDRESS, else a local Ray)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto",
                   help="auto: cuda with one GPU per task when the cluster has GPUs, else cpu")
    p.add_argument("--retries", type=int, default=3, help="retries per task (Ray max_retries)")
    p.add_argument("--cpus-per-task", type=int, default=1,
                   help="CPUs Ray reserves for each task; trio runs that many threads")
    p.add_argument("--trio-home", default=os.environ.get("TRIO_HOME"),
                   help="TRIO_HOME on the workers (models)")
    p.add_argument("--batch-size", type=int, help="rows per tower batch")
    p.add_argument("--precision", choices=["f32", "f16"], help="vector precision in the files")
    p.add_argument("--images-root", help="folder relative image paths resolve against")
    p.add_argument("--summary",
                   help="also write the job's JSON summary to this file (Ray may print its own "
                        "notices on stdout around the summary line)")
    args = p.parse_args()
    if args.shards < 1:
        p.error("--shards must be at least 1")

    out = os.path.abspath(args.out)
    manifest = os.path.abspath(args.manifest)
    os.makedirs(out, exist_ok=True)
    env_vars = {"RAY_USAGE_STATS_ENABLED": "0"}
    if args.trio_home:
        env_vars["TRIO_HOME"] = os.path.abspath(args.trio_home)
    runtime_env = {"env_vars": env_vars}
    trio = args.trio
    if args.ship_trio:
        ship = tempfile.mkdtemp(prefix="trio-ship-")
        shipped = os.path.join(ship, "trio")
        shutil.copy2(args.trio, shipped)
        # Debug information is most of a build's size and every node downloads the package.
        if shutil.which("strip"):
            subprocess.run(["strip", shipped], check=False)
        runtime_env["working_dir"] = ship
        trio = os.path.join(".", "trio")
    ray.init(address=args.address, runtime_env=runtime_env, log_to_driver=False)

    gpus = ray.cluster_resources().get("GPU", 0)
    device = args.device
    if device == "auto":
        device = "cuda" if gpus > 0 else "cpu"
    cpus = max(1, args.cpus_per_task)
    resources = {"num_gpus": 1, "num_cpus": cpus} if device == "cuda" else {"num_cpus": cpus}
    extra = []
    if args.batch_size:
        extra += ["--batch-size", str(args.batch_size)]
    if args.precision:
        extra += ["--precision", args.precision]
    if args.images_root:
        extra += ["--images-root", os.path.abspath(args.images_root)]

    task = embed_shard.options(max_retries=args.retries, retry_exceptions=True, **resources)
    started = time.time()
    futures = [task.remote(trio, manifest, out, i, args.shards, device, cpus, extra)
               for i in range(args.shards)]
    shards = ray.get(futures)
    embed_s = time.time() - started
    errors, failed = merge_errors(out, args.shards)
    result = {"shards": shards, "device": device, "embed_s": round(embed_s, 3),
              "errors": errors, "failed_rows": failed}

    if args.db:
        cmd = [args.trio, "ingest", "--features", out, "--db", args.db, "--json", "--quiet",
               "--device", "cpu"]
        proc = subprocess.run(cmd, capture_output=True, text=True,
                              env={**os.environ, **env_vars})
        if proc.returncode != 0:
            sys.stderr.write(proc.stderr)
            sys.exit(f"trio ingest --features failed with exit {proc.returncode}")
        result["ingest"] = json.loads(proc.stdout)
    if args.summary:
        tmp = args.summary + ".tmp"
        with open(tmp, "w") as f:
            json.dump(result, f)
        os.replace(tmp, args.summary)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
