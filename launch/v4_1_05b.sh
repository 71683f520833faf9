#!/usr/bin/env bash
# V4.1 on a GPU node: Tucano2-qwen-0.5B-Instruct, 600 steps (same options as launch/v4_2_3b.sh).
#   launch/v4_1_05b.sh --gpus 0 [--gpu-mem GIB] [--dry-run]   one GPU shared by the actor and the learner
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
cd "$here"
PY="${PY:-$here/.venv/bin/python}"
exec "$PY" -m launch node --config "${CONFIG:-configs/v4_1.yaml}" "$@"
