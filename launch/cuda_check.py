"""``python -m launch.cuda_check``: what a GPU node needs before its first run, checked by ``make setup`` on the cuda
extra. Exit 0, or 1 with one line naming everything missing:

- torch sees a GPU. torch 2.13 and vLLM 0.32 are CUDA 13 builds: with an older NVIDIA driver
  ``torch.cuda.is_available()`` is False and nothing else says why (:func:`configs.device.no_gpu_line` gives the
  driver's and CUDA's versions).
- A C compiler and the Python headers. vLLM 0.32 needs no nvcc on our path (FlashAttention ships precompiled, the LoRA
  and sampling kernels are Triton's; FlashInfer's nvcc-compiled sampler is off, ``configs.device``), but Triton builds
  a small C driver at first use with the compiler it finds (``CC``, else gcc, else clang:
  ``triton/runtime/build.py``) and ``Python.h``; stock CUDA runtime images lack both (Debian/Ubuntu: ``apt-get
  install gcc python3-dev``).
"""

from __future__ import annotations

import os
import shutil
import sys
import sysconfig
from pathlib import Path


def c_compiler(env=None, which=shutil.which) -> str | None:
    """The C compiler Triton would use (``CC``, else gcc, else clang), if it exists."""
    env = os.environ if env is None else env
    cc = env.get("CC")
    if cc:
        return cc if which(cc) else None
    return which("gcc") or which("clang")


def python_include() -> Path:
    """Where Triton looks for ``Python.h`` (its ``_build``: the default scheme, ``posix_local`` read as prefix)."""
    scheme = sysconfig.get_default_scheme()
    if scheme == "posix_local":
        scheme = "posix_prefix"
    return Path(sysconfig.get_paths(scheme=scheme)["include"])


def problems(*, gpu_line: str | None, env=None, which=shutil.which, include: Path | None = None) -> list[str]:
    """What is missing: ``gpu_line`` (None when torch sees a GPU), the C compiler, the Python headers."""
    env = os.environ if env is None else env
    out = [gpu_line] if gpu_line else []
    if c_compiler(env, which) is None:
        cc = env.get("CC")
        out.append(f"no C compiler (CC={cc} not found)" if cc else
                   "no C compiler (gcc or clang; Triton builds its driver with it: apt-get install gcc)")
    include = python_include() if include is None else include
    if not (include / "Python.h").exists():
        out.append(f"no Python headers ({include}/Python.h; Triton builds its driver with them: "
                   f"apt-get install python{sys.version_info.major}.{sys.version_info.minor}-dev)")
    return out


def gpu_line() -> str | None:
    import torch

    if torch.cuda.is_available():
        return None
    from configs.device import no_gpu_line

    return no_gpu_line(torch.__version__, torch.version.cuda)


def main(argv: list[str] | None = None) -> int:
    import argparse

    argparse.ArgumentParser(prog="python -m launch.cuda_check", description=__doc__.splitlines()[0]).parse_args(argv)
    found = problems(gpu_line=gpu_line())
    if found:
        print("setup: the cuda extra cannot run here: " + "; ".join(found), file=sys.stderr)
        return 1
    print("setup: GPU, C compiler and Python headers found")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
