"""Worker of ``test_learner_precision.py`` (not a test), and the helpers it shares with it: one learner rank on the
tiny model in bf16 with gradient checkpointing runs one step of 8 fixed completions (this rank's share, micro-batches
of 2), records the dtype of every tensor that crossed between the ranks during backward and the step, and writes
the step's gradient (DeepSpeed's fp32 copy, gathered; rank 0) and what it saw.

``python precision_worker.py MODEL OUT STAGES`` (``STAGES``: ``2,3``) under RANK/WORLD_SIZE/MASTER_* (gloo); writes
``OUT/z<stage>-w<world>.{safetensors,json}``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SAMPLES = 8
OPS = ("all_reduce", "reduce", "reduce_scatter", "reduce_scatter_tensor", "all_gather", "all_gather_into_tensor",
       "broadcast")


def randomise_lora_b(pol, seed: int = 5) -> None:
    """LoRA's B away from 0 (fresh B = 0 leaves every lora_A gradient 0), the same on every rank."""
    import deepspeed
    import torch

    gen = torch.Generator().manual_seed(seed)
    params = [p for n, p in pol.module.named_parameters() if "lora_B" in n]
    with torch.no_grad(), deepspeed.zero.GatheredParameters(params, modifier_rank=0,
                                                             enabled=pol.cfg.learner.zero_stage == 3):
        for p in params:
            p.copy_(torch.randn(p.shape, generator=gen) * 0.05)


def micro_batch(vocab: int, index: int):
    """Micro-batch ``index`` (0..): 2 rows of a 6-token prompt and a 5-token completion, fixed ids."""
    import torch

    gen = torch.Generator().manual_seed(100 + index)
    return torch.randint(3, vocab, (2, 11), generator=gen)


def micro_batch_loss(pol, index: int, world: int = 1):
    """A policy-gradient-shaped loss of micro-batch ``index``: minus the completion logprobs at temperature 0.7,
    summed and divided by the step's completions per rank (DeepSpeed averages over ranks)."""
    import torch

    from learner.loss import model_completion_logps

    ids = micro_batch(pol.vocab_size, index)
    logps = model_completion_logps(pol.engine, ids, torch.ones_like(ids), 6, 0.7)
    return -logps.sum() / (SAMPLES / world)


def config(model: str, stage: int):
    from configs import load_config

    return load_config(REPO / "configs" / "smoke_cpu.yaml",
                       [f"model_id={model}", f"learner.zero_stage={stage}", "learner.precision=bf16",
                        "learner.gradient_checkpointing=true", "learner.share_prompt=false",
                        "learner.micro_batch_size=2", "logging.wandb_mode=disabled"])


def one_step(model: str, stage: int, recording: list | None = None):
    """This rank's share of the step (micro-batches dealt round-robin), its gradient as DeepSpeed holds it (fp32,
    gathered) and the step; returns (rank, world, gradients, what it saw). ``recording[0]`` is set while it runs."""
    from deepspeed.utils import safe_get_full_grad

    from learner.engine import PolicyEngine

    pol = PolicyEngine(config(model, stage))
    randomise_lora_b(pol)
    mine = list(range(SAMPLES // 2))[pol.rank::pol.world]  # 4 micro-batches of 2 rows, dealt to the ranks
    if recording is not None:
        recording[0] = True
    for i, b in enumerate(mine):
        pol.backward(micro_batch_loss(pol, b, pol.world), boundary=i == len(mine) - 1)
    grads = {n: safe_get_full_grad(p).detach().float().clone().contiguous()
             for n, p in pol.module.named_parameters() if p.requires_grad}
    res = pol.step()
    if recording is not None:
        recording[0] = False
    info = {"grad_norm": res.grad_norm, "applied": res.skipped is None and bool(pol.engine.was_step_applied()),
            "backward_passes": len(mine), "param_dtype": str(next(pol.module.parameters()).dtype),
            "gradient_checkpointing": bool(pol.module.base_model.model.is_gradient_checkpointing)}
    return pol.rank, pol.world, grads, info


def main(model: str, out: str, stages: str) -> int:
    sys.path.insert(0, str(REPO))
    import torch
    import torch.distributed as dist
    from safetensors.torch import save_file

    seen: dict[str, set[str]] = {}
    recording = [False]
    for name in OPS:  # before DeepSpeed's backend takes its references to them
        real = getattr(dist, name)

        def rec(*a, _real=real, _name=name, **kw):
            if recording[0]:
                t = next((x for x in (*a, *kw.values()) if isinstance(x, torch.Tensor)), None)
                if t is None:
                    t = next((x[0] for x in (*a, *kw.values()) if isinstance(x, list) and x
                              and isinstance(x[0], torch.Tensor)), None)
                seen.setdefault(_name, set()).add(str(t.dtype) if t is not None else "?")
            return _real(*a, **kw)

        setattr(dist, name, rec)
    for stage in [int(s) for s in stages.split(",")]:
        seen.clear()
        rank, world, grads, info = one_step(model, stage, recording)
        info["collectives"] = {k: sorted(v) for k, v in sorted(seen.items())}
        if rank == 0:
            save_file(grads, str(Path(out) / f"z{stage}-w{world}.safetensors"))
            (Path(out) / f"z{stage}-w{world}.json").write_text(json.dumps(info))
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:4]))
