"""PyTorch CPU throughput of EfficientNet-Lite0 on the demo photos, for comparing with
`cargo bench --bench image_tower`.

    TRIO_HOME=~/.cache/trio /tmp/ref/bin/python lab/reference/bench_image_reference.py [threads]

(venv as in `lab/reference/image_reference.py`). Same weights, same prepared inputs (the five demo
photos cycled to 32), batch sizes 1, 8 and 32, inputs built outside the timed loop, eager
mode under `torch.inference_mode()`, 2 threads unless told otherwise. It prints the mean and
best throughput over at least 5 s per batch size, and the process CPU time per image (which
is steadier than wall time on a shared machine).
"""

import contextlib
import os
import resource
import sys
import time
from pathlib import Path

import torch
from efficientnet_lite_pytorch import EfficientNet

sys.path.insert(0, str(Path(__file__).resolve().parent))
from image_reference import PHOTOS, preprocess  # noqa: E402


def main():
    threads = int(sys.argv[1]) if len(sys.argv) > 1 else 2
    torch.set_num_threads(threads)
    home = Path(os.environ.get("TRIO_HOME", Path.home() / ".cache" / "trio"))
    weights = home / "models" / "efficientnet-lite0" / "efficientnet-lite0.pth"
    with contextlib.redirect_stdout(sys.stderr):
        model = EfficientNet.from_pretrained("efficientnet-lite0", weights_path=str(weights))
    model.eval()
    photos = [preprocess(home / "data" / "photos" / name, 224) for name in PHOTOS]
    images = torch.stack([photos[i % len(photos)] for i in range(32)])
    print(f"torch {torch.__version__}, {threads} threads")
    with torch.inference_mode():
        for batch in (1, 8, 32):
            x = images[:batch].contiguous()
            for _ in range(3):
                model(x)
            runs, start, cpu = 0, time.perf_counter(), time.process_time()
            best = float("inf")
            while runs < 5 or time.perf_counter() - start < 5.0:
                t = time.perf_counter()
                model(x)
                best = min(best, time.perf_counter() - t)
                runs += 1
            elapsed = time.perf_counter() - start
            cpu = (time.process_time() - cpu) / (runs * batch)
            print(f"batch {batch:2}: {batch * runs / elapsed:7.1f} images/s mean, "
                  f"{batch / best:7.1f} best ({best * 1000:.1f} ms per batch); "
                  f"{cpu * 1000:.1f} ms CPU per image")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak RSS {peak:.0f} MiB")


if __name__ == "__main__":
    main()
