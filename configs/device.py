"""What a process needs from the machine before it touches CUDA: its environment, and one line when a GPU is missing.

- :func:`process_env`: the environment every process that may start vLLM or fork needs before anything probes CUDA
  (importing ``actor`` or ``launch`` applies it).
- :func:`engine_dtype`: the dtype an actor's engine serves in (``actor.dtype`` resolved for the device).
- :func:`no_gpu_line`: why torch sees no GPU where the plan put a component on one (``actor.device`` /
  ``learner.device: cuda``, set by the launcher), or where ``make setup`` installed the cuda extra. torch 2.13 and
  vLLM 0.32 are CUDA 13 builds: an older NVIDIA driver makes ``torch.cuda.is_available()`` False and nothing else
  says why; a learner then trained on the CPU in float32 and an actor fell back to the CPU, silently.

Stdlib only (``configs`` imports no torch): the driver is read from ``nvidia-smi``; the caller passes torch's versions.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess


def engine_dtype(dtype: str, gpu: bool) -> str:
    """The dtype an actor's engine serves in, from ``actor.dtype``: ``auto`` is bfloat16 on a GPU and float32 on the
    CPU (bf16 is emulated there, ~5x slower). Every component that needs the actor's dtype (the actor, ``--rollouts
    local``, the probe gate, the race's TRL peer) resolves it here. vLLM's own ``auto`` is not this: it serves a
    float32 checkpoint in the platform's half precision (``vllm/config/model.py: _resolve_auto_dtype``).

    >>> engine_dtype("auto", gpu=False), engine_dtype("auto", gpu=True), engine_dtype("float16", gpu=False)
    ('float32', 'bfloat16', 'float16')
    """
    if dtype == "auto":
        return "bfloat16" if gpu else "float32"
    return dtype


PROCESS_ENV_FORCED = {"PYTORCH_NVML_BASED_CUDA_CHECK": "1"}
"""Set in every process that may start vLLM or fork, before anything probes CUDA. Without it
``torch.cuda.is_available()`` asks the CUDA runtime (``cudaGetDeviceCount``, which runs ``cuInit``) and torch marks the
process: a child it *forks* then dies at its first CUDA call ("Cannot re-initialize CUDA in forked subprocess"). vLLM
0.32 forks its EngineCore on CUDA (``VLLM_WORKER_MULTIPROC_METHOD`` defaults to fork; ``_maybe_force_spawn`` switches
to spawn only when CUDA is *initialised*, which the probe does not do), so one early probe kills every engine start.
With it torch asks NVML instead. vLLM sets the same value when it is imported (``vllm/env_override.py``), too late for
a probe made before ``import vllm``; it forces the value, and so do we."""
PROCESS_ENV_DEFAULTS = {
    "VLLM_NO_USAGE_STATS": "1",
    "VLLM_USE_FLASHINFER_SAMPLER": "0",
}
"""Set unless the user set them. ``VLLM_NO_USAGE_STATS``: vLLM posts usage statistics to its authors by default; a
training run of ours sends nothing home. ``VLLM_USE_FLASHINFER_SAMPLER``: on CUDA vLLM's top-k/top-p sampler is
FlashInfer's, JIT-compiled with nvcc at first use (vLLM #49497), which a CUDA runtime image lacks; 0 keeps the
PyTorch/Triton sampler, which needs no nvcc."""


def process_env(env: dict | None = None) -> dict:
    """Apply :data:`PROCESS_ENV_FORCED` and :data:`PROCESS_ENV_DEFAULTS` to ``env`` (default ``os.environ``); return
    what changed.

    >>> env = {"VLLM_NO_USAGE_STATS": "0"}
    >>> process_env(env)
    {'PYTORCH_NVML_BASED_CUDA_CHECK': '1', 'VLLM_USE_FLASHINFER_SAMPLER': '0'}
    >>> env["VLLM_NO_USAGE_STATS"], process_env(env)
    ('0', {})
    """
    env = os.environ if env is None else env
    changed = {k: v for k, v in PROCESS_ENV_FORCED.items() if env.get(k) != v}
    changed.update({k: v for k, v in PROCESS_ENV_DEFAULTS.items() if k not in env})
    env.update(changed)
    return changed


def driver_info(run=subprocess.run) -> tuple[str | None, str | None, str | None]:
    """(driver version, the newest CUDA version it supports, a problem) from ``nvidia-smi``."""
    if shutil.which("nvidia-smi") is None:
        return None, None, "no NVIDIA driver (nvidia-smi is not on PATH)"
    try:
        out = run(["nvidia-smi"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError) as e:
        return None, None, f"nvidia-smi failed: {e}"
    text = (out.stdout or "") + (out.stderr or "")
    if out.returncode != 0:
        first = next((line.strip() for line in text.splitlines() if line.strip()), f"exit {out.returncode}")
        return None, None, f"nvidia-smi failed: {first}"
    drv = re.search(r"Driver Version:\s*([\d.]+)", text)
    cuda = re.search(r"CUDA Version:\s*([\d.]+)", text)
    return (drv.group(1) if drv else None), (cuda.group(1) if cuda else None), None


def _version(v: str) -> tuple[int, ...]:
    return tuple(int(x) for x in re.findall(r"\d+", v)[:2])


def no_gpu_line(torch_version: str, torch_cuda: str | None, *, env=None, info=None) -> str:
    """Why a torch of ``torch_version`` (built for CUDA ``torch_cuda``, None for a CPU build) sees no GPU, in one line:
    the driver's and CUDA's versions and what to do. ``info``: :func:`driver_info`'s answer (read now if None).

    >>> print(no_gpu_line("2.13.0+cu130", "13.0", env={}, info=("535.104.05", "12.2", None)))
    ... # doctest: +NORMALIZE_WHITESPACE
    torch 2.13.0+cu130 sees no GPU: NVIDIA driver 535.104.05 supports CUDA up to 12.2, this torch (and vLLM 0.32)
    needs CUDA 13.0: update the driver (CUDA 13.0 needs 580 or newer)
    >>> print(no_gpu_line("2.13.0+cpu", None, env={}, info=("580.1", "13.0", None)))
    ... # doctest: +NORMALIZE_WHITESPACE
    torch 2.13.0+cpu sees no GPU: it is a CPU build (install the cuda extra: TUCANO2_EXTRA=cuda make setup);
    NVIDIA driver 580.1, CUDA up to 13.0
    """
    env = os.environ if env is None else env
    head = f"torch {torch_version} sees no GPU: "
    if torch_cuda is None:
        drv, cu, _ = info or driver_info()
        return head + "it is a CPU build (install the cuda extra: TUCANO2_EXTRA=cuda make setup)" + (
            f"; NVIDIA driver {drv}, CUDA up to {cu}" if drv else "")
    cvd = env.get("CUDA_VISIBLE_DEVICES")
    if cvd is not None and (not cvd.strip() or cvd.strip().startswith("-")):
        return head + f"CUDA_VISIBLE_DEVICES={cvd!r} hides every GPU"
    drv, cu, problem = info or driver_info()
    if problem:
        return head + f"{problem}; this torch (and vLLM 0.32) needs a driver for CUDA {torch_cuda}"
    if cu is not None and _version(cu) < _version(torch_cuda):
        need = " (CUDA 13.0 needs 580 or newer)" if _version(torch_cuda) >= (13, 0) else ""
        return head + (f"NVIDIA driver {drv} supports CUDA up to {cu}, this torch (and vLLM 0.32) needs CUDA "
                       f"{torch_cuda}: update the driver{need}")
    return head + (f"NVIDIA driver {drv} (CUDA up to {cu}) and this torch's CUDA {torch_cuda} should agree; "
                   "`python -c 'import torch; torch.cuda.init()'` prints CUDA's own error")
