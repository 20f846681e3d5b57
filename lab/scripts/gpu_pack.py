"""Packs what the GPU check needs into one small folder (the device's transfer limit is 64 MiB).

The GPU machine has no network and no Rust toolchain, so the check runs a `trio` binary built
here with `--features cuda`, on models carried from here. To fit the transfer limit, weights are
stored as float16 (Trio computes in float32 on both devices, so CPU and GPU still run identical
weights and parity stays meaningful) and MiniLM's word-embedding rows for tokens that no
benchmark text uses are zeroed (they compress to almost nothing and are never read).

usage: python lab/scripts/gpu_pack.py TRIO_HOME OUT_DIR   (a venv with torch, safetensors, tokenizers)
"""
import json
import os
import shutil
import sys

import torch
from safetensors.torch import load_file, save_file
from tokenizers import Tokenizer

home, out = sys.argv[1], sys.argv[2]
minilm = f"{home}/models/all-MiniLM-L6-v2"
os.makedirs(f"{out}/text", exist_ok=True)

# Benchmark texts: the demo emoji's names and their short names, one per line.
emoji = json.load(open(f"{home}/data/emoji/emoji.json"))
texts = []
for e in emoji:
    if e.get("name"):
        texts.append(e["name"].lower())
    names = " ".join(n.replace("_", " ") for n in e.get("short_names", []))
    if names:
        texts.append(names)
texts = texts[:512]
with open(f"{out}/texts.txt", "w") as f:
    f.write("\n".join(texts) + "\n")

tok = Tokenizer.from_file(f"{minilm}/tokenizer.json")
used = set()
for enc in tok.encode_batch(texts):
    used.update(enc.ids)
used.update(range(0, 1000))  # special and unused-marker tokens

weights = load_file(f"{minilm}/model.safetensors")
packed = {}
for name, t in weights.items():
    t = t.to(torch.float16)
    if name.endswith("word_embeddings.weight"):
        keep = torch.zeros(t.shape[0], dtype=torch.bool)
        keep[sorted(used)] = True
        t = t * keep[:, None].to(t.dtype)
    packed[name] = t.contiguous()
save_file(packed, f"{out}/text/model.safetensors")
for f in os.listdir(minilm):
    if f != "model.safetensors" and os.path.isfile(f"{minilm}/{f}"):
        shutil.copy(f"{minilm}/{f}", f"{out}/text/{f}")
if os.path.isdir(f"{minilm}/1_Pooling"):
    shutil.copytree(f"{minilm}/1_Pooling", f"{out}/text/1_Pooling", dirs_exist_ok=True)

state = torch.load(f"{home}/models/efficientnet-lite0/efficientnet-lite0.pth", map_location="cpu")
state = {k: v.to(torch.float16).contiguous() for k, v in state.items() if v.is_floating_point()}
save_file(state, f"{out}/lite0.safetensors")
print(f"{len(texts)} texts, {len(used)} vocabulary rows kept")
