"""PyTorch check of what fine-tuning the image tower's top gives on the demo (`--finetune-image`).

Same Lite0 checkpoint and crop as Trio, sentence-transformers' MiniLM for the text, and
`fusion_reference.py`'s unseen-emoji split with 20% flipped labels. The frozen network runs
once up to block `--split` (kept in f16); blocks `--first`.. and the head conv are then
fine-tuned with a linear classifier (batch-norm statistics frozen, AdamW, `--lr` for the
convolutions, 1e-3 for the classifier), the epoch chosen on validation. Prints the test top-1
of one-hidden-layer classifiers on the frozen and on the tuned features, alone and late-fused
with text.

    trio items --db demo.trio list --limit 100000 --json > items.json
    TRIO_HOME=... python scripts/finetune_reference.py items.json --first 15 --epochs 6

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
        txt = fr.text_features(items)
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

        def feats():
            with torch.no_grad():
                return torch.cat([top(x_in[s : s + 256]) for s in range(0, len(x_in), 256)])

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


if __name__ == "__main__":
    main()
