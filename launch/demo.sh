#!/usr/bin/env bash
# make demo: the main job on one CPU box, end to end with real processes.
#   1. the stand-in model (launch/demo_model.sh, cached): models/small (~2M parameters, Tucano2-shaped),
#      pre-trained on the commerce text into models/small-pt
#   2. the SFT warm-up (LoRA, assistant turns only, the four tasks in turn) when the config's sft.enabled (the
#      demo's own config leaves it off: GRPO starts from the pre-trained stand-in, as Scenario A from Instruct)
#   3. GRPO: a vLLM actor process + a DeepSpeed learner process + ZeroMQ sync (launch/cpu.sh),
#      actor and learner pinned to separate cores as stand-ins for separate GPUs; sampled evals
#      (eval.samples per prompt, fixed seed) with their standard errors
#   4. plots + report.md (with the noise band) in runs/demo, and the handoff's decision tree on the run
#   5. the command that exports its adapter (python -m learner.export; tests/integration/test_e2e_adapter.py runs it)
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PY:-.venv/bin/python}"
CONFIG="${CONFIG:-configs/demo_cpu.yaml}"
RUN="${RUN:-runs/demo}"
start=$(date +%s)
stamp() { echo "demo: $1 at $(( $(date +%s) - start ))s"; }
model=$("$PY" -c 'import sys
from configs import ConfigError, load_config
try:
    print(load_config(sys.argv[1]).model_id)
except ConfigError as e:
    sys.exit(f"demo: invalid config: {e}")' "$CONFIG")
# a config on models/small-pt-tools (configs/demo_tools_cpu.yaml) gets the stand-in pre-trained on tool episodes too
TOOLS=$([ "$model" = models/small-pt-tools ] && echo 1 || echo 0) PY="$PY" bash launch/demo_model.sh
stamp "stand-in model ready"
rm -rf "$RUN"
title="make demo: the small Tucano2 stand-in on CPU (GRPO from the pre-trained stand-in)"
sft=$("$PY" -c 'import sys
from configs import ConfigError, load_config
try:
    print(load_config(sys.argv[1]).sft.enabled)
except ConfigError as e:
    sys.exit(f"demo: invalid config: {e}")' "$CONFIG")
if [ "$sft" = True ]; then
  "$PY" -m learner.sft --config "$CONFIG" --balance --set "run_dir=$RUN"
  stamp "SFT warm-up done"
  title="make demo: the small Tucano2 stand-in on CPU (SFT warm-up, then GRPO)"
fi
cores=$(nproc)
if [ "$cores" -ge 2 ]; then
  pin=(--actor-cores 0 --learner-cores 1)
else
  pin=()
fi
bash launch/cpu.sh "$CONFIG" --run-dir "$RUN" "${pin[@]}"
stamp "GRPO done"
"$PY" -m launch.report "$RUN" --title "$title"
"$PY" -m learner.decide "$RUN" | tee "$RUN/decide.txt"
echo "demo: done in $(( $(date +%s) - start ))s; see $RUN/report.md"
echo "demo: to ship its adapter (a PEFT folder, the tokenizer and a model card; --best, --merge, --push-to-hub REPO):"
echo "  $PY -m learner.export $RUN --out $RUN-export"
