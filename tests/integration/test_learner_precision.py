"""bf16 weights, fp32 sums: what DeepSpeed 0.19.8 really runs for the learner's config, read back from real engines
(CPU, tiny model) rather than from the config dict.

DeepSpeed takes the gradient accumulation and communication dtypes from the model's (``runtime/engine.py``
``get_data_types``, ``communication_data_type``): bf16 alone sums micro-batch gradients and all-reduces them in
bf16. ``learner.engine.deepspeed_config`` sets both to fp32; these tests check the optimizer wrapper that picks at
each ZeRO stage, that a step's accumulated gradient is the exact fp32 sum of its micro-batches' gradients, and
(two gloo ranks, gradient checkpointing) that every collective of a step carries fp32 gradients."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from configs import load_config
from e2e_helpers import free_port

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]
WORKER = Path(__file__).with_name("precision_worker.py")
WRAPPER = {0: "BF16_Optimizer", 2: "DeepSpeedZeroOptimizer", 3: "DeepSpeedZeroOptimizer_Stage3"}
"""The optimizer DeepSpeed wraps ours in, by learner.zero_stage, in bf16 with fp32 gradient accumulation."""


def engine(tiny_model, stage: int, precision: str):
    from precision_worker import randomise_lora_b

    from learner.engine import PolicyEngine

    cfg = load_config(REPO / "configs" / "smoke_cpu.yaml",
                      [f"model_id={tiny_model}", f"learner.zero_stage={stage}", f"learner.precision={precision}",
                       "learner.share_prompt=false", "learner.micro_batch_size=2"])
    pol = PolicyEngine(cfg)
    randomise_lora_b(pol)  # B = 0 would leave every lora_A gradient 0
    return pol


def grads_of(pol) -> dict[str, torch.Tensor]:
    """The gradient DeepSpeed holds now (its fp32 copy, gathered under ZeRO-3)."""
    from deepspeed.utils import safe_get_full_grad

    return {n: safe_get_full_grad(p).clone() for n, p in pol.module.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("stage", [0, 2, 3])
def test_bf16_engine_sums_micro_batches_in_fp32(tiny_model, stage):
    from precision_worker import micro_batch_loss

    pol = engine(tiny_model, stage, "bf16")
    ds = pol.engine
    assert next(pol.module.parameters()).dtype == torch.bfloat16
    assert ds.get_data_types() == (torch.bfloat16, torch.float32)
    assert ds.communication_data_type == torch.float32
    assert type(ds.optimizer).__name__ == WRAPPER[stage]
    assert isinstance(ds.optimizer.optimizer, torch.optim.AdamW)  # ours, inside DeepSpeed's wrapper
    # one step of two micro-batches: the gradient after the first, then after both; the second alone on a twin
    pol.backward(micro_batch_loss(pol, 0), boundary=False)
    one = grads_of(pol)
    pol.backward(micro_batch_loss(pol, 1), boundary=True)
    both = grads_of(pol)
    twin = engine(tiny_model, stage, "bf16")
    twin.backward(micro_batch_loss(twin, 1), boundary=True)
    two = grads_of(twin)
    assert all(g.dtype == torch.float32 for g in both.values())
    scale = max(float(g.abs().max()) for g in both.values())
    assert scale > 0
    fp32_sum = max(float((both[k] - (one[k] + two[k])).abs().max()) for k in both) / scale
    bf16_sum = max(float((both[k] - (one[k] + two[k]).bfloat16().float()).abs().max()) for k in both) / scale
    assert fp32_sum < 1e-6, fp32_sum  # exactly the fp32 sum of the two micro-batches' bf16 gradients
    assert bf16_sum > 1e-4, bf16_sum  # which a bf16 accumulator would have rounded (seen: 2.6e-3)


def test_fp32_engine_runs_torch_adamw_unwrapped(tiny_model):
    ds = engine(tiny_model, 0, "fp32").engine
    assert ds.get_data_types() == (torch.float32, torch.float32) and ds.communication_data_type == torch.float32
    assert type(ds.optimizer) is torch.optim.AdamW


def test_two_bf16_ranks_with_gradient_checkpointing_reduce_in_fp32(tiny_model, tmp_path):
    """Two gloo ranks in bf16 with gradient checkpointing, at ZeRO 2 and 3 (one worker process per rank; the same
    step on one rank, in this process, as the reference): every floating-point reduction was fp32, the step's
    gradient is one rank's to bf16 rounding, and the optimizer step was applied."""
    from precision_worker import one_step

    port = free_port()
    procs = []
    for rank in range(2):
        env = dict(os.environ, RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                   MASTER_PORT=str(port), OMP_NUM_THREADS="1", WANDB_MODE="disabled")
        procs.append(subprocess.Popen([sys.executable, str(WORKER), str(tiny_model), str(tmp_path), "2,3"],
                                      cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    references = {stage: one_step(str(tiny_model), stage) for stage in (2, 3)}  # while the ranks run
    logs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], "\n".join(x[-3000:] for x in logs)
    for stage in (2, 3):
        _, world, g1, one = references[stage]
        assert world == 1
        two = json.loads((tmp_path / f"z{stage}-w2.json").read_text())
        assert two["gradient_checkpointing"] and two["param_dtype"] == "torch.bfloat16"
        assert two["applied"] and two["backward_passes"] == 2  # both micro-batches of this rank's share
        # what crossed between the ranks during backward and the step: every floating-point reduction (the
        # gradients', the norm's) in fp32; the weights' gathers are bf16, DeepSpeed's overflow flag uint8
        reduced = {d for op, dtypes in two["collectives"].items() if op.startswith(("all_reduce", "reduce"))
                   for d in dtypes}
        assert "torch.float32" in reduced and not reduced & {"torch.bfloat16", "torch.float16"}, two["collectives"]
        g2 = load_file(tmp_path / f"z{stage}-w2.safetensors")
        scale = max(float(t.abs().max()) for t in g1.values())
        diff = max(float((g1[k] - g2[k]).abs().max()) for k in g1) / scale
        # one rank sums all 4 micro-batches, two ranks 2 each and then each other's: bf16 forward rounding only
        # (a rank's share lost or counted twice moves it by ~1/2)
        assert diff < 2e-2, diff
        assert abs(one["grad_norm"] - two["grad_norm"]) < 2e-2 * one["grad_norm"]
