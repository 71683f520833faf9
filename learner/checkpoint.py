"""Checkpoints: ``RUN_DIR/checkpoints/step-NNNNNN/`` written atomically, the newest ``keep`` kept.

A checkpoint directory holds:

* ``adapter/`` — the LoRA adapter in PEFT format (``adapter_config.json`` + ``adapter_model.safetensors``),
  loadable by transformers/PEFT and by vLLM ``--enable-lora``;
* ``ds/`` — DeepSpeed's checkpoint (``save_checkpoint(exclude_frozen_parameters=True)``): the trainable
  parameters, every rank's ZeRO optimizer partition and the LR scheduler;
* ``trainer_state.json`` — step, policy version, sampler state, watchdog state, best eval, counters;
* ``rng_rank<R>.json`` — each rank's python/numpy/torch RNG states.

Atomicity: every rank writes into ``.tmp-step-NNNNNN`` (the run directory is on a filesystem all
ranks see), then rank 0 renames it to ``step-NNNNNN`` after a barrier, so a crash never leaves a
half-written checkpoint under a real name. Resume picks the highest complete ``step-*``.
"""

from __future__ import annotations

import base64
import json
import random
import shutil
from pathlib import Path

import numpy as np
import torch

CKPT_DIR = "checkpoints"


def _barrier(world: int) -> None:
    if world > 1:
        from learner import comm

        comm.barrier()


def _rng_state() -> dict:
    """RNG states as JSON (no pickle): python's tuple, numpy's legacy state, torch's byte tensors."""
    py = random.getstate()
    np_state = np.random.get_state()
    out = {
        "python": [py[0], list(py[1]), py[2]],
        "numpy": [np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]), float(np_state[4])],
        "torch": base64.b64encode(torch.get_rng_state().numpy().tobytes()).decode(),
    }
    if torch.cuda.is_available():
        out["cuda"] = base64.b64encode(torch.cuda.get_rng_state().numpy().tobytes()).decode()
    return out


def _set_rng_state(s: dict) -> None:
    random.setstate((s["python"][0], tuple(s["python"][1]), s["python"][2]))
    n = s["numpy"]
    np.random.set_state((n[0], np.array(n[1], dtype=np.uint32), n[2], n[3], n[4]))
    torch.set_rng_state(torch.frombuffer(bytearray(base64.b64decode(s["torch"])), dtype=torch.uint8))
    if "cuda" in s and torch.cuda.is_available():
        torch.cuda.set_rng_state(torch.frombuffer(bytearray(base64.b64decode(s["cuda"])), dtype=torch.uint8))


def step_name(step: int) -> str:
    return f"step-{step:06d}"


def list_checkpoints(run_dir: Path) -> list[Path]:
    root = Path(run_dir) / CKPT_DIR
    if not root.is_dir():
        return []
    return sorted(
        p
        for p in root.iterdir()
        if p.is_dir() and p.name.startswith("step-") and (p / "trainer_state.json").exists()
    )


def latest_checkpoint(run_dir: Path) -> Path | None:
    ckpts = list_checkpoints(run_dir)
    return ckpts[-1] if ckpts else None


def save(policy, run_dir: Path, step: int, state: dict, keep: int) -> Path:
    """Collective: every rank calls it. Returns the final checkpoint path."""
    root = Path(run_dir) / CKPT_DIR
    final = root / step_name(step)
    tmp = root / f".tmp-{step_name(step)}"
    if policy.rank == 0:
        root.mkdir(parents=True, exist_ok=True)
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir()
    _barrier(policy.world)
    policy.engine.save_checkpoint(
        str(tmp / "ds"), tag="ds", save_latest=False, exclude_frozen_parameters=True
    )
    (tmp / f"rng_rank{policy.rank}.json").write_text(json.dumps(_rng_state()))
    policy.save_adapter(tmp / "adapter")
    _barrier(policy.world)
    if policy.rank == 0:
        (tmp / "trainer_state.json").write_text(json.dumps(state, indent=1))
        if final.exists():
            shutil.rmtree(final)
        tmp.rename(final)
        for old in list_checkpoints(run_dir)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    _barrier(policy.world)
    return final


def load(policy, ckpt: Path) -> dict:
    """Collective: restore parameters, optimizer, scheduler and this rank's RNG; return trainer state."""
    ckpt = Path(ckpt)
    path, _ = policy.engine.load_checkpoint(
        str(ckpt / "ds"),
        tag="ds",
        load_module_strict=False,
        load_optimizer_states=True,
        load_lr_scheduler_states=True,
    )
    if path is None:
        raise RuntimeError(f"DeepSpeed found no checkpoint under {ckpt / 'ds'}")
    rng = ckpt / f"rng_rank{policy.rank}.json"
    if rng.exists():
        _set_rng_state(json.loads(rng.read_text()))
    return json.loads((ckpt / "trainer_state.json").read_text())


def save_adapter_atomic(policy, out: Path) -> None:
    """Write a PEFT adapter directory to ``out`` via a temporary sibling (collective)."""
    out = Path(out)
    tmp = out.parent / f".tmp-{out.name}"
    if policy.rank == 0:
        out.parent.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
    policy.save_adapter(tmp)
    if policy.rank == 0:
        shutil.rmtree(out, ignore_errors=True)
        tmp.rename(out)
    _barrier(policy.world)
