#!/usr/bin/env python3
"""Reference label-noise figures from cleanlab, to compare with Trio's engine::query::noise.

Not part of the build: run it in a throwaway virtual environment outside the repository
(for example `python3 -m venv /work/venvs/cleanlab && /work/venvs/cleanlab/bin/pip install
cleanlab numpy`).

  score   reads given labels and out-of-fold predicted probabilities, runs cleanlab's
          `find_label_issues` with its defaults (prune_by_noise_rate), and prints how many
          issues it finds and, when the true labels are given, precision / recall / F1.
  trio    scores `trio noise` and cleanlab on the SAME out-of-fold probabilities: reads the
          file `trio noise --export-oof` wrote, the `trio noise --json` output and the true
          labels (`lab/examples/flip_labels.rs` writes them), and prints precision / recall / F1
          of both at N = number of flipped labels (lab/scripts/noise_eval.sh runs it all).
  golden  writes a small synthetic data set with cleanlab's answer, the fixture of Trio's
          test that checks its re-implementation against cleanlab.

Inputs for `score`:
  --input data.json      {"labels": [...], "probs": [[...], ...], "true_labels": [...]?}
  --labels l.npy --probs p.npy [--true-labels t.npy]
Probabilities are read as float32 (what Trio's engine holds) and computed on in float64.
"""

import argparse
import json
import sys
import time
import types

import numpy as np


def load(args):
    if args.input:
        with open(args.input) as f:
            data = json.load(f)
        labels = np.asarray(data["labels"], dtype=np.int64)
        probs = np.asarray(data["probs"], dtype=np.float32)
        truth = data.get("true_labels")
    else:
        if not (args.labels and args.probs):
            sys.exit("give --input FILE.json, or --labels L.npy and --probs P.npy")
        labels = np.load(args.labels).astype(np.int64)
        probs = np.load(args.probs).astype(np.float32)
        truth = np.load(args.true_labels) if args.true_labels else None
    truth = None if truth is None else np.asarray(truth, dtype=np.int64)
    return labels, probs.astype(np.float64), truth


def cleanlab_issues(labels, probs, stable_ties=False):
    """cleanlab's ranked issues. With `stable_ties`, numpy's argsort inside cleanlab is made
    stable: cleanlab breaks exact ties (common in `round_preserving_sum`, where equal counts
    give equal remainders) with numpy's default sort, which on CPUs with AVX2/AVX-512 is a
    SIMD sort whose tie order is not the index order, so its answer can change with the CPU.
    Trio breaks ties by index, i.e. like the stable variant."""
    import cleanlab.filter
    import cleanlab.internal.util

    modules = [cleanlab.internal.util, cleanlab.filter]
    saved = [m.np for m in modules]
    if stable_ties:
        stable_np = types.SimpleNamespace(
            **{k: getattr(np, k) for k in dir(np) if not k.startswith("__")}
        )
        stable_np.argsort = lambda a, *args, **kw: np.argsort(a, kind="stable")
        for m in modules:
            m.np = stable_np
    try:
        # n_jobs=1: the same answer as in parallel, without process start-up noise.
        return cleanlab.filter.find_label_issues(
            labels, probs, return_indices_ranked_by="self_confidence", n_jobs=1
        )
    finally:
        for m, old in zip(modules, saved):
            m.np = old


def scores(found, truly_wrong):
    found, truly_wrong = set(map(int, found)), set(map(int, truly_wrong))
    correct = len(found & truly_wrong)
    precision = correct / len(found) if found else 1.0
    recall = correct / len(truly_wrong) if truly_wrong else 1.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return precision, recall, f1


def cmd_score(args):
    import cleanlab

    labels, probs, truth = load(args)
    issues = cleanlab_issues(labels, probs)
    stable = cleanlab_issues(labels, probs, stable_ties=True)
    print(f"cleanlab {cleanlab.__version__}: {len(labels)} items, {probs.shape[1]} classes")
    print(f"issues found: {len(issues)}")
    if list(stable) != list(issues):
        diff = sorted(set(map(int, issues)) ^ set(map(int, stable)))
        print(f"  with ties broken by index (as Trio does): {len(stable)}; differing items {diff}")
    if truth is not None:
        wrong = np.flatnonzero(truth != labels)
        p, r, f1 = scores(issues, wrong)
        print(f"mislabelled: {len(wrong)}")
        print(f"precision {p:.4f}  recall {r:.4f}  F1 {f1:.4f}")
        top = issues[: len(wrong)]
        p_at, _, _ = scores(top, wrong)
        print(f"precision at N={len(wrong)} (top of the ranked issues): {p_at:.4f}")
    if args.issues_out:
        with open(args.issues_out, "w") as f:
            json.dump([int(i) for i in issues], f)


def prf(found, wrong):
    found, wrong = set(found), set(wrong)
    hit = len(found & wrong)
    p = hit / len(found) if found else 1.0
    r = hit / len(wrong) if wrong else 1.0
    return p, r, (2 * p * r / (p + r) if p + r else 0.0), len(found)


