"""PyTorch check of what fine-tuning the image tower's top gives on the demo (`--finetune-image`).

Same Lite0 checkpoint and crop as Trio, sentence-transformers' MiniLM for the text, and
`fusion_reference.py`'s unseen-emoji split with 20% flipped labels. The frozen network runs
once up to block `--split` (kept in f16); blocks `--first`.. and the head conv are then
fine-tuned with a linear classifier (batch-norm statistics frozen, AdamW, `--lr` for the
convolutions, 1e-3 for the classifier), the epoch chosen on validation. Prints the test top-1
of one-hidden-layer classifiers on the frozen and on the tuned features, alone and late-fused
with text.

`--objective align` asks instead whether fine-tuning helps cross-modal search: the same top
blocks are tuned by symmetric InfoNCE between an image head on the pooled features and a text
head on the emoji names (renders of one emoji are positives, temperature 0.1, Trio's
`train::align` objective), beside the same heads on the frozen features. Each epoch prints
name->image recall@1/@10 and the median rank for the validation and the test emoji's names
over every image (a hit: any render of the named emoji); the epoch is chosen on validation.

    trio items --db demo.trio list --limit 100000 --json > items.json
    TRIO_HOME=... python lab/reference/finetune_reference.py items.json --first 15 --epochs 6
    TRIO_HOME=... python lab/reference/finetune_reference.py items.json --objective align --first 11

Needs torch, pillow, numpy, sentence-transformers and `efficientnet_lite_pytorch` (--no-deps).
"""

import argparse
import copy
import json
import os
import sys
import time

import numpy as np
import torch
import torch.nn as nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import fusion_reference as fr  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("items", help="`trio items list --json` output")
    ap.add_argument("--split", type=int, default=11, help="cache activations entering this block")
    ap.add_argument("--first", type=int, default=15, help="first fine-tuned block (>= --split)")
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--lr", type=float, default=3e-4)
    ap.add_argument("--seeds", type=int, default=1)
    ap.add_argument("--cache", default="/tmp/trio-finetune-reference")
    ap.add_argument("--objective", choices=["classify", "align"], default="classify")
    ap.add_argument("--frozen-epochs", type=int, default=30, help="align: epochs of the frozen heads")
    args = ap.parse_args()
    torch.set_num_threads(2)
    os.makedirs(args.cache, exist_ok=True)
    items = json.load(open(args.items))["items"]
    labels = sorted({it["label"] for it in items})
    lab = np.array([labels.index(it["label"]) for it in items])
    groups = np.array([it["metadata"]["emoji_key"] for it in items])

    from efficientnet_lite_pytorch import EfficientNet

    path = f"{fr.HOME}/models/efficientnet-lite0/efficientnet-lite0.pth"
    model = EfficientNet.from_pretrained("efficientnet-lite0", weights_path=path).eval()
    mid_path = f"{args.cache}/mid{args.split}.npy"
    if os.path.exists(mid_path):
        mid = np.load(mid_path)
    else:
        from PIL import Image

        def load(p, size=224):
            im = Image.open(p).convert("RGBA")
            white = Image.new("RGBA", im.size, (255, 255, 255, 255))
            im = Image.alpha_composite(white, im).convert("RGB")
            w, h = im.size
            side = min(max(int(min(w, h) * size / (size + 32)), 1), min(w, h))
            left, top = (w - side + 1) // 2, (h - side + 1) // 2
            im = im.crop((left, top, left + side, top + side)).resize((size, size), Image.BICUBIC)
            return torch.from_numpy(((np.asarray(im, np.float32) - 127.0) / 128.0).transpose(2, 0, 1).copy())

        outs = []
        for s in range(0, len(items), 64):
            x = torch.stack([load(it["image_path"]) for it in items[s : s + 64]])
            with torch.no_grad():
                x = model._swish(model._bn0(model._conv_stem(x)))
                for b in model._blocks[: args.split]:
                    x = b(x, drop_connect_rate=0)
            outs.append(x.numpy().astype(np.float16))
        mid = np.concatenate(outs)
        np.save(mid_path, mid)
    txt_path = f"{args.cache}/text.npy"
    if os.path.exists(txt_path):
        txt = np.load(txt_path)
    else:
        txt = fr.text_features(items, 0.0)
        np.save(txt_path, txt)
    mid = torch.tensor(mid)

    class Top(nn.Module):
        def __init__(self):
            super().__init__()
            self.blocks = nn.ModuleList(model._blocks[args.first :])
            self.conv_head, self.bn1 = model._conv_head, model._bn1

        def forward(self, x):
            for b in self.blocks:
                x = b(x, drop_connect_rate=0)
            return model._swish(self.bn1(self.conv_head(x))).mean(dim=(2, 3))

    with torch.no_grad():
        x_in = mid.float()
        for b in model._blocks[args.split : args.first]:
            x_in = b(x_in, drop_connect_rate=0)

    def finetune(part, noisy, seed):
        torch.manual_seed(seed)
        top = copy.deepcopy(Top()).eval()  # batch-norm statistics stay frozen
        clf = nn.Sequential(nn.Dropout(0.2), nn.Linear(1280, len(labels)))
        opt = torch.optim.AdamW(
            [{"params": top.parameters(), "lr": args.lr}, {"params": clf.parameters(), "lr": 1e-3}],
            weight_decay=1e-4,
        )
        yt, tr = torch.tensor(noisy), np.where(part == 0)[0]

        feats = lambda: pooled(top, x_in)
        frozen = feats()
        best = (-1.0, frozen)
        for ep in range(args.epochs):
            t = time.time()
            clf.train()
            perm = np.random.default_rng(ep + seed).permutation(tr)
            for s in range(0, len(perm), 64):
                b = perm[s : s + 64]
                opt.zero_grad()
                nn.functional.cross_entropy(clf(top(x_in[b])), yt[b]).backward()
                opt.step()
            clf.eval()
            f = feats()
            with torch.no_grad():
                val = (clf(f)[part == 1].argmax(1) == yt[part == 1]).float().mean().item()
            print(f"  epoch {ep} val {100 * val:.1f} ({time.time() - t:.0f}s)", flush=True)
            if val > best[0]:
                best = (val, f)
        return best[1].numpy(), frozen.numpy()

    if args.objective == "align":
        part, _ = fr.split(groups, lab, len(labels), 0)
        align(Top, x_in, torch.tensor(txt[:, :384]), items, groups, part, args)
        return
    results = {}
    for seed in range(args.seeds):
        part, noisy = fr.split(groups, lab, len(labels), seed)
        tuned, frozen = finetune(part, noisy, seed)
        acc = lambda lp: 100 * (lp[part == 2].argmax(1).numpy() == lab[part == 2]).mean()
        lp_t = fr.train(txt, noisy, part, len(labels))
        lp_f = fr.train(frozen, noisy, part, len(labels))
        lp_u = fr.train(tuned, noisy, part, len(labels))
        row = {
            "text": acc(lp_t),
            "image frozen": acc(lp_f),
            "image tuned": acc(lp_u),
            "late fusion frozen": acc(lp_f + lp_t),
            "late fusion tuned": acc(lp_u + lp_t),
        }
        fr.record(results, seed, row)
    fr.print_means(results)


