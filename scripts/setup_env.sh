#!/usr/bin/env bash
# Creates/updates the project's virtual environment in .venv. Idempotent: the Makefile only
# calls it when pyproject.toml or this script changed since the last successful run.
#
# Order matters: torch goes in first, pinned to the local CPU build, so that nothing later can
# resolve `torch` to the registry's newest (multi-GB CUDA) release; every later requirement is a
# range that torch 2.13.0 satisfies, so pip installs no other torch.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3.11}
command -v "$PYTHON" >/dev/null || PYTHON=python3
VENV=.venv
PIP="$VENV/bin/python -m pip"

[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
$PIP install -q --upgrade "pip>=24"

if ! "$VENV/bin/python" -c "import torch" 2>/dev/null; then
    $PIP install -q "torch==2.13.0"
fi
$PIP install -q -e ".[dev]"

# The registry's torchvision is a CUDA build; make its ops load on a CPU-only torch.
"$VENV/bin/python" scripts/fix_torchvision_cpu.py

# Headless Chromium renders the audit report in tests (Debian package; root only, skipped
# where apt is unavailable, the report test then says what is missing).
if ! command -v chromium >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
        || echo "warning: could not install chromium; the report screenshot test will fail" >&2
fi
touch "$VENV/.installed"
echo "environment ready: $VENV"
