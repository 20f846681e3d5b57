"""ONNX Runtime on the exports of `ort_export.py`: a faithfulness check and throughput measured
the way `trio bench` measures Trio (same inputs, batch sizes, timing rule).

    TRIO_HOME=~/.cache/trio /work/venvs/ort/bin/python lab/reference/ort_bench.py check
    TRIO_HOME=~/.cache/trio /work/venvs/ort/bin/python lab/reference/ort_bench.py bench [--json]

`check` compares EfficientNet-Lite0 with Trio's golden values (`engine/tests/fixtures/
image_golden.json`, made by the PyTorch reference) and the int8 MiniLM with the f32 one
(cosine per sentence over `benches/text_sentences.txt` and the demo emoji texts).

`bench` runs, with 2 intra-op threads (`--threads`) and ORT's highest graph optimisation level:
the image export on the five test photos cycled (network only, inputs prepared outside the
timed loop), and the f32-optimised and int8 MiniLM on `benches/text_sentences.txt`
(tokenising, padding to the batch's longest, pooling and normalising included, as Trio's
text tower does them), at batches 1, 8 and 32. Each rate is whole batches over at least
`--min-items` items and `--min-seconds` seconds after one warm-up batch, cycling the inputs:
`lab/src/throughput.rs`'s rule.
"""

import argparse
import json
import os
import resource
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
from PIL import Image
from tokenizers import Tokenizer

ROOT = Path(__file__).resolve().parents[2]
PHOTOS = ["chelsea.png", "coffee.png", "rocket.jpg", "astronaut.png", "motorcycle_left.png"]
MAX_TOKENS = 256  # all-MiniLM-L6-v2's max_seq_length, as Trio truncates


def home():
    return Path(os.environ.get("TRIO_HOME", Path.home() / ".cache" / "trio"))


def session(path, threads):
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def preprocess(path, size=224):
    """TensorFlow's EfficientNet eval crop, as `lab/reference/image_reference.py` (and Trio)."""
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
    return a.transpose(2, 0, 1).copy()


def photos():
    return np.stack([preprocess(home() / "data" / "photos" / name) for name in PHOTOS])


def synthetic(size, batch=2):
    """The golden file's synthetic input: sin(0.05 (y+1) + 0.3 c + b) cos(0.07 x)."""
    b, c, y, x = np.meshgrid(np.arange(batch), np.arange(3), np.arange(size), np.arange(size),
                             indexing="ij")
    return (np.sin(0.05 * (y + 1) + 0.3 * c + b) * np.cos(0.07 * x)).astype(np.float32)


class TextModel:
    def __init__(self, path, threads):
        self.session = session(path, threads)
        self.tokenizer = Tokenizer.from_file(str(home() / "models" / "all-MiniLM-L6-v2" /
                                                 "tokenizer.json"))
        self.tokenizer.no_padding()
        self.tokenizer.enable_truncation(MAX_TOKENS)

    def embed(self, texts):
        enc = self.tokenizer.encode_batch(texts)
        longest = max(len(e.ids) for e in enc)
        ids = np.zeros((len(enc), longest), np.int64)
        mask = np.zeros_like(ids)
        for i, e in enumerate(enc):
            ids[i, : len(e.ids)] = e.ids
            mask[i, : len(e.ids)] = 1
        feeds = {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}
        return self.session.run(["embeddings"], feeds)[0]


def text_lines(path):
    return [l.strip() for l in Path(path).read_text(encoding="utf-8").splitlines() if l.strip()]


def demo_texts(limit=512):
    """Names and short names of the demo emoji, lower-cased: short catalogue texts."""
    path = home() / "data" / "emoji" / "emoji.json"
    if not path.is_file():
        return []
    texts = []
    for row in json.loads(path.read_text(encoding="utf-8")):
        if row.get("name"):
            texts.append(row["name"].lower())
        texts.append(" ".join(row.get("short_names") or []).replace("_", " "))
    return [t for t in texts if t.strip()][:limit]


