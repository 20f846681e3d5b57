#!/usr/bin/env python3
"""Reference duplicate-detection figures from imagededup, to compare with Trio's
engine::query::duplicates on the same planted copies.

Not part of the build: run it in a throwaway virtual environment outside the repository
(`pip install imagededup`; it pulls in torch and torchvision).

  dup_reference.py IMAGE_DIR PLANTED_PAIRS [--methods phash,cnn]

PLANTED_PAIRS lists one planted pair per line, `original<TAB>copy[<TAB>transform]` (file
names relative to IMAGE_DIR; lines starting with '#' are skipped), or is a JSON list of
[original, copy, transform?]. With transforms, recall is also broken down by transform.

Scoring is the same as Trio's `pair_precision_recall`: imagededup's links are grouped into
connected components and every pair inside a component counts as found; the true pairs are
every pair inside a family of planted copies (an original and all its copies).

imagededup's CNN method downloads MobileNetV3 weights from the torchvision model hub when it
is constructed; on a machine without that access it fails, and this script says so rather
than guessing.
"""

import argparse
import itertools
import json
import os
import sys
import time


def read_pairs(path):
    """[(original, copy, transform or None)]."""
    with open(path) as f:
        text = f.read()
    if text.lstrip().startswith("["):
        return [(p[0], p[1], p[2] if len(p) > 2 else None) for p in json.loads(text)]
    pairs = []
    for line in text.splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        fields = [f.strip() for f in line.split("\t")]
        pairs.append((fields[0], fields[1], fields[2] if len(fields) > 2 else None))
    return pairs


class UnionFind:
    def __init__(self):
        self.parent = {}

    def find(self, x):
        self.parent.setdefault(x, x)
        while self.parent[x] != x:
            self.parent[x] = self.parent[self.parent[x]]
            x = self.parent[x]
        return x

    def union(self, a, b):
        self.parent[self.find(a)] = self.find(b)

    def groups(self):
        out = {}
        for x in list(self.parent):
            out.setdefault(self.find(x), []).append(x)
        return [sorted(g) for g in out.values() if len(g) > 1]


def pairs_in_groups(links):
    uf = UnionFind()
    for a, b in links:
        uf.union(a, b)
    pairs = set()
    for group in uf.groups():
        pairs.update(itertools.combinations(group, 2))
    return pairs


def score(found_links, planted):
    found = pairs_in_groups(found_links)
    truth = pairs_in_groups(planted)
    correct = len(found & truth)
    precision = correct / len(found) if found else 1.0
    recall = correct / len(truth) if truth else 1.0
    return precision, recall, len(found), len(truth), correct


def links_of(duplicates):
    """imagededup's {file: [dup, ...]} (or [(dup, score), ...]) as undirected links."""
    links = set()
    for a, dups in duplicates.items():
        for d in dups:
            b = d[0] if isinstance(d, (tuple, list)) else d
            links.add(tuple(sorted((a, b))))
    return links


def import_imagededup_offline():
    """imagededup 0.3.3 builds its default MobileNetV3 (downloading its weights) when
    `imagededup.methods` is imported, as a default argument of `CNN`. Without network access the
    import fails even for PHash. Build that default network without weights instead: it is never
    used here (PHash needs no network, the CNN gets EfficientNet-Lite0 through CustomModel)."""
    import torchvision.models as tvm

    real = tvm.mobilenet_v3_small
    tvm.mobilenet_v3_small = lambda *args, **kwargs: real(weights=None)
    try:
        import imagededup.methods  # noqa: F401
    finally:
        tvm.mobilenet_v3_small = real


def run_phash(image_dir, max_distance):
    import_imagededup_offline()
    from imagededup.methods import PHash

    hasher = PHash(verbose=False)
    encodings = hasher.encode_images(image_dir=image_dir)
    return hasher.find_duplicates(
        encoding_map=encodings, max_distance_threshold=max_distance
    )


