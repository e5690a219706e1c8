#!/usr/bin/env bash
# The GPU check of issue 14 (benchmarks/gpu_check.py), on the device machine: installs adverse without its
# dependencies (the machine has its own CUDA torch, torchvision, timm and transformers) and runs the check once.
# Rehearse it on the CPU first: python benchmarks/gpu_check.py --quick --device cpu
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
python -m pip install --no-deps -e . >/dev/null
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
timeout 470 python benchmarks/gpu_check.py --device cuda "$@"
