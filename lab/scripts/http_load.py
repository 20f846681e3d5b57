"""A small closed-loop HTTP load driver for machines without wrk (the lent GPU machine).

Keeps CONNS requests in flight against one route for SECONDS and prints one JSON line:
requests/s, errors, latency p50/p99 in ms. Uses only the standard library plus httpx.

usage: python http_load.py URL BODY_JSON_FILE CONNS SECONDS LABEL
"""
import asyncio
import json
import sys
import time

import httpx


async def main(url, body, conns, seconds, label):
    latencies, errors = [], 0
    deadline = time.perf_counter() + seconds
    limits = httpx.Limits(max_connections=conns, max_keepalive_connections=conns)
    async with httpx.AsyncClient(limits=limits, timeout=30.0) as client:
        async def worker():
            nonlocal errors
            while time.perf_counter() < deadline:
                t = time.perf_counter()
                try:
                    r = await client.post(url, content=body, headers={"content-type": "application/json"})
                    if r.status_code != 200:
                        errors += 1
                except httpx.HTTPError:
                    errors += 1
                latencies.append((time.perf_counter() - t) * 1e3)
        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(conns)))
        elapsed = time.perf_counter() - start
    latencies.sort()
    pick = lambda q: latencies[min(len(latencies) - 1, int(q * len(latencies)))] if latencies else None
    print(json.dumps({"label": label, "requests": len(latencies), "errors": errors,
                      "requests_per_s": round(len(latencies) / elapsed, 1),
                      "p50_ms": round(pick(0.5), 2), "p99_ms": round(pick(0.99), 2)}))


if __name__ == "__main__":
    url, body_file, conns, seconds, label = sys.argv[1:6]
    asyncio.run(main(url, open(body_file, "rb").read(), int(conns), float(seconds), label))
