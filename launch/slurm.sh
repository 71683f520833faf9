#!/usr/bin/env bash
# A training run as one Slurm job: actors and learner ranks on separate nodes, placed with srun.
#   launch/slurm.sh CONFIG [--actor-nodes N] [--learner-nodes M] [--gpus-per-node G] [--tp T]
#                   [--partition P] [--time T] [--account A] [--run-dir DIR] [--resume] [--no-requeue]
#                   [--dry-run] [--set key=value ...] [-- extra sbatch args]
# Writes RUN_DIR/job.sbatch (+ config.yaml, plan.json, commands.sh) and submits it with sbatch;
# --dry-run writes and prints it. --gpus-per-node 0: CPU nodes (one actor per node).
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
cd "$here"
PY="${PY:-$here/.venv/bin/python}"
if [ $# -lt 1 ] || [[ "$1" == -* ]]; then
  echo "usage: launch/slurm.sh CONFIG [options] [-- sbatch args]" >&2; exit 2
fi
config="$1"; shift
exec "$PY" -m launch slurm --config "$config" "$@"
