#!/usr/bin/env python3
"""hnswlib reference for benches/index.rs: the same vectors, queries and ground truth, measured
the same way, so Trio's HNSW figures have a yardstick from the same run on the same machine.

The Rust bench writes base.npy, queries.npy (float32, unit rows) and truth.npy (int64 ids of the
exact top-k) to a folder and runs this script with a Python that has `hnswlib` and `numpy`
(a throwaway venv, e.g. `python3 -m venv /work/venvs/hnsw && /work/venvs/hnsw/bin/pip install
hnswlib numpy`). It prints one JSON object on stdout.

Usage: bench_index_reference.py DIR --m 16 --ef-construction 100 --ef 16,32,64 --threads 1,2
       [--rounds R] [--index-cache FILE]

--rounds R measures every ef R times and keeps each figure's best (other load on a shared machine
only ever lowers a figure). --index-cache FILE loads the index from FILE when it exists (no build
is then measured) and otherwise saves it there after building.
"""

import argparse
import json
import os
import resource
import time

import hnswlib
import numpy as np


def recall_at_k(found, truth, k):
    hits = 0
    for row_found, row_truth in zip(found, truth):
        hits += len(set(row_found[:k].tolist()) & set(row_truth[:k].tolist()))
    return hits / (len(truth) * k)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("dir")
    parser.add_argument("--m", type=int, default=16)
    parser.add_argument("--ef-construction", type=int, default=100)
    parser.add_argument("--ef", default="16,32,64,128")
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--build-threads", type=int, default=2)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--index-cache", default=None)
    args = parser.parse_args()

    base = np.load(f"{args.dir}/base.npy")
    queries = np.load(f"{args.dir}/queries.npy")
    truth = np.load(f"{args.dir}/truth.npy")
    n, dim = base.shape
    k = args.k

    index = hnswlib.Index(space="ip", dim=dim)
    build_s = build_cpu_s = None
    if args.index_cache and os.path.exists(args.index_cache):
        index.load_index(args.index_cache, max_elements=n)
    else:
        index.init_index(max_elements=n, ef_construction=args.ef_construction, M=args.m)
        index.set_num_threads(args.build_threads)
        start = time.perf_counter()
        cpu = time.process_time()
        index.add_items(base, np.arange(n))
        build_s = time.perf_counter() - start
        build_cpu_s = time.process_time() - cpu
        if args.index_cache:
            index.save_index(args.index_cache)

    rows = []
    for ef in [int(x) for x in args.ef.split(",")]:
        index.set_ef(max(ef, k))
        row = {"ef": ef, "qps": {}, "qps_cpu": {}}
        for _ in range(max(args.rounds, 1)):
            # Latency: one query per call on one thread (includes a few microseconds of Python
            # call overhead per query).
            index.set_num_threads(1)
            latencies = []
            for q in queries:
                t = time.perf_counter()
                index.knn_query(q, k=k)
                latencies.append(time.perf_counter() - t)
            p50 = float(np.percentile(latencies, 50) * 1e6)
            p99 = float(np.percentile(latencies, 99) * 1e6)
            # Throughput and recall: all queries in one call, spread over `threads` threads, so
            # no Python overhead is counted.
            for threads in [int(x) for x in args.threads.split(",")]:
                index.set_num_threads(threads)
                start = time.perf_counter()
                cpu = time.thread_time()
                process_cpu = time.process_time()
                found, _ = index.knn_query(queries, k=k)
                qps = len(queries) / (time.perf_counter() - start)
                row["qps"][str(threads)] = max(qps, row["qps"].get(str(threads), 0.0))
                if threads > 1:
                    # Per CPU-second of all threads: what the threads cost each other.
                    per_cpu = len(queries) / (time.process_time() - process_cpu)
                    row["qps_cpu"][str(threads)] = max(
                        per_cpu, row["qps_cpu"].get(str(threads), 0.0)
                    )
                if threads == 1:
                    # hnswlib runs a one-thread query batch on the calling thread: its CPU
                    # time is immune to other load on a shared machine.
                    cpu_qps = len(queries) / (time.thread_time() - cpu)
                    if cpu_qps > row.get("qps_cpu_1", 0.0):
                        row["qps_cpu_1"] = cpu_qps
                        row["p50_us"], row["p99_us"] = p50, p99
            if "p50_us" not in row:
                row["p50_us"], row["p99_us"] = p50, p99
        row["recall"] = recall_at_k(found, truth, k)
        rows.append(row)

    print(
        json.dumps(
            {
                "library": f"hnswlib {getattr(hnswlib, '__version__', '0.8.0')}",
                "n": n,
                "dim": dim,
                "m": args.m,
                "ef_construction": args.ef_construction,
                "build_threads": args.build_threads,
                "build_s": build_s,
                "build_cpu_s": build_cpu_s,
                "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                "rows": rows,
            }
        )
    )


if __name__ == "__main__":
    main()
