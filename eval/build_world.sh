#!/usr/bin/env bash
# Rebuild every cached artifact of the synthetic-world eval, one CPU thread, in order.
# Usage (repository root): COMFYUI_PATH=/path/to/ComfyUI PYTHON=/path/to/python eval/build_world.sh
# Each step logs to eval/artifacts/cache/<step>.log. The artifacts it writes are listed in eval/README.md.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python}"
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
mkdir -p eval/artifacts/cache
for step in train_vae train_diffusion train_classifiers eval_world; do
    echo "== $step"
    "$PYTHON" "eval/$step.py" 2>&1 | tee "eval/artifacts/cache/$step.log"
done
