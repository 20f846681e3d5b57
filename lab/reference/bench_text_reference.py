"""PyTorch reference throughput for Trio's text tower (compare with `benches/text_tower.rs`).

Embeds the same 32 catalogue sentences as the criterion bench (benches/text_sentences.txt),
split into batches of 1, 8 and 32, and prints sentences per second for two PyTorch paths:

- `st`: sentence-transformers `encode` (tokenise, pad to longest, forward, mean-pool, normalise),
  the pipeline Trio's `TextTower::embed` replaces;
- `hf`: tokeniser + transformers `AutoModel` forward + masked mean pooling + normalisation
  under `torch.inference_mode()`, without sentence-transformers' bookkeeping.

Usage (throwaway venv with `pip install sentence-transformers`, outside the repo):

    HF_HUB_OFFLINE=1 python lab/reference/bench_text_reference.py $TRIO_HOME/models/all-MiniLM-L6-v2

`--threads` sets torch's intra-op threads (default 2, the size of the CI machine);
`--seconds` how long each measurement runs.
"""

import argparse
import pathlib
import statistics
import time

import torch
import torch.nn.functional as F
from sentence_transformers import SentenceTransformer
from transformers import AutoModel, AutoTokenizer

SENTENCES_FILE = pathlib.Path(__file__).resolve().parent.parent / "benches" / "text_sentences.txt"
BATCH_SIZES = [1, 8, 32]


def sentences() -> list[str]:
    lines = [l.strip() for l in SENTENCES_FILE.read_text(encoding="utf-8").splitlines()]
    return [l for l in lines if l]


def measure(fn, texts: list[str], batch: int, seconds: float) -> float:
    """Median sentences/s over repeated passes, each embedding all `texts` in `batch`-sized calls."""
    fn(texts[:batch])  # warm-up
    rates = []
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline or len(rates) < 3:
        start = time.perf_counter()
        for i in range(0, len(texts), batch):
            fn(texts[i : i + batch])
        rates.append(len(texts) / (time.perf_counter() - start))
    return statistics.median(rates)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("model_folder")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=5.0)
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    texts = sentences()

    st = SentenceTransformer(args.model_folder, device="cpu")

    def st_encode(batch: list[str]):
        return st.encode(batch, batch_size=len(batch), normalize_embeddings=True)

    tok = AutoTokenizer.from_pretrained(args.model_folder)
    hf = AutoModel.from_pretrained(args.model_folder).eval()

    def hf_encode(batch: list[str]):
        with torch.inference_mode():
            enc = tok(batch, padding=True, truncation=True, max_length=256, return_tensors="pt")
            out = hf(**enc).last_hidden_state
            mask = enc["attention_mask"].unsqueeze(-1).to(out.dtype)
            pooled = (out * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            return F.normalize(pooled, dim=-1)

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {len(texts)} sentences")
    for batch in BATCH_SIZES:
        for name, fn in (("st", st_encode), ("hf", hf_encode)):
            rate = measure(fn, texts, batch, args.seconds)
            print(f"pytorch-{name} batch {batch:2}: {rate:8.1f} sentences/s")


if __name__ == "__main__":
    main()
