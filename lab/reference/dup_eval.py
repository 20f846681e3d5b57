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
import hashlib
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


def file_digests(all_dir):
    """sha256 of each file's bytes: byte-identical renders of two emoji are genuine duplicates."""
    out = {}
    for name in os.listdir(all_dir):
        with open(os.path.join(all_dir, name), "rb") as f:
            out[name] = hashlib.sha256(f.read()).hexdigest()
    return out


class Truth:
    """What each file is: its planted family, its render (the emoji and skin tone it shows,
    whichever vendor drew it) and its bytes."""

    def __init__(self, ids, planted, digests):
        self.family = {}
        for original, copy, _ in planted:
            self.family[copy] = original
            self.family.setdefault(original, original)
        self.id_of = {row[0]: row[1] for row in ids}
        self.digest = digests
        self.copies = {c for _, c, _ in planted}

    def render(self, f):
        item_id = self.id_of.get(self.family.get(f, f), f)
        return item_id.split(":", 1)[1] if ":" in item_id else item_id

    def verdict(self, a, b):
        """right: one planted family, or the same bytes; neutral: two vendors' renders of one
        emoji (a different drawing of the same thing); wrong: anything else."""
        fa, fb = self.family.get(a), self.family.get(b)
        if fa is not None and fa == fb:
            return "right"
        da, db = self.digest.get(a), self.digest.get(b)
        if da is not None and da == db:
            return "right"
        if self.render(a) == self.render(b):
            return "neutral"
        return "wrong"


def score(links, planted, vendor_pairs, truth):
    """Every pair a tool reports (inside one connected component of its links) is judged."""
    groups = components(links).groups()
    found = set()
    for g in groups:
        found.update(itertools.combinations(sorted(g), 2))
    by_family = {}
    for f, root in truth.family.items():
        by_family.setdefault(root, []).append(f)
    planted_pairs = set()
    for members in by_family.values():
        planted_pairs.update(itertools.combinations(sorted(members), 2))
    counts = {"right": 0, "neutral": 0, "wrong": 0}
    for a, b in found:
        counts[truth.verdict(a, b)] += 1
    judged = counts["right"] + counts["wrong"]
    by_transform = {}
    for original, copy, transform in planted:
        hit = tuple(sorted((original, copy))) in found
        n, h = by_transform.get(transform, (0, 0))
        by_transform[transform] = (n + 1, h + int(hit))
    vendor_hits = sum(1 for g, t in vendor_pairs if tuple(sorted((g, t))) in found)
    return {
        "precision": counts["right"] / judged if judged else 1.0,
        "planted_recall": len(found & planted_pairs) / len(planted_pairs) if planted_pairs else 1.0,
        "right": counts["right"],
        "neutral": counts["neutral"],
        "wrong": counts["wrong"],
        "planted_pairs": len(planted_pairs),
        "by_transform": {t: h / n for t, (n, h) in sorted(by_transform.items())},
        "vendor_recall": vendor_hits / len(vendor_pairs) if vendor_pairs else 1.0,
        "groups": len(groups),
        "largest_group": max((len(g) for g in groups), default=0),
    }


def score_clean(links, truth, items):
    """Groups on the catalogue without planted copies: a group holding a wrong pair is a false
    alarm; one of byte-identical files is a genuine duplicate; the rest join vendor renders of
    one emoji."""
    links = {(a, b) for a, b in links if a not in truth.copies and b not in truth.copies}
    groups = components(links).groups()
    false_alarms = genuine = neutral = 0
    for g in groups:
        verdicts = {truth.verdict(a, b) for a, b in itertools.combinations(g, 2)}
        if "wrong" in verdicts:
            false_alarms += 1
        elif verdicts == {"right"}:
            genuine += 1
        else:
            neutral += 1
    return {
        "clean_groups": len(groups),
        "false_alarm_groups": false_alarms,
        "false_alarms_per_1000": 1000 * false_alarms / items if items else 0.0,
        "genuine_groups": genuine,
        "neutral_groups": neutral,
    }


