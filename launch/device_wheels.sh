#!/usr/bin/env bash
# Wheels for what a lent GPU machine lacks (its image has torch 2.11, transformers, peft, accelerate, safetensors,
# numpy, msgpack, psutil, tqdm, einops, ninja, but no network): written to .whl/ (ignored by git), carried by the
# device tool and installed by launch/device_check.sh. vLLM's CUDA wheel is too large to carry: the check runs the
# learner's CUDA path, which needs no vLLM. DeepSpeed ships as a source archive only: built here into a pure-Python
# wheel (its CUDA ops JIT-compile on first use; the check's learner uses FusedAdam-free AdamW).
#   launch/device_wheels.sh [DIR]     (default .whl)
set -euo pipefail
cd "$(dirname "$0")/.."
dir="${1:-.whl}"
PY="${PY:-.venv/bin/python}"
mkdir -p "$dir"
case "$dir" in /*) ;; *) grep -qx "/$dir/" .git/info/exclude 2>/dev/null || echo "/$dir/" >> .git/info/exclude;; esac
ver() { "$PY" -c "import importlib.metadata as m; print(m.version('$1'))"; }
platforms=(--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_26_x86_64
           --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64)
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp "${platforms[@]}" \
  -d "$dir" "pydantic==$(ver pydantic)" "pydantic-core==$(ver pydantic-core)" "annotated-types==$(ver annotated-types)" \
  "typing-inspection==$(ver typing-inspection)" "pyzmq==$(ver pyzmq)" "hjson==$(ver hjson)" \
  "transformers==$(ver transformers)" "xxhash==$(ver xxhash)"
if ! ls "$dir"/deepspeed-*.whl >/dev/null 2>&1; then
  DS_BUILD_OPS=0 "$PY" -m pip wheel -q --no-deps --no-build-isolation -w "$dir" "deepspeed==$(ver deepspeed)"
fi
du -sh "$dir"
ls "$dir"
