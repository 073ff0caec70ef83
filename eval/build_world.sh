#!/usr/bin/env bash
# Rebuild every cached artifact of the synthetic-world eval, one CPU thread per process.
# Usage (repository root): COMFYUI_PATH=/path/to/ComfyUI PYTHON=/path/to/python eval/build_world.sh
# Each step logs to eval/artifacts/cache/<step>.log. The artifacts it writes are listed in eval/README.md.
#
# The world model is trained in three phases (the commands below are the ones that built the cached
# model; eval/RESULTS.md, "How the world model was built", says why each phase exists):
#   1. from scratch, plain eps loss;
#   2. Min-SNR-5 weighting, a new cosine schedule of 3000 steps stopped at 1500;
#   3. low-frequency (offset + 4x4) training noise, so backgrounds follow the caption.
# The classifiers need only the autoencoder, so they train beside the world model (two processes).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python}"
: "${COMFYUI_PATH:?set COMFYUI_PATH to a ComfyUI checkout}"
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
CACHE=eval/artifacts/cache
mkdir -p "$CACHE"
step() {  # step <log name> <script> [args...]
    local name=$1 script=$2; shift 2
    echo "== $name"
    "$PYTHON" "eval/$script.py" "$@" > "$CACHE/$name.log" 2>&1 || { tail -20 "$CACHE/$name.log"; return 1; }
}
step train_vae train_vae
step train_classifiers train_classifiers &
classifiers=$!
step train_diffusion train_diffusion --out "$CACHE/world_model_phase1.safetensors"
step train_diffusion_phase2 train_diffusion --resume "$CACHE/world_model_phase1.safetensors" --steps 3000 --stop-after 1500 \
    --lr 5e-4 --warmup 100 --seed 21 --min-snr-gamma 5 --out "$CACHE/world_model_phase2.safetensors"
step train_diffusion_phase3 train_diffusion --resume "$CACHE/world_model_phase2.safetensors" --steps 1500 \
    --lr 3e-4 --warmup 50 --seed 22 --min-snr-gamma 5 --low-frequency-noise 0.3 --out eval/artifacts/world_model.safetensors
wait "$classifiers"
step eval_world eval_world