def score_relisting(links, vendor_pairs, truth):
    """Re-listings on the catalogue without copies: a google and a twitter render of one emoji
    under the same title are one thing listed twice (right), as are byte-identical files; any
    other pair is wrong."""
    groups = components(links).groups()
    found = set()
    for g in groups:
        found.update(itertools.combinations(sorted(g), 2))
    right = sum(1 for a, b in found if truth.verdict(a, b) != "wrong")
    vendor_hits = sum(1 for g, t in vendor_pairs if tuple(sorted((g, t))) in found)
    return {
        "relisting_precision": right / len(found) if found else 1.0,
        "relisting_recall": vendor_hits / len(vendor_pairs) if vendor_pairs else 1.0,
        "relisting_pairs": len(found),
        "relisting_wrong": len(found) - right,
        "relisting_groups": len(groups),
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
    parser.add_argument(
        "--trio-clean",
        help="`trio duplicates --json` on the demo catalogue without the planted copies",
    )
    parser.add_argument(
        "--trio-relisting",
        help="`trio duplicates --space fused --json` on the demo catalogue without copies: "
        "scored as re-listings (the two vendors' renders of one emoji)",
    )
    parser.add_argument("--trio-seconds", type=float, help="how long `trio duplicates` took")
    parser.add_argument("--label", default="trio", help="the name of Trio's row")
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
    planted = [tuple(r[:3]) for r in read_tsv(os.path.join(args.dir, "planted.tsv"))]
    vendor_pairs = [tuple(r[:2]) for r in read_tsv(os.path.join(args.dir, "vendor_pairs.tsv"))]
    all_dir = os.path.join(args.dir, "all")
    truth = Truth(ids, planted, file_digests(all_dir))
    originals = len(ids) - len(planted)
    print(
        f"{len(os.listdir(all_dir))} images ({originals} without the copies), "
        f"{len(planted)} planted copies, {len(vendor_pairs)} google/twitter pairs"
    )

    results = {}
    results[args.label] = score(trio_links(args.trio, file_of), planted, vendor_pairs, truth)
    results[args.label]["seconds"] = args.trio_seconds
    if args.trio_clean:
        results[args.label].update(score_clean(trio_links(args.trio_clean, file_of), truth, originals))
    if args.trio_relisting:
        links = {
            (a, b)
            for a, b in trio_links(args.trio_relisting, file_of)
            if a not in truth.copies and b not in truth.copies
        }
        relisting = score_relisting(links, vendor_pairs, truth)
        results[args.label].update(relisting)
        print(
            "re-listings (fused space, catalogue without copies): "
            f"precision {relisting['relisting_precision']:.3f}, "
            f"recall of the {len(vendor_pairs)} google/twitter pairs "
            f"{relisting['relisting_recall']:.3f}, {relisting['relisting_pairs']} pairs "
            f"({relisting['relisting_wrong']} wrong) in {relisting['relisting_groups']} groups"
        )
    for method in filter(None, args.methods.split(",")):
        name = f"imagededup {method}"
        cached = os.path.join(args.cache, f"imagededup_{method}.json") if args.cache else None
        if cached and os.path.exists(cached):
            with open(cached) as f:
                saved = json.load(f)
            links, seconds = {tuple(link) for link in saved["links"]}, saved["seconds"]
        else:
            start = time.perf_counter()
            try:
                if method == "phash":
                    dups = run_phash(all_dir, args.phash_max_distance)
                elif method == "cnn":
                    dups = run_cnn(all_dir, args.cnn_min_similarity, args.cnn_lite0_weights)
                else:
                    sys.exit(f"unknown method {method!r}")
            except Exception as e:
                print(f"{name}: FAILED: {type(e).__name__}: {e}")
                continue
            seconds = time.perf_counter() - start
            links = links_of(dups)
            if cached:
                os.makedirs(args.cache, exist_ok=True)
                with open(cached, "w") as f:
                    json.dump({"seconds": seconds, "links": sorted(links)}, f)
        results[name] = score(links, planted, vendor_pairs, truth)
        results[name]["seconds"] = seconds
        # imagededup decides each pair on its own, so its links among the originals are what
        # it reports on the catalogue without copies.
        results[name].update(score_clean(links, truth, originals))

    print(
        "| tool | precision (all pairs) | planted recall | resize | crop 90% | JPEG q40 | bright +20 "
        "| flip | pairs right / neutral / wrong | false-alarm groups without copies (per 1,000) "
        "| google↔twitter recall | seconds |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|")
    for name, r in results.items():
        t = r["by_transform"]
        secs = f"{r['seconds']:.1f}" if r.get("seconds") is not None else "–"
        clean = (
            f"{r['false_alarm_groups']} ({r['false_alarms_per_1000']:.2f}) of {r['clean_groups']}"
            if "clean_groups" in r
            else "–"
        )
        print(
            f"| {name} | {r['precision']:.3f} | {r['planted_recall']:.3f} "
            f"| {t.get('resize_50', 0):.2f} | {t.get('crop_90', 0):.2f} | {t.get('jpeg_q40', 0):.2f} "
            f"| {t.get('brighten_20', 0):.2f} | {t.get('flip_h', 0):.2f} "
            f"| {r['right']} / {r['neutral']} / {r['wrong']} | {clean} "
            f"| {r['vendor_recall']:.3f} | {secs} |"
        )
    if args.json_out:
        with open(args.json_out, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
