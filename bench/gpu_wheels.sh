#!/usr/bin/env bash
# Fill .whl/ (repo root, git-ignored) with the wheels bench/gpu_check.sh installs on a bare GPU
# machine (CPython 3.12, Linux x86_64, torch already there). Run where PyPI is reachable:
#
#   bash bench/gpu_wheels.sh 2.9.0        # the GPU machine's torch version (torchvision matches)
#   bash bench/gpu_wheels.sh 2.9.0 13     # ... and its torch's CUDA major (default 12: PyPI's
#                                         # torch 2.9 is cu128; `torch.version.cuda` says)
#
# torch itself is never downloaded (timm and torchvision come without their dependencies).
# The face bench (bench/gpu_faces.py) needs what mfhq_faces' SCRFD / ArcFace path imports:
# onnxruntime-gpu (its CUDA and cuDNN come from the nvidia-* wheels torch brought), insightface
# and its imports (onnx, OpenCV, scipy, scikit-image, tqdm, requests). insightface comes without
# its dependencies: it asks for the CPU `onnxruntime` (the same module as onnxruntime-gpu, which
# it would overwrite) and for opencv-python, whose GUI build needs libGL that a bare machine
# lacks; the headless OpenCV gives the same cv2. onnxruntime-gpu alone is 190-290 MB.
# onnxruntime-gpu must match torch's CUDA major, whose libraries it loads (preload_dlls, 1.21 on):
# 1.21-1.26 link CUDA 12 (libcudart.so.12), 1.27 on CUDA 13 (checked with readelf on the wheels'
# libonnxruntime_providers_cuda.so); a mismatch leaves its CUDA sessions on the CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
TORCH=${1:?usage: bench/gpu_wheels.sh TORCH_VERSION [CUDA_MAJOR] (e.g. 2.9.0 12)}
CUDA_MAJOR=${2:-12}
case $CUDA_MAJOR in
    12) ORT_GPU="onnxruntime-gpu>=1.21,<1.27" ;;
    13) ORT_GPU="onnxruntime-gpu>=1.27" ;;
    *) echo "error: CUDA major $CUDA_MAJOR: onnxruntime-gpu wheels exist for 12 and 13" >&2; exit 2 ;;
esac
PY=${PYTHON:-python3}
minor=$(echo "$TORCH" | cut -d. -f2)
TORCHVISION="0.$((minor + 15)).$(echo "$TORCH" | cut -d. -f3 | cut -d+ -f1)"  # 2.9.x -> 0.24.x
mkdir -p .whl
platform=(--only-binary=:all: --python-version 3.12 --implementation cp --abi cp312
          --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 --platform any)
# with their dependencies (none of these pulls torch)
"$PY" -m pip download -q --dest .whl "${platform[@]}" "diffusers>=0.32,<0.43" \
    "safetensors>=0.4" "webdataset==1.0.2" "numpy<2.3" pillow tqdm
# torch's companions without dependencies (they would pull torch)
"$PY" -m pip download -q --dest .whl --no-deps "${platform[@]}" "timm>=1.0,<2" \
    "torchvision==$TORCHVISION"
# the face bench: onnxruntime-gpu and insightface's imports, with their dependencies (none of
# these pulls torch or the CPU onnxruntime); versions as pyproject.toml pins them
"$PY" -m pip download -q --dest .whl "${platform[@]}" --platform manylinux_2_17_x86_64 \
    "$ORT_GPU" "onnx>=1.13" "opencv-python-headless>=4.8,<4.12" scipy \
    "scikit-image>=0.22" tqdm requests "numpy<2.3"
"$PY" -m pip download -q --dest .whl --no-deps "${platform[@]}" "insightface==2.1"
ls .whl
