#!/usr/bin/env bash
# The demo's stand-in model, built once and cached (used by launch/demo.sh and python -m launch.compare):
#   1. data/ (synthetic commerce.db + pairs) unless it is there
#   2. models/small: the Tucano2-shaped "small" model (~2M parameters, random weights, tokenizer trained on
#      the commerce text); rebuilt only when stale
#   3. models/small-pt: models/small pre-trained on the commerce text (all weights; eval pairs held out)
#   4. with TOOLS=1, models/small-pt-tools: the same pre-training with half the sql_qa documents written as tool
#      episodes (zoo.tool_docs: <sql> probe, its observation, the answer), for configs/demo_tools_cpu.yaml
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PY:-.venv/bin/python}"
[ -f data/pairs/train.jsonl ] || "$PY" -m commerce build --out data
"$PY" -m zoo build --shape small --out models/small --db data/commerce.db
# 340 steps: the demo's GRPO lifted as much from them as from 400 (BENCHMARKS.md "The demo"), ~16 s sooner
if [ ! -f models/small-pt/zoo.json ]; then
  "$PY" -u -m zoo pretrain --model models/small --db data/commerce.db --out models/small-pt --steps "${PRETRAIN_STEPS:-340}" --batch 8
fi
if [ "${TOOLS:-0}" = 1 ] && [ ! -f models/small-pt-tools/zoo.json ]; then
  "$PY" -u -m zoo pretrain --model models/small --db data/commerce.db --out models/small-pt-tools \
    --steps "${PRETRAIN_STEPS:-340}" --batch 8 --tool-share 0.5
fi
