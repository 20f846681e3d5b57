"""Writes the tiny PyTorch checkpoints the weights reader is tested on.

    python scripts/make_pth_fixtures.py engine/tests/fixtures

(run in a throwaway venv with `pip install torch`; the files are committed, so this is only
needed to regenerate them). Both framings are written from the same state dict, which covers
what real checkpoints contain: a transposed (non-contiguous) tensor as TensorFlow conversions
leave them, two tensors sharing one storage at different offsets, several dtypes, and a scalar.
"""

import sys
from collections import OrderedDict
from pathlib import Path

import torch


def state_dict():
    base = torch.arange(10, dtype=torch.float32)
    return OrderedDict(
        [
            # 2x3 view of a 3x2 tensor: strides (1, 2).
            ("layer.weight", torch.arange(6, dtype=torch.float32).reshape(3, 2).t()),
            ("layer.bias", torch.tensor([0.5, -1.5, 2.25], dtype=torch.float64)),
            ("half", torch.tensor([[1.0, 2.0], [3.0, 4.0]], dtype=torch.float16)),
            ("steps", torch.tensor(7, dtype=torch.int64)),
            # Two windows onto one storage.
            ("shared.a", base[1:4]),
            ("shared.b", base[6:10].view(2, 2)),
        ]
    )


def main(out_dir):
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    sd = state_dict()
    torch.save(sd, out / "tiny_legacy.pth", _use_new_zipfile_serialization=False)
    torch.save(sd, out / "tiny_zip.pth")
    for name in ("tiny_legacy.pth", "tiny_zip.pth"):
        back = torch.load(out / name, weights_only=True)
        assert all(torch.equal(back[k], v) for k, v in sd.items()), name


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "engine/tests/fixtures")
