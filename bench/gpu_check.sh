#!/usr/bin/env bash
# The trainer's GPU check, made for a bare GPU machine: Python 3.12 and torch present, nothing
# else of ours. It installs timm, diffusers, safetensors, webdataset, ... from the wheels carried
# in .whl/ at the repo root (build that folder with `bash bench/gpu_wheels.sh TORCH_VERSION` on a
# machine with PyPI access; torch itself is never installed or replaced), then runs
# bench/gpu_check.py and prints its tables: the training steps, then (with 2+ GPUs on the node;
# always with --cpu, on gloo) 2-process DDP under torchrun and a job resumed from its checkpoint.
# Then the build's face models, GPU against CPU: bench/gpu_faces.py (SCRFD and ArcFace through
# mfhq_faces on onnxruntime's CUDA provider, 1 CPU thread and the default threads; stand-in
# weights), with onnxruntime-gpu, insightface and their imports from the same .whl/.
# Finishes in under 8 minutes on an H100/H200: the face bench has its own FACES_S, and the
# trainer's time limit and case budget are what is left of the 8 minutes after it.
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

# The face bench's packages: onnxruntime-gpu (the GPU check; the CPU self-check takes whichever
# onnxruntime is there) and insightface without its dependencies (it asks for the CPU
# onnxruntime, which would overwrite onnxruntime-gpu's module, and for GUI OpenCV; see
# bench/gpu_wheels.sh). Installed before the trainer runs so the trainer's limit below counts it.
faces_ready=1
faces_need='import onnxruntime, insightface, onnx, cv2, scipy, skimage'
has_cuda_ort() { "$PY" -c 'import onnxruntime, sys
sys.exit("CUDAExecutionProvider" not in onnxruntime.get_available_providers())' 2>/dev/null; }
if ! "$PY" -c "$faces_need" 2>/dev/null || { [[ $MODE == gpu ]] && ! has_cuda_ort; }; then
    if [[ ! -d .whl ]] || ! ls .whl/onnxruntime_gpu-*.whl >/dev/null 2>&1; then
        echo "error: the face bench's packages are missing and .whl/ has no onnxruntime-gpu" \
             "wheel; run bench/gpu_wheels.sh first" >&2
        faces_ready=0
    else
        before=$("$PY" -c 'import torch; print(torch.__version__)')
        # onnxruntime and onnxruntime-gpu write the same module: the CPU one goes first
        if "$PY" -m pip show -q onnxruntime >/dev/null 2>&1; then
            "$PY" -m pip uninstall -q -y onnxruntime
        fi
        # --no-index: nothing is downloaded; a wheel that would replace torch is refused below
        timeout 120 "$PY" -m pip install -q --no-index --find-links .whl onnxruntime-gpu onnx \
            opencv-python-headless scipy scikit-image tqdm requests || faces_ready=0
        timeout 60 "$PY" -m pip install -q --no-index --no-deps --find-links .whl \
            "insightface==2.1" || faces_ready=0
        after=$("$PY" -c 'import torch; print(torch.__version__)')
        if [[ "$before" != "$after" ]]; then
            echo "error: installing the wheels changed torch ($before -> $after)" >&2
            exit 2
        fi
    fi
fi

FACES_S=75        # the face bench's own limit; it stops starting cases 20 s before it
rc=0
if [[ $MODE == gpu ]]; then  # the GPU check must end inside its 8 minutes whatever happens
    limit=$((470 - SECONDS - FACES_S))     # what the 8 minutes leave the trainer (was 470)
    # its case budget keeps the 50 s the DDP jobs' end and the table need under that limit
    timeout "$limit" "$PY" bench/gpu_check.py --mode gpu --budget-s $((limit - 50)) "$@" || rc=$?
    faces=(bench/gpu_faces.py --budget-s $((FACES_S - 20)))
else
    "$PY" bench/gpu_check.py --mode cpu --budget-s 1800 "${@:2}" || rc=$?
    faces=(bench/gpu_faces.py --quick)
fi
echo
if [[ $faces_ready == 1 ]]; then
    timeout "$FACES_S" "$PY" "${faces[@]}" || { frc=$?; echo "error: bench/gpu_faces.py" \
        "failed ($frc; 124: over its $FACES_S s)" >&2; [[ $rc != 0 ]] || rc=$frc; }
else
    echo "# face bench skipped: its packages could not be installed (above)"
    [[ $rc != 0 ]] || rc=2
fi
exit "$rc"