def efficientnet_lite0_model(weights_path):
    """imagededup CustomModel: EfficientNet-Lite0 (Trio's image tower) cut at global average
    pooling, from a local `efficientnet-lite0-*.pth` (needs the efficientnet_lite_pytorch
    package). A stand-in for imagededup's MobileNetV3 where its weights cannot be downloaded."""
    import torch
    from efficientnet_lite_pytorch import EfficientNet
    from imagededup.utils.models import CustomModel
    from torchvision import transforms

    net = EfficientNet.from_pretrained("efficientnet-lite0", weights_path=weights_path).eval()

    class Lite0Features(torch.nn.Module):
        def forward(self, x):
            return net._avg_pooling(net.extract_features(x)).flatten(1)

    transform = transforms.Compose(
        [
            transforms.Resize((224, 224)),
            transforms.ToTensor(),
            transforms.Normalize(mean=[0.5, 0.5, 0.5], std=[0.5, 0.5, 0.5]),
        ]
    )
    return CustomModel(name="efficientnet_lite0", model=Lite0Features(), transform=transform)


def run_cnn(image_dir, min_similarity, lite0_weights=None):
    import_imagededup_offline()
    from imagededup.methods import CNN

    if lite0_weights:
        cnn = CNN(verbose=False, model_config=efficientnet_lite0_model(lite0_weights))
    else:
        cnn = CNN(verbose=False)  # loads pretrained MobileNetV3 weights (a download)
    encodings = cnn.encode_images(image_dir=image_dir)
    return cnn.find_duplicates(
        encoding_map=encodings, min_similarity_threshold=min_similarity
    )


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("image_dir")
    parser.add_argument("planted_pairs")
    parser.add_argument("--methods", default="phash,cnn")
    parser.add_argument("--phash-max-distance", type=int, default=10)
    parser.add_argument("--cnn-min-similarity", type=float, default=0.9)
    parser.add_argument(
        "--cnn-lite0-weights",
        help="run imagededup's CNN method with EfficientNet-Lite0 from this .pth instead of "
        "its default MobileNetV3 (whose weights are downloaded at run time)",
    )
    args = parser.parse_args()

    planted = read_pairs(args.planted_pairs)
    files = set(os.listdir(args.image_dir))
    missing = sorted({f for a, b, _ in planted for f in (a, b)} - files)
    if missing:
        sys.exit(f"{len(missing)} planted files are not in {args.image_dir}: {missing[:5]}")
    print(f"{len(files)} images, {len(planted)} planted pairs")

    failed = False
    for method in args.methods.split(","):
        start = time.perf_counter()
        try:
            if method == "phash":
                dups = run_phash(args.image_dir, args.phash_max_distance)
                setting = f"max_distance_threshold={args.phash_max_distance}"
            elif method == "cnn":
                dups = run_cnn(args.image_dir, args.cnn_min_similarity, args.cnn_lite0_weights)
                model = "efficientnet_lite0" if args.cnn_lite0_weights else "mobilenet_v3_small"
                setting = f"{model}, min_similarity_threshold={args.cnn_min_similarity}"
            else:
                sys.exit(f"unknown method {method!r} (phash or cnn)")
        except Exception as e:  # report and go on with the other methods
            print(f"imagededup {method}: FAILED: {type(e).__name__}: {e}")
            failed = True
            continue
        seconds = time.perf_counter() - start
        links = links_of(dups)
        p, r, n_found, n_true, n_correct = score(links, [(a, b) for a, b, _ in planted])
        print(
            f"imagededup {method} ({setting}): precision {p:.4f}  recall {r:.4f}  "
            f"(found {n_found} pairs, {n_correct} correct, {n_true} true; {seconds:.1f} s)"
        )
        found = pairs_in_groups(links)
        transforms = sorted({t for _, _, t in planted if t})
        for t in transforms:
            of_t = [tuple(sorted((a, b))) for a, b, tt in planted if tt == t]
            hit = sum(1 for pair in of_t if pair in found)
            print(f"    recall of {t:>12}: {hit / len(of_t):.3f} ({hit}/{len(of_t)})")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
