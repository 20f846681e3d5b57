#!/usr/bin/env python3
"""Scores `trio duplicates` and imagededup on the same planted demo copies (the folder
`cargo run -p trio-lab --example plant_duplicates` writes; lab/scripts/dup_eval.sh runs the whole measurement).

  dup_eval.py DIR --trio DUPS.json [--methods phash,cnn] [--cnn-lite0-weights PTH]

DUPS.json is `trio duplicates --json` on a database holding the demo catalogue plus
DIR/planted.jsonl. Both tools are scored the same way, on connected components of their links
(two files count as paired when some chain of reported duplicates joins them):

- planted recall: pairs inside a planted family (an original and its five copies) found;
- planted precision: among found pairs involving a planted copy, the share inside its family.
  Pairs of a copy with another render of the same emoji (the other vendor, a skin tone) are
  neither right nor wrong here and are counted apart ("same emoji");
- vendor recall: google/twitter renders of one emoji (base renders, DIR/vendor_pairs.tsv)
  found paired.

Not part of the build: runs in the imagededup virtual environment.
"""

import argparse
import itertools
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from dup_reference import UnionFind, links_of, run_cnn, run_phash  # noqa: E402


def read_tsv(path):
    with open(path) as f:
        return [
            line.rstrip("\n").split("\t")
            for line in f
            if line.strip() and not line.startswith("#")
        ]


def components(links):
    uf = UnionFind()
    for a, b in links:
        uf.union(a, b)
    return uf


def score(links, planted, vendor_pairs, emoji_of):
    uf = components(links)
    groups = uf.groups()
    found = set()
    for g in groups:
        found.update(itertools.combinations(sorted(g), 2))
    family = {}
    for original, copy, _ in planted:
        family[copy] = original
        family.setdefault(original, original)
    truth = set()
    by_family = {}
    for f, root in family.items():
        by_family.setdefault(root, []).append(f)
    for members in by_family.values():
        truth.update(itertools.combinations(sorted(members), 2))
    copies = {c for _, c, _ in planted}
    correct = same_emoji = wrong = 0
    for a, b in found:
        if a not in copies and b not in copies:
            continue
        if family.get(a) is not None and family.get(a) == family.get(b):
            correct += 1
        elif emoji_of.get(family.get(a, a)) == emoji_of.get(family.get(b, b)):
            same_emoji += 1
        else:
            wrong += 1
    recall = len(found & truth) / len(truth) if truth else 1.0
    precision = correct / (correct + wrong) if correct + wrong else 1.0
    by_transform = {}
    for original, copy, transform in planted:
        hit = tuple(sorted((original, copy))) in found
        n, h = by_transform.get(transform, (0, 0))
        by_transform[transform] = (n + 1, h + int(hit))
    vendor_hits = sum(1 for g, t in vendor_pairs if tuple(sorted((g, t))) in found)
    return {
        "planted_precision": precision,
        "planted_recall": recall,
        "correct": correct,
        "wrong": wrong,
        "same_emoji": same_emoji,
        "true_pairs": len(truth),
        "by_transform": {t: h / n for t, (n, h) in sorted(by_transform.items())},
        "vendor_recall": vendor_hits / len(vendor_pairs) if vendor_pairs else 1.0,
        "groups": len(groups),
        "largest_group": max((len(g) for g in groups), default=0),
    }


def trio_links(path, file_of):
    with open(path) as f:
        out = json.load(f)
    links = set()
    for g in out["groups"]:
        members = [file_of[m] for m in g["members"] if m in file_of]
        for a, b in zip(members, members[1:]):
            links.add(tuple(sorted((a, b))))
    return links


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("dir")
    parser.add_argument("--trio", required=True, help="`trio duplicates --json` output")
    parser.add_argument("--trio-seconds", type=float, help="how long `trio duplicates` took")
    parser.add_argument("--methods", default="phash,cnn")
    parser.add_argument("--phash-max-distance", type=int, default=10)
    parser.add_argument("--cnn-min-similarity", type=float, default=0.9)
    parser.add_argument("--cnn-lite0-weights")
    parser.add_argument("--json-out")
    parser.add_argument(
        "--cache",
        help="folder keeping each imagededup method's links and run time "
        "(imagededup_<method>.json): a later run on the same files rescores them instead of "
        "running imagededup again",
    )
    args = parser.parse_args()

    ids = read_tsv(os.path.join(args.dir, "ids.tsv"))
    file_of = {row[1]: row[0] for row in ids}
    emoji_of = {row[0]: row[2] if len(row) > 2 else row[0] for row in ids}
    planted = [tuple(r[:3]) for r in read_tsv(os.path.join(args.dir, "planted.tsv"))]
    vendor_pairs = [tuple(r[:2]) for r in read_tsv(os.path.join(args.dir, "vendor_pairs.tsv"))]
    all_dir = os.path.join(args.dir, "all")
    print(
        f"{len(os.listdir(all_dir))} images, {len(planted)} planted copies, "
        f"{len(vendor_pairs)} google/twitter pairs"
    )

    results = {}
    results["trio"] = score(trio_links(args.trio, file_of), planted, vendor_pairs, emoji_of)
    results["trio"]["seconds"] = args.trio_seconds
    for method in filter(None, args.methods.split(",")):
        cached = os.path.join(args.cache, f"imagededup_{method}.json") if args.cache else None
        if cached and os.path.exists(cached):
            with open(cached) as f:
                saved = json.load(f)
            links = {tuple(link) for link in saved["links"]}
            results[f"imagededup {method}"] = score(links, planted, vendor_pairs, emoji_of)
            results[f"imagededup {method}"]["seconds"] = saved["seconds"]
            continue
        start = time.perf_counter()
        try:
            if method == "phash":
                dups = run_phash(all_dir, args.phash_max_distance)
            elif method == "cnn":
                dups = run_cnn(all_dir, args.cnn_min_similarity, args.cnn_lite0_weights)
            else:
                sys.exit(f"unknown method {method!r}")
        except Exception as e:
            print(f"imagededup {method}: FAILED: {type(e).__name__}: {e}")
            continue
        seconds = time.perf_counter() - start
        links = links_of(dups)
        if cached:
            os.makedirs(args.cache, exist_ok=True)
            with open(cached, "w") as f:
                json.dump({"seconds": seconds, "links": sorted(links)}, f)
        results[f"imagededup {method}"] = score(links, planted, vendor_pairs, emoji_of)
        results[f"imagededup {method}"]["seconds"] = seconds

    print(
        "| tool | planted precision | planted recall | resize | crop 90% | JPEG q40 | bright +20 "
        "| flip | google↔twitter recall | copy pairs: right / wrong / same emoji | seconds |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|")
    for name, r in results.items():
        t = r["by_transform"]
        secs = f"{r['seconds']:.1f}" if r.get("seconds") is not None else "–"
        print(
            f"| {name} | {r['planted_precision']:.3f} | {r['planted_recall']:.3f} "
            f"| {t.get('resize_50', 0):.2f} | {t.get('crop_90', 0):.2f} | {t.get('jpeg_q40', 0):.2f} "
            f"| {t.get('brighten_20', 0):.2f} | {t.get('flip_h', 0):.2f} | {r['vendor_recall']:.3f} "
            f"| {r['correct']} / {r['wrong']} / {r['same_emoji']} | {secs} |"
        )
    if args.json_out:
        with open(args.json_out, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
