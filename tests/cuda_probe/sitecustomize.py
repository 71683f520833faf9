"""Test-only: record every CUDA probe a process makes (``tests/unit/test_gpu_actor.py``, the e2e and race runs).

Active only when ``TUCANO2_CUDA_PROBES`` names a directory and this folder is first on ``PYTHONPATH`` (Python imports
the first ``sitecustomize`` on ``sys.path`` at start-up). When ``torch.cuda`` is imported, its probes are wrapped:
each call appends one JSON line to ``<dir>/<pid>.jsonl`` with the function, the value of
``PYTORCH_NVML_BASED_CUDA_CHECK`` at the call, whether CUDA was initialised, whether vLLM was imported, the
process's command line and the caller. On this CPU build the probes answer False at once; what the record shows is
what they would have done on CUDA: ``is_available()`` without the NVML variable runs ``cudaGetDeviceCount`` and
poisons every later fork (:func:`poisoning`).
"""

from __future__ import annotations

import os

_DIR = os.environ.get("TUCANO2_CUDA_PROBES")
PROBES = ("is_available", "device_count", "current_device", "get_device_properties", "mem_get_info", "set_device",
          "get_rng_state", "init", "is_bf16_supported", "get_device_name")


def _install() -> None:
    import importlib.abc
    import importlib.machinery
    import json
    import sys
    import traceback

    path = os.path.join(_DIR, f"{os.getpid()}.jsonl")

    def wrap(mod, name):
        real = getattr(mod, name, None)
        if real is None or getattr(real, "_probe_wrapped", False):
            return

        def probe(*a, **kw):
            try:
                init = bool(mod.is_initialized())
            except Exception:  # noqa: BLE001
                init = False
            caller = next((f"{f.filename}:{f.lineno}" for f in reversed(traceback.extract_stack()[:-1])
                           if "/torch/cuda/" not in f.filename), "?")
            rec = {"fn": name, "nvml": os.environ.get("PYTORCH_NVML_BASED_CUDA_CHECK"), "initialized": init,
                   "vllm": "vllm" in sys.modules, "argv": sys.argv[:3], "caller": caller, "pid": os.getpid()}
            with open(path, "a") as f:
                f.write(json.dumps(rec) + "\n")
            return real(*a, **kw)

        probe._probe_wrapped = True
        setattr(mod, name, probe)

    class Finder(importlib.abc.MetaPathFinder):
        def find_spec(self, fullname, p, target=None):
            if fullname != "torch.cuda":
                return None
            spec = importlib.machinery.PathFinder.find_spec(fullname, p)
            if spec is None or spec.loader is None:
                return spec
            exec_module = spec.loader.exec_module

            def patched(module):
                exec_module(module)
                for n in PROBES:
                    wrap(module, n)

            spec.loader.exec_module = patched
            return spec

    sys.meta_path.insert(0, Finder())


if _DIR:
    _install()
