#!/usr/bin/env bash
# Everything that needs a GPU, in one go: the GPU tests, the GPU training benchmark, then the
# recurrent cells (layer-norm LSTM against cuDNN nn.LSTM; the script adds a GPU table), then
# the CPU recipes trained in fp32 and bf16 for the same steps (validation loss and tokens/s).
#   scripts/gpu_check.sh            (from the repository root; uses .venv if present)
# Needs the WikiText-2 corpus under $LMTRAIN_DATA (default ../shared/data).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] && PY=.venv/bin/python
export LMTRAIN_DATA=${LMTRAIN_DATA:-$(cd .. && pwd)/shared/data}
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
"$PY" -c 'import torch; print("torch", torch.__version__, "| cuda available:", torch.cuda.is_available(), "| GPUs:", torch.cuda.device_count(), "|", torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU")'
"$PY" -m pytest -q -rs tests/runtime/test_gpu.py
"$PY" scripts/bench_gpu.py "$@"
"$PY" scripts/bench_cells.py
"$PY" scripts/bench_bf16.py --device cuda --steps 300
