#!/usr/bin/env bash
# A throw-away venv with ONNX Runtime and what the export and benchmark scripts beside this file
# need, at pinned versions. No PyTorch: the exporters build the ONNX graphs from the same weight
# files Trio reads (`.pth`, `.safetensors`).
#
#   lab/reference/ort_install.sh [VENV]        # default /work/venvs/ort
set -euo pipefail
venv="${1:-/work/venvs/ort}"
python3 -m venv "$venv"
"$venv/bin/pip" install --quiet --upgrade pip==25.3
"$venv/bin/pip" install --quiet \
    onnxruntime==1.32.0 \
    onnx==1.23.2 \
    numpy==2.4.6 \
    pillow==13.0.0 \
    tokenizers==0.23.3 \
    sympy==1.14.0 \
    packaging==25.0
"$venv/bin/python" -c "import onnxruntime, onnx; print('onnxruntime', onnxruntime.__version__, 'onnx', onnx.__version__)"
