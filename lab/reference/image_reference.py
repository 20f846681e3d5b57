"""Golden values for the image tower from an independent implementation.

The reference is the `efficientnet_lite_pytorch` package (the PyTorch port the `.pth` files
were published for) running the same checkpoint, with preprocessing written here in PIL:

    python3 -m venv /tmp/ref && /tmp/ref/bin/pip install torch pillow numpy
    /tmp/ref/bin/pip install --no-deps efficientnet_lite_pytorch
    TRIO_HOME=~/.cache/trio /tmp/ref/bin/python lab/reference/image_reference.py \
        > engine/tests/fixtures/image_golden.json

It prints, for each variant, the pooled features (all 1280 for the synthetic input, the
first 8 plus norm and mean for photos) and top-5 classes of (a) a synthetic input given by
a formula that the Rust test rebuilds exactly, which checks the network alone, and (b) each
demo photo after preprocessing, which checks decoding and resizing as well.
"""

import contextlib
import json
import math
import os
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from efficientnet_lite_pytorch import EfficientNet

VARIANTS = {"lite0": 224, "lite1": 240, "lite2": 260}
PHOTOS = ["chelsea.png", "coffee.png", "rocket.jpg", "astronaut.png", "motorcycle_left.png"]


def synthetic(size, batch=2):
    """x[b, c, y, x] = sin(0.05 (y+1) + 0.3 c + b) cos(0.07 x); mirrored in the Rust tests."""
    b, c, y, x = np.meshgrid(
        np.arange(batch), np.arange(3), np.arange(size), np.arange(size), indexing="ij"
    )
    v = np.sin(0.05 * (y + 1) + 0.3 * c + b) * np.cos(0.07 * x)
    return torch.from_numpy(v.astype(np.float32))


def preprocess(path, size):
    """TensorFlow's EfficientNet eval crop: the central square of side
    int(short * size / (size + 32)), alpha over white, bicubic resize to size, (v-127)/128."""
    im = Image.open(path)
    w, h = im.size
    side = min(max(int(min(w, h) * size / (size + 32)), 1), min(w, h))
    left, top = (w - side + 1) // 2, (h - side + 1) // 2
    im = im.crop((left, top, left + side, top + side))
    if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
        im = im.convert("RGBA")
        white = Image.new("RGBA", im.size, (255, 255, 255, 255))
        im = Image.alpha_composite(white, im)
    im = im.convert("RGB").resize((size, size), Image.BICUBIC)
    a = (np.asarray(im, dtype=np.float32) - 127.0) / 128.0
    return torch.from_numpy(a.transpose(2, 0, 1).copy())


def run(model, x):
    with torch.no_grad():
        feats = model.extract_features(x)
        pooled = feats.mean(dim=(2, 3))
        logits = model._fc(pooled)
        probs = torch.softmax(logits, dim=1)
    return pooled, probs


def summary(pooled, probs, full=False):
    out = []
    for f, p in zip(pooled, probs):
        top = torch.topk(p, 5)
        out.append(
            {
                "features": [round(float(v), 6) for v in (f if full else f[:8])],
                "norm": round(float(f.norm()), 5),
                "mean": round(float(f.mean()), 6),
                "top5": [[int(i), round(float(q), 5)] for q, i in zip(top.values, top.indices)],
            }
        )
    return out


def main():
    home = Path(os.environ.get("TRIO_HOME", Path.home() / ".cache" / "trio"))
    torch.set_num_threads(2)
    result = {"about": "written by lab/reference/image_reference.py (efficientnet_lite_pytorch 0.1.0, "
              f"torch {torch.__version__}); see its docstring for the command"}
    for variant, size in VARIANTS.items():
        weights = home / "models" / f"efficientnet-{variant}" / f"efficientnet-{variant}.pth"
        with contextlib.redirect_stdout(sys.stderr):  # the package prints on load
            model = EfficientNet.from_pretrained(
                f"efficientnet-{variant}", weights_path=str(weights)
            )
        model.eval()
        entry = {"synthetic": summary(*run(model, synthetic(size)), full=True)}
        photos = {}
        for name in PHOTOS:
            x = preprocess(home / "data" / "photos" / name, size).unsqueeze(0)
            photos[name] = summary(*run(model, x))[0]
        entry["photos"] = photos
        result[variant] = entry
    json.dump(result, sys.stdout, separators=(",", ":"))
    print()


if __name__ == "__main__":
    main()
