#!/usr/bin/env bash
# The whole system on one CPU machine: one vLLM actor process + one DeepSpeed (gloo) learner process.
#   launch/cpu.sh CONFIG [--actor-cores 0] [--learner-cores 1] [--run-dir DIR] [--dry-run] [--set k=v ...]
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
cd "$here"
PY="${PY:-$here/.venv/bin/python}"
if [ $# -lt 1 ] || [[ "$1" == -* ]]; then
  echo "usage: launch/cpu.sh CONFIG [options]" >&2; exit 2
fi
config="$1"; shift
exec "$PY" -m launch cpu --config "$config" "$@"
