#!/usr/bin/env bash
# make demo: the main job on one CPU box, end to end with real processes.
#   1. pre-train the tiny Tucano2-shaped model on the synthetic commerce text (once; models/tiny-pt)
#   2. SFT warm-up (LoRA, assistant turns only) so it writes task-shaped output
#   3. GRPO: a vLLM actor process + a DeepSpeed learner process + ZeroMQ sync (launch/cpu.sh),
#      actor and learner pinned to separate cores as stand-ins for separate GPUs
#   4. plots + report.md in runs/demo
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PY:-.venv/bin/python}"
CONFIG="${CONFIG:-configs/demo_cpu.yaml}"
RUN="${RUN:-runs/demo}"
start=$(date +%s)
if [ ! -f models/tiny-pt/zoo.json ]; then
  "$PY" -m zoo pretrain --model models/tiny --db data/commerce.db --out models/tiny-pt --steps 300
fi
rm -rf "$RUN"
"$PY" -m learner.sft --config "$CONFIG" --set "run_dir=$RUN"
cores=$(nproc)
if [ "$cores" -ge 2 ]; then
  pin=(--actor-cores 0 --learner-cores 1)
else
  pin=()
fi
bash launch/cpu.sh "$CONFIG" --run-dir "$RUN" "${pin[@]}"
"$PY" -m launch.report "$RUN" --title "make demo: tiny Tucano2 on CPU (SFT warm-up, then GRPO)"
echo "demo: done in $(( $(date +%s) - start ))s; see $RUN/report.md"
