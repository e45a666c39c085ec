#!/usr/bin/env bash
# The trainer's GPU check, made for a bare GPU machine: Python 3.12 and torch present, nothing
# else of ours. It installs timm, diffusers, safetensors, webdataset, ... from the wheels carried
# in .whl/ at the repo root (build that folder with `bash bench/gpu_wheels.sh TORCH_VERSION` on a
# machine with PyPI access; torch itself is never installed or replaced), then runs
# bench/gpu_check.py and prints its tables: the training steps, then (with 2+ GPUs on the node;
# always with --cpu, on gloo) 2-process DDP under torchrun and a job resumed from its checkpoint.
# Finishes in under 8 minutes on an H100/H200.
#
#   bash bench/gpu_check.sh            # GPU: paper preset, bf16, batch 1 and 8, compile on/off
#   bash bench/gpu_check.sh --cpu      # any machine: the same cases on tiny sizes (self-check)
#   bash bench/gpu_check.sh --cpu --only-ddp   # just the DDP + resume jobs (about a minute)
#   GPU_CHECK_CPU=1 bash bench/gpu_check.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
MODE=gpu
if [[ "${1:-}" == "--cpu" || "${GPU_CHECK_CPU:-0}" == "1" ]]; then
    MODE=cpu
fi
need='import timm, diffusers, safetensors, webdataset, PIL, numpy, tqdm'
if ! "$PY" -c "$need" 2>/dev/null; then
    if [[ ! -d .whl ]]; then
        echo "error: missing packages and no .whl/ folder; run bench/gpu_wheels.sh first" >&2
        exit 2
    fi
    before=$("$PY" -c 'import torch; print(torch.__version__)')
    # --no-index: nothing is downloaded; a wheel that would replace torch is refused below
    "$PY" -m pip install -q --no-index --find-links .whl timm diffusers safetensors webdataset \
        pillow numpy tqdm
    after=$("$PY" -c 'import torch; print(torch.__version__)')
    if [[ "$before" != "$after" ]]; then
        echo "error: installing the wheels changed torch ($before -> $after)" >&2
        exit 2
    fi
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
if [[ $MODE == gpu ]]; then  # the GPU check must end inside its 8 minutes whatever happens
    exec timeout 470 "$PY" bench/gpu_check.py --mode gpu "$@"
fi
exec "$PY" bench/gpu_check.py --mode cpu --budget-s 1800 "${@:2}"