def pooled(top, x_in):
    """The top's pooled features of every image, in batches, without gradients."""
    with torch.no_grad():
        return torch.cat([top(x_in[s : s + 256]) for s in range(0, len(x_in), 256)])


def align(top_class, x_in, names, items, groups, part, args):
    """Cross-modal recall of InfoNCE heads on the frozen top, then with the top tuned too."""
    F = nn.functional
    emoji = np.asarray(groups)  # the demo's emoji_key: every vendor and skin tone of one emoji

    def queries(p):  # one name per emoji of the split
        seen, rows = set(), []
        for i in np.where(part == p)[0]:
            if emoji[i] not in seen and items[i]["title"]:
                seen.add(emoji[i])
                rows.append(i)
        return rows

    def recall(image, text, rows):
        """(recall@1, recall@10, median rank) of the names at `rows` over every image."""
        scores = text[rows] @ image.T
        ranks = np.array(
            [1 + (s > s[emoji == emoji[r]].max()).sum() for s, r in zip(scores, rows)]
        )
        return (ranks <= 1).mean(), (ranks <= 10).mean(), int(np.median(ranks))

    show = lambda r: f"R@1 {r[0]:.3f} R@10 {r[1]:.3f} median {r[2]}"

    val, test = queries(1), queries(2)
    print(f"{len(val)} validation and {len(test)} test names, {len(x_in)} images", flush=True)
    train_rows = np.where(part == 0)[0]
    for tune, epochs in ((False, args.frozen_epochs), (True, args.epochs)):
        torch.manual_seed(0)
        top = copy.deepcopy(top_class()).eval()  # batch-norm statistics stay frozen
        image_head, text_head = nn.Linear(1280, 128), nn.Linear(384, 128)
        groups_ = [{"params": [*image_head.parameters(), *text_head.parameters()], "lr": 1e-3}]
        if tune:
            groups_.append({"params": top.parameters(), "lr": args.lr})
        opt = torch.optim.AdamW(groups_, weight_decay=1e-4)
        frozen = pooled(top, x_in)

        def heads(features, text):
            return (
                F.normalize(image_head(F.normalize(features, dim=1)), dim=1),
                F.normalize(text_head(text), dim=1),
            )

        best = (-1.0, "")
        for ep in range(epochs):
            t = time.time()
            perm = np.random.default_rng(ep).permutation(train_rows)
            for s in range(0, len(perm), 256):
                b = perm[s : s + 256]
                a, c = heads(top(x_in[b]) if tune else frozen[b], names[b])
                same = torch.tensor(emoji[b][:, None] == emoji[b][None, :]).float()
                same /= same.sum(1, keepdim=True)
                logits = a @ c.T / 0.1
                loss = -(same * logits.log_softmax(1)).sum(1).mean()
                loss = loss - (same * logits.log_softmax(0).T).sum(1).mean()
                opt.zero_grad()
                loss.backward()
                opt.step()
            features = pooled(top, x_in) if tune else frozen
            with torch.no_grad():
                image, text = (v.numpy() for v in heads(features, names))
            v, te = recall(image, text, val), recall(image, text, test)
            what = "tuned" if tune else "frozen"
            line = f"val {show(v)} | test {show(te)}"
            print(f"  {what} epoch {ep}: {line} ({time.time() - t:.0f}s)", flush=True)
            if v[1] > best[0]:
                best = (v[1], f"{what}: epoch {ep}, {line}")
        print("chosen on validation:", best[1], flush=True)


if __name__ == "__main__":
    main()
