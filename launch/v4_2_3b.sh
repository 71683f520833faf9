#!/usr/bin/env bash
# Scenario A on a multi-GPU node: Tucano2-qwen-3.7B-Instruct, vLLM actors + DeepSpeed learner.
#   launch/v4_2_3b.sh [--actor-gpus 0,1,2,3] [--learner-gpus 4,5,6,7] [--tp 1] [--run-dir DIR]
#                     [--hostfile FILE] [--resume] [--dry-run] [--set key=value ...]
#   launch/v4_2_3b.sh --gpus 0,1 [--gpu-mem GIB]   actors and learner share GPUs (memory plan: launch/memory.py)
# Environment works too: GPUS, GPU_MEM, ACTOR_GPUS, LEARNER_GPUS, TP, HOSTFILE, CONFIG.
# Default on 8 GPUs: one actor per GPU on 0-3, learner ranks on 4-7.
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
cd "$here"
PY="${PY:-$here/.venv/bin/python}"
exec "$PY" -m launch node --config "${CONFIG:-configs/v4_2_a_3b.yaml}" "$@"
