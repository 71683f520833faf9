"""A non-finite loss or gradient never reaches the optimizer or the actors: the step is skipped on every rank
and counted, the optimizer state and the LR schedule are untouched, the watchdog sees the NaN, and nothing
non-finite is published. Real DeepSpeed engines on the tiny model; the NaN is injected into the logprobs."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from configs import load_config
from e2e_helpers import toy_overrides

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]


class NanGrad(torch.autograd.Function):
    """Identity forward, NaN backward: a finite loss whose gradient is not."""

    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, g):
        return g * float("nan")


class Injector:
    """Wraps a real PolicyEngine: the logprobs of chosen forward calls come out NaN (``loss``) or with a NaN
    gradient (``grad``); everything else is the engine's own."""

    def __init__(self, policy, plan: dict[int, str]):
        self._p, self.plan, self.calls = policy, plan, 0

    def __getattr__(self, name):
        return getattr(self._p, name)

    def completion_logps(self, batch, temperature, grad=True):
        out = self._p.completion_logps(batch, temperature, grad)
        self.calls += 1
        kind = self.plan.get(self.calls) if grad else None
        if kind == "loss":
            return out * float("nan")
        if kind == "grad":
            return NanGrad.apply(out)
        return out


def samples(vocab, seed):
    from learner.rollouts import Sample

    g = torch.Generator().manual_seed(seed)
    return [Sample([5, 6, 7], torch.randint(3, vocab, (5,), generator=g).tolist(), [-1.0] * 5,
                   (-1.0) ** i, 0.0, 0, False) for i in range(4)]


def state(pol) -> dict:
    """What a skipped step must leave as it was: the adapter as trained (DeepSpeed's fp32 master copy where it keeps
    one: bf16, ZeRO) and Adam's moments, gathered (ZeRO-3)."""
    import deepspeed
    from deepspeed.utils import safe_get_full_fp32_param, safe_get_full_optimizer_state

    params = [(n, p) for n, p in pol.module.named_parameters() if p.requires_grad]
    out = {f"adapter/{k}": v.clone() for k, v in pol.lora_tensors().items()}
    with deepspeed.zero.GatheredParameters([p for _, p in params], enabled=pol.cfg.learner.zero_stage == 3):
        for n, p in params:
            master = safe_get_full_fp32_param(p)
            if master is not None:
                out[f"fp32/{n}"] = master.clone()
            for key in ("exp_avg", "exp_avg_sq"):
                m = safe_get_full_optimizer_state(p, key)
                if m is None:  # plain fp32 without ZeRO: torch's AdamW holds the state
                    m = pol.engine.optimizer.state.get(p, {}).get(key)
                if m is not None:
                    out[f"{key}/{n}"] = m.clone()
    return out


CLEAN: dict = {}
"""(precision, stage) -> the run without the bad step (shared by the loss and grad cases)."""


def run_steps(tiny_model, precision, stage, plan):
    from learner.engine import PolicyEngine
    from learner.step import forward_backward

    cfg = load_config(REPO / "configs" / "smoke_cpu.yaml",
                      [f"model_id={tiny_model}", f"learner.zero_stage={stage}", f"learner.precision={precision}",
                       "learning_rate=1e-2", "lr_scheduler_type=linear", "warmup_ratio=0", "max_steps=10",
                       "learner.share_prompt=false"])
    pol = Injector(PolicyEngine(cfg), plan)
    results = []
    for seed in (1, 2, 3) if plan else (1, 3):
        forward_backward(pol, cfg, samples(pol.vocab_size, seed), None)
        results.append(pol.step())
    return state(pol), results, pol.learning_rate


CASES = [(precision, stage, "grad") for precision in ("fp32", "bf16") for stage in (0, 2, 3)] + [
    ("fp32", 0, "loss"), ("fp32", 2, "loss"), ("bf16", 3, "loss")]
"""A NaN gradient at every precision and stage; a NaN loss (which NaNs the gradient too: the same path in
DeepSpeed, another flag of ours) at three of them."""


@pytest.mark.parametrize(("precision", "stage", "kind"), CASES, ids=["-".join(map(str, c)) for c in CASES])
def test_skipped_step_leaves_no_trace(tiny_model, precision, stage, kind):
    """[s1, bad, s2] gives exactly the parameters of [s1, s2]: no update, no Adam moment, no LR step; in fp32 and
    bf16 (DeepSpeed's BF16_Optimizer at stage 0, fp32 gradient partitions at 2 and 3) and at every ZeRO stage."""
    if (precision, stage) not in CLEAN:
        CLEAN[(precision, stage)] = run_steps(tiny_model, precision, stage, {})
    clean = CLEAN[(precision, stage)]
    bad = run_steps(tiny_model, precision, stage, {2: kind})
    assert bad[1][1].skipped == f"non-finite {'loss' if kind == 'loss' else 'gradient'}"
    assert math.isnan(bad[1][1].grad_norm) and all(r.skipped is None for r in clean[1])
    assert bad[1][0].skipped is None and bad[1][2].skipped is None  # the others trained
    assert clean[2] == bad[2]  # the LR schedule did not advance on the skipped step
    assert set(clean[0]) == set(bad[0]) and any(k.startswith("exp_avg/") for k in clean[0])
    if precision == "bf16":
        assert any(k.startswith("fp32/") for k in clean[0])  # DeepSpeed's fp32 master weights were compared too
    assert [k for k in clean[0] if not torch.equal(clean[0][k], bad[0][k])] == []
    assert all(torch.isfinite(t).all() for t in bad[0].values())


def test_nan_step_is_counted_and_never_published(tiny_model, tmp_path):
    from learner.engine import PolicyEngine
    from learner.rollouts_local import HFLocalActor
    from learner.trainer import Trainer

    cfg = load_config(REPO / "configs" / "smoke_cpu.yaml",
                      toy_overrides(tiny_model, tmp_path / "run", tmp_path / "pairs", max_steps=4,
                                    **{"learner.micro_batch_size": 8, "learner.checkpoint_every": 100}))
    actor = HFLocalActor(cfg.model_id, lora_r=cfg.lora_r, lora_alpha=cfg.lora_alpha, wire_dtype="fp32")
    published = []
    real_publish = actor.publish

    def publish(version, tensors, adapter_config):
        published.append((version, all(bool(torch.isfinite(t).all()) for t in tensors.values())))
        return real_publish(version, tensors, adapter_config)

    actor.publish = publish
    policy = Injector(PolicyEngine(cfg), {2: "loss"})  # the one micro-batch of step 2
    res = Trainer(cfg, actor, actor, policy=policy).run()
    assert res.stopped is None and res.steps == 4 and res.version == 3  # one of four steps did not update
    assert published == [(0, True), (1, True), (2, True), (3, True)]  # the NaN step published nothing
    lines = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    step2 = next(m for m in lines if m["step"] == 2 and "perf/step_s" in m)
    assert step2["train/skipped_step"] == 1.0 and step2["train/skipped_step/non-finite_loss"] == 1.0
    assert step2["train/grad_norm"] is None and step2["train/version"] == 1.0  # NaN is written as null
    spike = [m for m in lines if m.get("watchdog/rule") == "grad_norm_spike"]
    assert [m["step"] for m in spike] == [2]  # the watchdog saw the NaN gradient norm
    assert all(torch.isfinite(p).all() for p in policy.module.parameters())
