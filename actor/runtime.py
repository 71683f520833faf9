"""Process-level settings an actor needs before vLLM starts (device, dtype, CPU threads, OpenMP), and the engine's
process life: the environment of an in-process engine, what it leaves behind, and the EngineCore children reaped.

Kept free of module-level vLLM imports so the entry point can apply them (and fail fast on a bad config)
before the ~15 s engine start.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from pathlib import Path

log = logging.getLogger("actor.engine")

# vLLM's own LoRA ranks; max_lora_rank must be one of them.
VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)


def on_gpu() -> bool:
    """Whether this process sees a CUDA device (through NVML: importing ``actor`` applied
    :func:`configs.device.process_env`)."""
    import torch

    return torch.cuda.is_available()


def device_problem(cfg) -> str | None:
    """One line when ``actor.device`` is ``cuda`` (the launcher's plan put this actor on a GPU) and torch sees none:
    the actor refuses to start rather than generate on the CPU."""
    if cfg.actor.device != "cuda":
        return None
    import torch

    if torch.cuda.is_available():
        return None
    from configs.device import no_gpu_line

    return "actor.device is cuda (the plan put this actor on a GPU), but " + no_gpu_line(torch.__version__,
                                                                                          torch.version.cuda)


def lora_rank_slot(r: int) -> int:
    """Smallest rank vLLM accepts that holds an adapter of rank ``r``."""
    for slot in VLLM_LORA_RANKS:
        if slot >= r:
            return slot
    raise ValueError(f"LoRA rank {r} exceeds vLLM's largest ({VLLM_LORA_RANKS[-1]})")


def iomp_library() -> Path | None:
    """Intel OpenMP shipped in the venv by the intel-openmp dependency (1.15x on DESIGN.md's bench)."""
    for base in {Path(sys.prefix), Path(sys.executable).resolve().parent.parent}:
        p = base / "lib" / "libiomp5.so"
        if p.exists():
            return p
    return None


def cpu_core_list(threads: int | None, replica: int) -> list[int]:
    """Cores one replica's engine binds: all usable ones, or ``threads`` of them offset by replica."""
    cores = sorted(os.sched_getaffinity(0))
    if threads is None or threads >= len(cores):
        return cores
    start = (replica * threads) % len(cores)
    return [cores[(start + i) % len(cores)] for i in range(threads)]


def configure_cpu_env(threads: int | None, replica: int, tensor_parallel_size: int = 1,
                      env: dict | None = None) -> dict:
    """Set (in ``env``, default ``os.environ``) what vLLM's CPU worker reads when it spawns.

    - ``VLLM_CPU_OMP_THREADS_BIND``: by default vLLM binds one core per rank and reserves the rest for
      its scheduler process; the actor's engine gets every core it may use (or ``threads`` of them),
      split over tensor-parallel ranks. An explicit value in the environment wins (not one this function
      set for an earlier engine of the same process).
    - ``LD_PRELOAD`` of the venv's ``libiomp5.so`` (vLLM warns without it; measured 1.15x on 2 cores).
    - ``VLLM_USE_AOT_COMPILE=0`` unless set: vllm-cpu 0.32 with torch 2.13 saves the AOT-compiled model but
      cannot load it back (``'function' object has no attribute 'finalize_loading'``, logged as "Compiling model
      again due to a load failure"), so every engine start compiled afresh; without AOT the compile cache works
      (the demo's stand-in on one core: engine built in 14.4 s warm, against 22.6 s; BENCHMARKS.md, set-up).
    Returns the variables set.
    """
    env = os.environ if env is None else env
    changed = {}
    ours = env.get("VLLM_CPU_OMP_THREADS_BIND") == _SET_BY_US.get(id(env))  # an earlier engine of this process
    if "VLLM_CPU_OMP_THREADS_BIND" not in env or ours:
        cores = cpu_core_list(threads, replica)
        tp = max(1, tensor_parallel_size)
        per = max(1, len(cores) // tp)
        groups = [cores[i * per:(i + 1) * per] or cores[-1:] for i in range(tp)]
        changed["VLLM_CPU_OMP_THREADS_BIND"] = "|".join(",".join(map(str, g)) for g in groups)
        changed["VLLM_CPU_NUM_OF_RESERVED_CPU"] = "0"
    preload = env.get("LD_PRELOAD", "")
    lib = iomp_library()
    if lib is not None and not any(x in preload for x in ("libiomp", "libgomp", "libomp")):
        changed["LD_PRELOAD"] = f"{lib}:{preload}" if preload else str(lib)
    if "VLLM_USE_AOT_COMPILE" not in env:
        changed["VLLM_USE_AOT_COMPILE"] = "0"
    env.update(changed)
    if "VLLM_CPU_OMP_THREADS_BIND" in changed:
        _SET_BY_US[id(env)] = changed["VLLM_CPU_OMP_THREADS_BIND"]
    return changed


_SET_BY_US: dict[int, str] = {}  # env -> the binding this module put there (a user's own value is left alone)


def serve_mode(mode: str, dtype: str) -> str:
    """``auto``: merged on a float32 engine, adapter otherwise. Merging ``W0 + delta`` into bf16/fp16 weights
    rounds every element whose delta is under half a step of ``W0`` back to ``W0``: at lr 2e-6-5e-6 that is
    most of an early adapter (DESIGN.md). Adapter mode keeps A and B apart, so the delta is served as is."""
    if mode == "auto":
        return "merged" if dtype == "float32" else "adapter"
    return mode


def private_rpc_dir() -> Path:
    """A private directory for vLLM's own ipc sockets (``VLLM_RPC_BASE_PATH``; by default the shared /tmp,
    where every engine leaves ~7 socket files behind). The engine removes it on close; the next actor
    removes those of actors that were killed, and the rest of what killed engines leave
    (:func:`sweep_engine_leftovers`)."""
    import tempfile

    from sync._net import pid_dir

    sweep_engine_leftovers()
    d = pid_dir("tucano2-vllm", Path(tempfile.gettempdir()))
    os.environ["VLLM_RPC_BASE_PATH"] = str(d)
    return d


def sweep_engine_leftovers(shm: Path = Path("/dev/shm"), min_age_s: float = 60.0) -> list[Path]:
    """Remove, of this user's files in ``shm``, what engines killed with SIGKILL leave behind: Intel OpenMP's
    ``__KMP_REGISTERED_LIB_<pid>_*`` of dead pids, and vLLM's shared-memory queues (``psm_*``, 160-250 MB of
    RAM each) that no process maps any more (and older than ``min_age_s``). Returns what was removed."""
    import time

    from sync._net import pid_alive

    removed: list[Path] = []
    mapped: set[str] | None = None
    for f in sorted(shm.glob("__KMP_REGISTERED_LIB_*")) + sorted(shm.glob("psm_*")):
        try:
            st = f.stat()
        except OSError:
            continue
        if st.st_uid != os.getuid():
            continue
        if f.name.startswith("__KMP"):
            parts = f.name.split("_")  # __KMP_REGISTERED_LIB_<pid>_<uid>
            gone = len(parts) >= 6 and parts[5].isdigit() and not pid_alive(int(parts[5]))
        else:
            if mapped is None:
                mapped = _mapped_files(str(shm.resolve()))
            gone = time.time() - st.st_mtime > min_age_s and str(f.resolve()) not in mapped
        if gone:
            try:
                f.unlink()
                removed.append(f)
            except OSError:
                pass
    return removed


def _mapped_files(under: str) -> set[str]:
    """Paths under ``under`` mapped by any process we can inspect (/proc/<pid>/maps)."""
    out: set[str] = set()
    for maps in Path("/proc").glob("[0-9]*/maps"):
        try:
            for line in maps.read_text().splitlines():
                if under + "/" in line:
                    out.add(line.split(None, 5)[-1].removesuffix(" (deleted)"))
        except OSError:
            continue
    return out


@contextlib.contextmanager
def inline_engine_env(on: bool):
    """While an inline engine is built, ``VLLM_ENABLE_V1_MULTIPROCESSING=0``: vLLM 0.32 then runs EngineCore and its
    worker in the calling process (its CPU platform forces the multiprocess executor only while the variable is 1).
    Otherwise the environment is left as it is."""
    if not on:
        yield
        return
    key = "VLLM_ENABLE_V1_MULTIPROCESSING"
    old = os.environ.get(key)
    os.environ[key] = "0"
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(key)
        else:
            os.environ[key] = old


def release_inline_engine(set_num_threads) -> None:
    """What an inline engine leaves in its process, undone so the process can build another engine or train:
    vLLM's one-rank torch.distributed group and model-parallel groups, its environment cache and frozen GC heap
    (``cleanup_dist_env_and_memory``), and the CPU worker's no-op ``torch.set_num_threads``."""
    import torch
    from vllm.distributed.parallel_state import cleanup_dist_env_and_memory

    cleanup_dist_env_and_memory()
    torch.set_num_threads = set_num_threads


def child_pids() -> set[int]:
    """Children of this process, less multiprocessing's resource tracker (it lives as long as we do)."""
    from multiprocessing import resource_tracker

    import psutil

    tracker = getattr(resource_tracker._resource_tracker, "_pid", None)
    return {p.pid for p in psutil.Process().children(recursive=True)} - {tracker}


def reap(pids: list[int], timeout_s: float = 10.0, term_s: float = 5.0) -> list[int]:
    """Wait for ``pids`` (EngineCore processes) to exit, terminating then killing stragglers.

    Returns the pids still alive after the SIGKILL too (should be none: the caller then keeps the
    shared memory they may map). Other children of this process are left alone.
    """
    import psutil

    kids = []
    for pid in pids:
        try:
            kids.append(psutil.Process(pid))
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(kids, timeout=timeout_s)
    for p in alive:
        log.warning("child %d (%s) still running after engine shutdown: terminating", p.pid, p.name())
        try:
            p.terminate()
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(alive, timeout=term_s)
    for p in alive:
        log.warning("child %d ignored SIGTERM: killing it", p.pid)
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(alive, timeout=term_s)
    return [p.pid for p in alive]
