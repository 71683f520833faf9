#!/usr/bin/env bash
# The GPU path on a lent GPU machine, as a user's run takes it, in under 10 minutes (README, "What the GPU path was
# checked against"). Run from the repository root:
#   1. the learner's CUDA path: `python -m learner --rollouts local` on a 0.5B-shaped model (zoo, random weights) at
#      V4.1's config, bf16, one rank, learner.device=cuda: 3 steps with a checkpoint at 2, then --resume to step 4;
#   2. its peak GPU memory, sampled by nvidia-smi every 0.2 s, against launch.memory's estimate for that config,
#      and learner.bench's own peak allocation at the 0.5B shape (launch.device_report);
#   3. learner.bench at the 3.7B shape (Scenario A's config).
# Results in $OUT (the device tool's folder) or --out DIR: device.json, bench_0.5b.json, bench_3.7b.json, smi.csv,
# the logs. Wheels for what the machine lacks come from launch/device_wheels.sh, carried as .whl.
#   launch/device_check.sh [--out DIR] [--dry-run]    (--dry-run: validate every command's config, run nothing)
set -uo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-runs/device}"; dry=0
while [ $# -gt 0 ]; do
  case "$1" in
    --out) out="$2"; shift 2;;
    --dry-run) dry=1; shift;;
    *) echo "device_check: unknown option $1" >&2; exit 2;;
  esac
done
PY="${PY:-python3}"
work="${WORK:-/tmp/tucano2-device}"
mkdir -p "$out" "$work"
if [ -d .whl ] && [ "$dry" = 0 ]; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH="/tmp/site:$PWD${PYTHONPATH:+:$PYTHONPATH}"
else
  export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONUNBUFFERED=1 WANDB_MODE=disabled TOKENIZERS_PARALLELISM=false

model="$work/m05"; data="$work/data"; run="$work/run"
# V4.1 as the handoff runs it, on the 0.5B shape, with local rollouts (HF generate on the learner's GPU)
learner_set=(--set "model_id=$model" --set "run_dir=$run" --set "data.db_path=$data/commerce.db"
  --set "data.train_pairs=$data/pairs/train.jsonl" --set "data.eval_pairs=$data/pairs/eval.jsonl"
  --set learner.device=cuda --set learner.precision=bf16 --set learner.ranks=1 --set learner.checkpoint_every=2
  --set learner.probe_every=0 --set eval.every=0 --set eval.at_start=false --set logging.wandb_mode=disabled)
first=(--config configs/v4_1.yaml "${learner_set[@]}" --set max_steps=3)
second=(--config configs/v4_1.yaml "${learner_set[@]}" --set max_steps=4)

if [ "$dry" = 1 ]; then
  for args in "first" "second"; do
    declare -n a="$args"
    "$PY" -m configs validate "${a[@]:1}" > /dev/null || exit 2
  done
  "$PY" -m configs validate configs/v4_2_a_3b.yaml > /dev/null || exit 2
  echo "device_check: dry run: learner ${first[*]}"
  echo "device_check: dry run: learner --resume $run ${second[*]}"
  echo "device_check: dry run: learner.bench --shape 0.5b; learner.bench --shape 3.7b; report in $out"
  exit 0
fi

step() { echo "device_check: $(date +%T) $*"; }
step "versions"; "$PY" -c 'import torch, transformers, deepspeed, peft; print(f"torch {torch.__version__} cuda {torch.version.cuda}, transformers {transformers.__version__}, deepspeed {deepspeed.__version__}, peft {peft.__version__}, {torch.cuda.get_device_name(0)}")'
"$PY" -m launch.cuda_check || exit 1
step "data and the 0.5B-shaped model"
"$PY" -m commerce build --out "$data" --orders 3000 > "$out/build.log" 2>&1 || { tail "$out/build.log"; exit 1; }
"$PY" -m zoo build --shape 0.5b --out "$model" --db "$data/commerce.db" >> "$out/build.log" 2>&1 || { tail "$out/build.log"; exit 1; }

nvidia-smi --query-compute-apps=timestamp,pid,used_memory --format=csv,noheader,nounits -lms 200 > "$out/smi.csv" &
smi=$!
rc=0
step "learner: 3 steps (checkpoint at 2)"
"$PY" -m learner "${first[@]}" --rollouts local > "$out/learner1.log" 2>&1 || rc=$?
if [ "$rc" = 0 ]; then
  step "learner: --resume to step 4"
  "$PY" -m learner "${second[@]}" --resume "$run" --rollouts local > "$out/learner2.log" 2>&1 || rc=$?
fi
kill "$smi" 2>/dev/null
[ "$rc" = 0 ] || { echo "device_check: the learner failed ($rc):"; tail -20 "$out"/learner*.log; }
step "learner.bench --shape 0.5b"
"$PY" -m learner.bench --shape 0.5b --steps 2 --warmup 1 --json "$out/bench_0.5b.json" > "$out/bench05.log" 2>&1 \
  || tail -20 "$out/bench05.log"
step "report"
"$PY" -m launch.device_report "${second[@]}" --run "$run" --smi "$out/smi.csv" --bench "$out/bench_0.5b.json" \
  --first-steps 3 --json "$out/device.json" || rc=1
step "learner.bench --shape 3.7b"
"$PY" -m learner.bench --shape 3.7b --steps 2 --warmup 1 --json "$out/bench_3.7b.json" > "$out/bench37.log" 2>&1 \
  || { tail -20 "$out/bench37.log"; rc=1; }
cat "$out/bench37.log" | tail -15
step "done (rc $rc)"
exit "$rc"
