#!/usr/bin/env bash
# Fill .whl/ (repo root, git-ignored) with the wheels bench/gpu_check.sh installs on a bare GPU
# machine (CPython 3.12, Linux x86_64, torch already there). Run where PyPI is reachable:
#
#   bash bench/gpu_wheels.sh 2.9.0        # the GPU machine's torch version (torchvision matches)
#
# torch itself is never downloaded (timm and torchvision come without their dependencies).
set -euo pipefail
cd "$(dirname "$0")/.."
TORCH=${1:?usage: bench/gpu_wheels.sh TORCH_VERSION (e.g. 2.9.0)}
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
ls .whl