def cmd_trio(args):
    import cleanlab

    with open(args.oof) as f:
        oof = json.load(f)
    with open(args.truth) as f:
        truth = json.load(f)["true_labels"]
    with open(args.issues) as f:
        noise = json.load(f)
    names = oof["label_names"]
    index = {n: i for i, n in enumerate(names)}
    labels = np.asarray(oof["labels"], dtype=np.int64)
    probs = np.asarray(oof["probs"], dtype=np.float32).astype(np.float64)
    ids = oof["ids"]
    wrong = [i for i, id_ in enumerate(ids) if index.get(truth[id_], -1) != labels[i]]
    n = len(wrong)
    position = {id_: i for i, id_ in enumerate(ids)}
    trio_ranked = [position[x["id"]] for x in noise["issues"] if x["id"] in position]
    rows = []
    start = time.perf_counter()
    cl = cleanlab_issues(labels, probs)
    cl_seconds = time.perf_counter() - start
    rows.append((f"trio noise (top N of {noise['flagged']} flagged)", prf(trio_ranked[:n], wrong)))
    rows.append((f"cleanlab {cleanlab.__version__} find_label_issues (all it flags)", prf(cl, wrong)))
    rows.append(("cleanlab, top N by self-confidence", prf(cl[:n], wrong)))
    print(f"{len(ids)} items, {probs.shape[1]} classes, {n} labels flipped (N = {n}); "
          f"cleanlab {cl_seconds:.2f} s")
    print("| method | flagged | precision | recall | F1 |")
    print("|---|---:|---:|---:|---:|")
    for name, (p, r, f1, k) in rows:
        print(f"| {name} | {k} | {p:.3f} | {r:.3f} | {f1:.3f} |")
    if args.json_out:
        with open(args.json_out, "w") as f:
            json.dump({name: dict(zip(["precision", "recall", "f1", "flagged"], v))
                       for name, v in rows}, f, indent=1)


def cmd_golden(args):
    """A small, deliberately confusable data set: 20% of labels flipped, probabilities from
    a noisy softmax that leans towards each item's true class, stored as float32."""
    import cleanlab

    rng = np.random.default_rng(args.seed)
    n, k = args.n, args.classes
    true_labels = rng.integers(0, k, size=n)
    labels = true_labels.copy()
    flipped = rng.choice(n, size=n // 5, replace=False)
    labels[flipped] = (true_labels[flipped] + rng.integers(1, k, size=len(flipped))) % k
    logits = rng.normal(0.0, 1.0, size=(n, k))
    logits[np.arange(n), true_labels] += rng.uniform(0.5, 3.0, size=n)
    # Neighbouring classes are confused more often.
    logits[np.arange(n), (true_labels + 1) % k] += 0.7
    probs = np.exp(logits)
    probs = (probs / probs.sum(axis=1, keepdims=True)).astype(np.float32)
    probs64 = probs.astype(np.float64)
    issues = cleanlab_issues(labels, probs64)
    stable = cleanlab_issues(labels, probs64, stable_ties=True)
    out = {
        "produced_by": (
            f"lab/reference/noise_reference.py golden --seed {args.seed} --n {n} --classes {k}, "
            f"cleanlab {cleanlab.__version__}, numpy {np.__version__}"
        ),
        "labels": labels.tolist(),
        "true_labels": true_labels.tolist(),
        # float32 values written exactly (as the float64 they widen to).
        "probs": probs64.tolist(),
        "cleanlab_issues_ranked": [int(i) for i in issues],
        "cleanlab_stable_ties_issues_ranked": [int(i) for i in stable],
    }
    with open(args.out, "w") as f:
        json.dump(out, f)
    print(
        f"wrote {args.out}: {n} items, {len(issues)} cleanlab issues "
        f"({len(stable)} with ties broken by index)"
    )


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    s = sub.add_parser("score", help="cleanlab's issues and their precision/recall")
    s.add_argument("--input")
    s.add_argument("--labels")
    s.add_argument("--probs")
    s.add_argument("--true-labels")
    s.add_argument("--issues-out", help="write cleanlab's ranked issue indices here (JSON)")
    s.set_defaults(func=cmd_score)
    t = sub.add_parser("trio", help="score `trio noise` and cleanlab on the same OOF probabilities")
    t.add_argument("--oof", required=True, help="the file `trio noise --export-oof` wrote")
    t.add_argument("--issues", required=True, help="`trio noise --json --top N` output")
    t.add_argument("--truth", required=True, help="true labels: flip_labels' .truth.json")
    t.add_argument("--json-out")
    t.set_defaults(func=cmd_trio)
    g = sub.add_parser("golden", help="write the synthetic fixture with cleanlab's answer")
    g.add_argument("out")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--n", type=int, default=400)
    g.add_argument("--classes", type=int, default=5)
    g.set_defaults(func=cmd_golden)
    args = parser.parse_args()
    args.func(args)


if __name__ == "__main__":
    main()
