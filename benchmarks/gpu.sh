#!/usr/bin/env bash
# The GPU run of issue 16, for a machine with an NVIDIA GPU: the CUDA tests (pytest -m gpu), the
# 7B-shaped LoRA, batched vs per-module in float32 and float64, and the 1B-shaped dense pair
# analysed with its base; under 8 minutes. Writes benchmarks/results-cuda.json, then regenerates
# the README table (python -m benchmarks table picks results-cuda.json up beside results.json).
#
#   bash benchmarks/gpu.sh              # on the GPU (cuda:0)
#   bash benchmarks/gpu.sh --device cpu # dry run on tiny shapes, seconds (what CI runs)
set -euo pipefail
cd "$(dirname "$0")/.."
device=cuda
if [[ "${1:-}" == "--device" && -n "${2:-}" ]]; then device=$2; fi
python -m benchmarks run --gpu --device "$device"
if [[ "$device" == cuda* ]]; then
    python -m benchmarks table
fi
