"""Reference values for Trio's text-tower golden tests, from an independent implementation.

Runs sentence-transformers (PyTorch) on the same all-MiniLM-L6-v2 folder that the Rust tests
read, and prints what `engine/tests/text_golden.rs` pins: the first 8 dimensions of a few
normalised sentence embeddings, and cosine similarities.

Usage (in a throwaway venv with `pip install sentence-transformers`, outside the repo):

    HF_HUB_OFFLINE=1 python lab/reference/text_golden.py $TRIO_HOME/models/all-MiniLM-L6-v2
"""

import sys

import torch
from sentence_transformers import SentenceTransformer

SENTENCES = [
    "A man is eating food.",
    "A man is eating a piece of bread.",
    "The new movie is awesome.",
]

# Longer than the model's 256-token limit, so it checks that truncation matches.
LONG_TEXT = " ".join(["the quick brown fox jumps over the lazy dog"] * 40)


def main() -> None:
    if len(sys.argv) != 2:
        sys.exit("usage: text_golden.py MODEL_FOLDER")
    torch.set_num_threads(2)
    model = SentenceTransformer(sys.argv[1], device="cpu")
    print(f"max_seq_length = {model.max_seq_length}")
    texts = SENTENCES + [LONG_TEXT]
    emb = model.encode(texts, batch_size=8, normalize_embeddings=True, convert_to_tensor=True)
    long_tokens = len(model.tokenizer(LONG_TEXT)["input_ids"])
    print(f"long text: {long_tokens} tokens before truncation")
    for text, vec in zip(texts, emb):
        head = ", ".join(f"{v:.6f}" for v in vec[:8].tolist())
        print(f"{text[:40]!r}: [{head}]")
    print(f"cos(0, 1) = {float(emb[0] @ emb[1]):.6f}")
    print(f"cos(0, 2) = {float(emb[0] @ emb[2]):.6f}")


if __name__ == "__main__":
    main()