def measure(run, count, batch, min_items, min_seconds):
    """Items/s over whole batches cycling `count` inputs, after one warm-up batch."""
    nxt = 0

    def take():
        nonlocal nxt
        idx = [(nxt + i) % count for i in range(batch)]
        nxt += batch
        return idx

    run(take())
    items, start = 0, time.perf_counter()
    while items < min_items or time.perf_counter() - start < min_seconds:
        run(take())
        items += batch
    return items / (time.perf_counter() - start)


def check(args):
    out = Path(args.models)
    golden = json.loads((ROOT / "engine" / "tests" / "fixtures" / "image_golden.json").read_text())
    image = session(out / "efficientnet-lite0.onnx", args.threads)
    feats, probs = image.run(["features", "probabilities"], {"images": synthetic(224)})
    worst = max(float(np.abs(f - np.array(g["features"], np.float32)).max())
                for f, g in zip(feats, golden["lite0"]["synthetic"]))
    print(f"image, synthetic input: features max |diff| to the PyTorch golden values {worst:.2e}")
    feats, probs = image.run(["features", "probabilities"], {"images": photos()})
    want = [golden["lite0"]["photos"][name]["top5"][0][0] for name in PHOTOS]
    agree = sum(int(np.argmax(p)) == g for p, g in zip(probs, want))
    print(f"image, test photos: top-1 agrees with PyTorch on {agree}/{len(PHOTOS)}")

    f32 = TextModel(out / "minilm.opt.onnx", args.threads)
    plain = TextModel(out / "minilm.onnx", args.threads)
    q8 = TextModel(out / "minilm.int8.onnx", args.threads)
    for label, texts in (("catalogue sentences", text_lines(ROOT / "benches" / "text_sentences.txt")),
                         ("demo emoji names", demo_texts())):
        if not texts:
            continue
        a = np.concatenate([f32.embed(texts[i : i + 32]) for i in range(0, len(texts), 32)])
        b = np.concatenate([plain.embed(texts[i : i + 32]) for i in range(0, len(texts), 32)])
        c = np.concatenate([q8.embed(texts[i : i + 32]) for i in range(0, len(texts), 32)])
        fused = np.sum(a * b, axis=1)
        cos = np.sum(a * c, axis=1)
        print(f"text, {label} ({len(texts)}): fused vs plain graph cosine min {fused.min():.6f}; "
              f"int8 vs f32 cosine min {cos.min():.4f} mean {cos.mean():.4f}")


def bench(args):
    out = Path(args.models)
    rows = []
    images = photos()
    image = session(out / "efficientnet-lite0.onnx", args.threads)
    for batch in args.batch:
        rate = measure(lambda idx: image.run(None, {"images": images[idx]}), len(images), batch,
                       args.min_items, args.min_seconds)
        rows.append({"tower": "image", "model": "ort-f32", "batch": batch, "items_per_second": rate})
    texts = text_lines(args.texts_file)
    for name, file in (("ort-f32", "minilm.opt.onnx"), ("ort-int8", "minilm.int8.onnx")):
        model = TextModel(out / file, args.threads)
        for batch in args.batch:
            rate = measure(lambda idx: model.embed([texts[i] for i in idx]), len(texts), batch,
                           args.min_items, args.min_seconds)
            rows.append({"tower": "text", "model": name, "batch": batch, "items_per_second": rate})
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if args.json:
        print(json.dumps({"onnxruntime": ort.__version__, "threads": args.threads, "rows": rows,
                          "peak_rss_mib": peak}))
    else:
        print(f"onnxruntime {ort.__version__}, {args.threads} threads")
        for r in rows:
            print(f"{r['tower']:5} {r['model']:8} batch {r['batch']:2}: "
                  f"{r['items_per_second']:8.1f} items/s")
        print(f"peak RSS {peak:.0f} MiB")


def main():
    p = argparse.ArgumentParser()
    p.add_argument("command", choices=["check", "bench"])
    p.add_argument("--models", default=str(home() / "reference" / "onnx"))
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batch", type=int, nargs="+", default=[1, 8, 32])
    p.add_argument("--min-items", type=int, default=64)
    p.add_argument("--min-seconds", type=float, default=2.0)
    p.add_argument("--texts-file", default=str(ROOT / "benches" / "text_sentences.txt"))
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    check(args) if args.command == "check" else bench(args)


if __name__ == "__main__":
    main()
