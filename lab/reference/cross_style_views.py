"""Does a more style-robust image expert widen the fused model's lead on the cross-style protocol?

A PyTorch replica of Trio's fused model (one expert per input: image, title, description; each
a Linear+ReLU+dropout layer and a head, trained on its own rows; the prediction is the sum of
the text experts' log-probabilities and 0.5 × the image expert's) on the features Trio stored,
under the cross-style protocol: split per class by emoji (20% held out, half validation, half
test), training and validation on Google's renders only, 20% of their labels flipped, 34% of
their descriptions and 2% of their titles dropped, the test on Twitter's renders of the unseen
test emoji. It reports each variant on the Twitter renders of the validation emoji ("val-x",
what settings may be chosen on) and on the test:

- plain: the stored features only;
- augmented: `--views` augmented views of every Google image (random crop, flip, colour
  jitter, greyscale, blur) whose Lite0 features (the `efficientnet_lite_pytorch` port on the
  same checkpoint) stand in for the plain view, one drawn per item per epoch;
- test-time: the image expert's log-probabilities averaged over the plain view, its mirror
  image, the uncropped image and a 75% centre crop;
- both.

    trio items export --db demo.trio --out feats/
    TRIO_HOME=... /path/to/venv/bin/python lab/reference/cross_style_views.py feats/ --seeds 5

Needs torch, pillow, numpy, pyarrow and `efficientnet_lite_pytorch` (--no-deps). The view
features are cached next to the Parquet files (`views-*.npy`); the first run computes them
(about 22,000 images through Lite0).
"""

import argparse
import contextlib
import json
import os
import random
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image, ImageEnhance, ImageFilter

HOME = Path(os.environ.get("TRIO_HOME", Path.home() / ".cache" / "trio"))
TRAIN_STYLE = "google"


def load_catalogue(folder):
    table = pa.concat_tables(pq.read_table(p) for p in sorted(folder.glob("*.parquet")))
    rows = table.to_pylist()
    meta = [json.loads(r["metadata"]) for r in rows]
    vec = lambda name, width: np.array(
        [r[name] if r[name] is not None else [0.0] * width for r in rows], dtype=np.float32
    )
    return {
        "paths": [r["image_path"] for r in rows],
        "labels": [r["label"] for r in rows],
        "groups": [m["emoji_key"] for m in meta],
        "styles": [m["vendor"] for m in meta],
        "image": vec("image_vector", 1280),
        "title": vec("title_vector", 384),
        "description": vec("description_vector", 384),
        "has_title": np.array([r["has_title"] for r in rows]),
        "has_description": np.array([r["has_description"] for r in rows]),
    }


def open_image(path):
    im = Image.open(path).convert("RGBA")
    white = Image.new("RGBA", im.size, (255, 255, 255, 255))
    return Image.alpha_composite(white, im).convert("RGB")


def eval_view(im, size=224):
    """Trio's preprocessing: central square of side short·size/(size+32), bicubic to size."""
    w, h = im.size
    side = min(max(int(min(w, h) * size / (size + 32)), 1), min(w, h))
    left, top = (w - side + 1) // 2, (h - side + 1) // 2
    return im.crop((left, top, left + side, top + side)).resize((size, size), Image.BICUBIC)


def augmented_view(im, rng):
    w, h = im.size
    area, ratio = rng.uniform(0.55, 1.0), np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3)))
    cw, ch = min(w, int(round(w * np.sqrt(area * ratio)))), min(h, int(round(h * np.sqrt(area / ratio))))
    left, top = rng.randint(0, w - cw), rng.randint(0, h - ch)
    im = im.crop((left, top, left + cw, top + ch)).resize((224, 224), Image.BICUBIC)
    if rng.random() < 0.5:
        im = im.transpose(Image.FLIP_LEFT_RIGHT)
    im = ImageEnhance.Brightness(im).enhance(rng.uniform(0.7, 1.3))
    im = ImageEnhance.Contrast(im).enhance(rng.uniform(0.7, 1.3))
    im = ImageEnhance.Color(im).enhance(rng.uniform(0.6, 1.4))
    if rng.random() < 0.8:
        hsv = np.asarray(im.convert("HSV")).copy()
        hsv[..., 0] = (hsv[..., 0].astype(int) + int(rng.uniform(-0.08, 0.08) * 255)) % 256
        im = Image.fromarray(hsv, "HSV").convert("RGB")
    if rng.random() < 0.1:
        im = im.convert("L").convert("RGB")
    if rng.random() < 0.4:
        im = im.filter(ImageFilter.GaussianBlur(rng.uniform(0.5, 3.0)))
    return im


