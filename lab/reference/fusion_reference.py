"""Independent check of what plain fusion of the frozen features gives on the demo.

Image features from the `efficientnet_lite_pytorch` package on the same Lite0 checkpoint and
crop as Trio (lab/reference/image_reference.py), text from sentence-transformers' MiniLM on the
same folder; then, per seed, an unseen-emoji split per class (10% validation, 10% test groups),
20% of training/validation labels flipped, and one-hidden-layer classifiers on image, text,
both concatenated (early fusion), and the sum of the image and text log-probabilities (late
fusion), each epoch chosen on validation. Prints test top-1 per seed and the means.

    trio items --db demo.trio list --limit 100000 --json > items.json
    TRIO_HOME=... /path/to/venv/bin/python lab/reference/fusion_reference.py items.json --seeds 1

Needs torch, pillow, numpy, sentence-transformers and `efficientnet_lite_pytorch` (--no-deps).
`--drop-description 0.34` drops descriptions as Trio's protocol does (from any item, one draw
for all seeds); without it text scores higher. The last column pools early fusion with both
single-modality classifiers, as Trio's fused model does by default.
"""

import argparse
import json
import os

import numpy as np
import torch
import torch.nn as nn
from PIL import Image

HOME = os.environ.get("TRIO_HOME", os.path.expanduser("~/.cache/trio"))


def image_features(items, mode):
    from efficientnet_lite_pytorch import EfficientNet

    path = f"{HOME}/models/efficientnet-lite0/efficientnet-lite0.pth"
    model = EfficientNet.from_pretrained("efficientnet-lite0", weights_path=path).eval()
    size = 224

    def load(p):
        im = Image.open(p).convert("RGBA")
        white = Image.new("RGBA", im.size, (255, 255, 255, 255))
        im = Image.alpha_composite(white, im).convert("RGB")
        w, h = im.size
        if mode == "crop":
            side = min(max(int(min(w, h) * size / (size + 32)), 1), min(w, h))
            left, top = (w - side + 1) // 2, (h - side + 1) // 2
            im = im.crop((left, top, left + side, top + side))
        im = im.resize((size, size), Image.BICUBIC)
        a = (np.asarray(im, dtype=np.float32) - 127.0) / 128.0
        return torch.from_numpy(a.transpose(2, 0, 1).copy())

    out = np.zeros((len(items), 1280), np.float32)
    rows = [i for i, it in enumerate(items) if it.get("image_path")]
    for s in range(0, len(rows), 64):
        chunk = rows[s : s + 64]
        x = torch.stack([load(items[i]["image_path"]) for i in chunk])
        with torch.no_grad():
            out[chunk] = model.extract_features(x).mean(dim=(2, 3)).numpy()
    return out


def text_features(items, drop_description):
    from sentence_transformers import SentenceTransformer

    m = SentenceTransformer(f"{HOME}/models/all-MiniLM-L6-v2", device="cpu")
    enc = lambda key: m.encode([it.get(key) or "" for it in items], normalize_embeddings=True)
    desc = enc("description")
    # The protocol drops descriptions from the catalogue; here from any item, one fixed draw.
    desc[np.random.default_rng(123).random(len(items)) < drop_description] = 0
    return np.concatenate([enc("title"), desc], 1).astype(np.float32)


def split(groups, lab, classes, seed):
    rng = np.random.default_rng(seed)
    part = np.zeros(len(lab), int)  # 0 train, 1 validation, 2 test
    for c in range(classes):
        gs = sorted(set(groups[lab == c]))
        rng.shuffle(gs)
        n = max(2, round(len(gs) * 0.2)) if len(gs) >= 3 else 0
        for j, g in enumerate(gs[:n]):
            part[(groups == g) & (lab == c)] = 1 if j % 2 == 0 else 2
    noisy = lab.copy()
    flip = (part < 2) & (rng.random(len(lab)) < 0.2)
    noisy[flip] = (lab[flip] + rng.integers(1, classes, flip.sum())) % classes
    return part, noisy


def train(x, y, part, classes, epochs=25, seed=0):
    """Log-probabilities of every row at the epoch with the best validation top-1."""
    torch.manual_seed(seed)
    x = torch.tensor(x)
    x = (x - x[part == 0].mean(0)) / (x[part == 0].std(0) + 1e-6)
    net = nn.Sequential(
        nn.Dropout(0.2), nn.Linear(x.shape[1], 256), nn.ReLU(), nn.Dropout(0.5), nn.Linear(256, classes)
    )
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3, weight_decay=1e-4)
    train_rows, yt = np.where(part == 0)[0], torch.tensor(y)
    best = (-1.0, None)
    for ep in range(epochs):
        net.train()
        perm = np.random.default_rng(ep + seed).permutation(train_rows)
        for s in range(0, len(perm), 128):
            b = perm[s : s + 128]
            opt.zero_grad()
            nn.functional.cross_entropy(net(x[b]), yt[b]).backward()
            opt.step()
        net.eval()
        with torch.no_grad():
            logits = net(x)
        val = (logits[part == 1].argmax(1) == yt[part == 1]).float().mean().item()
        if val > best[0]:
            best = (val, torch.log_softmax(logits, 1))
    return best[1]


def record(results, seed, row):
    """Prints one seed's test top-1 per classifier and keeps them for the means."""
    print(seed, {k: round(float(v), 1) for k, v in row.items()}, flush=True)
    for k, v in row.items():
        results.setdefault(k, []).append(v)


def print_means(results):
    print({k: round(float(np.mean(v)), 1) for k, v in results.items()})


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("items", help="`trio items list --json` output")
    ap.add_argument("--seeds", type=int, default=1)
    ap.add_argument("--image-mode", choices=["crop", "full"], default="crop")
    ap.add_argument("--drop-description", type=float, default=0.0, help="e.g. 0.34, as the protocol")
    args = ap.parse_args()
    torch.set_num_threads(1)
    items = json.load(open(args.items))["items"]
    labels = sorted({it["label"] for it in items})
    lab = np.array([labels.index(it["label"]) for it in items])
    groups = np.array([it["metadata"]["emoji_key"] for it in items])
    img = image_features(items, args.image_mode)
    txt = text_features(items, args.drop_description)
    results = {}
    for seed in range(args.seeds):
        part, noisy = split(groups, lab, len(labels), seed)
        acc = lambda lp: 100 * (lp[part == 2].argmax(1).numpy() == lab[part == 2]).mean()
        lp_text = train(txt, noisy, part, len(labels))
        lp_image = train(img, noisy, part, len(labels))
        lp_early = train(np.concatenate([img, txt * 3], 1), noisy, part, len(labels))
        row = {
            "text": acc(lp_text),
            "image": acc(lp_image),
            "late fusion": acc(lp_image + lp_text),
            "early fusion": acc(lp_early),
            # Trio's default: the fused network pooled with both single-modality models.
            "early fusion + text + image": acc(lp_early + lp_text + lp_image),
        }
        record(results, seed, row)
    print_means(results)


if __name__ == "__main__":
    main()