def test_views(im):
    plain = eval_view(im)
    w = im.size[0]
    s = int(w * 0.75)
    o = (w - s) // 2
    return [
        plain.transpose(Image.FLIP_LEFT_RIGHT),
        im.resize((224, 224), Image.BICUBIC),
        im.crop((o, o, o + s, o + s)).resize((224, 224), Image.BICUBIC),
    ]


def lite0():
    from efficientnet_lite_pytorch import EfficientNet

    with contextlib.redirect_stdout(sys.stderr):
        model = EfficientNet.from_pretrained(
            "efficientnet-lite0",
            weights_path=str(HOME / "models" / "efficientnet-lite0" / "efficientnet-lite0.pth"),
        )
    model.eval()

    def features(images):
        a = np.stack([(np.asarray(i, dtype=np.float32) - 127.0) / 128.0 for i in images])
        with torch.no_grad():
            x = torch.from_numpy(a.transpose(0, 3, 1, 2).copy())
            return model.extract_features(x).mean(dim=(2, 3)).numpy()

    return features


def view_features(cat, rows, make_views, count, cache):
    """Features of `count` views of each image in `rows`; rows not listed keep zeros."""
    if cache.exists():
        return np.load(cache)
    features = lite0()
    out = np.zeros((count, len(cat["paths"]), 1280), np.float32)
    for start in range(0, len(rows), 32):
        chunk = rows[start : start + 32]
        views = [make_views(open_image(cat["paths"][i])) for i in chunk]
        for k in range(count):
            out[k, chunk] = features([v[k] for v in views])
        print(f"{cache.name}: {start + len(chunk)}/{len(rows)}", file=sys.stderr, flush=True)
    np.save(cache, out)
    return out


def split(cat, y, seed, holdout=0.2):
    rng = random.Random(seed)
    by_class = {}
    for i, g in enumerate(cat["groups"]):
        by_class.setdefault(y[i], {}).setdefault(g, []).append(i)
    train, val, test = [], [], []
    for _, groups in sorted(by_class.items()):
        keys = sorted(groups)
        rng.shuffle(keys)
        held = max(2, int(round(len(keys) * holdout))) if len(keys) >= 3 else 0
        nv = held // 2
        for n, k in enumerate(keys):
            (val if n < nv else test if n < held else train).extend(groups[k])
    own = lambda rows: [i for i in rows if cat["styles"][i] == TRAIN_STYLE]
    other = lambda rows: [i for i in rows if cat["styles"][i] != TRAIN_STYLE]
    return own(train), own(val), other(val), other(test)


def degrade(y, has_title, has_description, rows, seed, classes):
    """20% symmetric label noise, 34% of descriptions and 2% of titles dropped, on `rows`."""
    rng = np.random.RandomState(seed + 7)
    y, ht, hd = y.copy(), has_title.copy(), has_description.copy()
    for i in rows:
        if rng.rand() < 0.2:
            o = rng.randint(classes - 1)
            y[i] = o + 1 if o >= y[i] else o
        if rng.rand() < 0.34:
            hd[i] = False
        if rng.rand() < 0.02 and hd[i]:
            ht[i] = False
    return y, ht, hd


def fit_expert(x, present, y, train, val, seed, dropout, classes, views=None):
    """One expert, epoch chosen on the (noisy) validation top-1 with patience 5."""
    torch.manual_seed(seed)
    xt, yt = torch.tensor(x), torch.tensor(y)
    vt = torch.tensor(views) if views is not None else None
    model = nn.Sequential(nn.Linear(x.shape[1], 128), nn.ReLU(), nn.Dropout(dropout), nn.Linear(128, classes))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-4)
    train = torch.tensor([i for i in train if present[i]])
    val = [i for i in val if present[i]]
    best, bad = (-1.0, None), 0
    for _ in range(60):
        order = train[torch.randperm(len(train))]
        which = torch.randint(0, len(vt) + 1, (len(order),)) if vt is not None else None
        for s in range(0, len(order), 512):
            b = order[s : s + 512]
            xb = xt[b].clone()
            if which is not None:
                w = which[s : s + 512]
                pick = w > 0
                if pick.any():
                    xb[pick] = vt[w[pick] - 1, b[pick]]
            loss = F.cross_entropy(model(xb), yt[b])
            opt.zero_grad()
            loss.backward()
            opt.step()
        model.eval()
        with torch.no_grad():
            score = (model(xt[val]).argmax(1) == yt[val]).float().mean().item()
        model.train()
        if score > best[0]:
            best, bad = (score, {k: v.clone() for k, v in model.state_dict().items()}), 0
        else:
            bad += 1
            if bad >= 5:
                break
    model.load_state_dict(best[1])
    model.eval()
    return lambda feats: F.log_softmax(model(torch.tensor(feats)), 1).detach()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("features", type=Path, help="folder of `trio items export` Parquet files")
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--views", type=int, default=3, help="augmented views per training-style image")
    ap.add_argument("--image-weight", type=float, default=0.5)
    args = ap.parse_args()
    torch.set_num_threads(int(os.environ.get("RAYON_NUM_THREADS", "2")))

    cat = load_catalogue(args.features)
    names = sorted(set(cat["labels"]))
    y_true = np.array([names.index(l) for l in cat["labels"]])
    n = len(y_true)
    own = [i for i in range(n) if cat["styles"][i] == TRAIN_STYLE]
    other = [i for i in range(n) if cat["styles"][i] != TRAIN_STYLE]
    rng = random.Random(0)
    aug = view_features(cat, own, lambda im: [augmented_view(im, rng) for _ in range(args.views)],
                        args.views, args.features / f"views-augmented-{args.views}.npy")
    tta = view_features(cat, other, test_views, 3, args.features / "views-test-time.npy")

    results = {}
    for seed in range(args.seeds):
        train, val, val_x, test = split(cat, y_true, seed)
        y, ht, hd = degrade(y_true, cat["has_title"], cat["has_description"], train + val, seed, len(names))
        title = fit_expert(cat["title"], ht, y, train, val, seed, 0.2, len(names))
        desc = fit_expert(cat["description"], hd, y, train, val, seed, 0.2, len(names))
        everywhere = np.ones(n, bool)
        plain = fit_expert(cat["image"], everywhere, y, train, val, seed, 0.5, len(names))
        augmented = fit_expert(cat["image"], everywhere, y, train, val, seed, 0.5, len(names), aug)
        for name, rows in [("val-x", val_x), ("test", test)]:
            truth = torch.tensor(y_true[rows])
            text = title(cat["title"][rows]) * torch.tensor(cat["has_title"][rows]).float()[:, None] + desc(
                cat["description"][rows]
            ) * torch.tensor(cat["has_description"][rows]).float()[:, None]
            acc = lambda z: 100.0 * (z.argmax(1) == truth).float().mean().item()
            results.setdefault(("text", name, "text"), []).append(acc(text))
            for variant, expert, averaged in [
                ("plain", plain, False),
                ("augmented", augmented, False),
                ("test-time", plain, True),
                ("both", augmented, True),
            ]:
                image = expert(cat["image"][rows])
                if averaged:
                    image = (image + sum(expert(tta[k, rows]) for k in range(3))) / 4
                results.setdefault((variant, name, "image"), []).append(acc(image))
                results.setdefault((variant, name, "fused"), []).append(acc(text + args.image_weight * image))
        print(f"seed {seed} done", file=sys.stderr, flush=True)

    mean = lambda key: np.mean(results[key])
    print(f"| variant ({args.seeds} seeds) | image, val-x (test) | fused, val-x (test) |")
    print("|---|---:|---:|")
    for variant in ["plain", "augmented", "test-time", "both"]:
        print(
            f"| {variant} | {mean((variant, 'val-x', 'image')):.1f} ({mean((variant, 'test', 'image')):.1f}) "
            f"| {mean((variant, 'val-x', 'fused')):.1f} ({mean((variant, 'test', 'fused')):.1f}) |"
        )
    print(f"| text alone | | {mean(('text', 'val-x', 'text')):.1f} ({mean(('text', 'test', 'text')):.1f}) |")


if __name__ == "__main__":
    main()
