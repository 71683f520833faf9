"""Dynamic sampling and the no-signal step, on the real DeepSpeed learner (tiny model, in-process HF actor).

The reward is chosen per prompt so that the share of groups with no spread is known: the toy pairs number their
prompts (``numero N``); an even N gets the same reward for every completion (a degenerate group), an odd N rewards
completions alternately 0 and 1 (every advantage +-0.5).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

from configs import load_config
from e2e_helpers import toy_overrides
from learner.rollouts_local import HFLocalActor
from learner.trainer import Trainer

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]


def half_flat(completions, prompts=None, **cols):
    n = int(re.search(r"numero (\d+)", prompts[0][-1]["content"]).group(1))
    return [0.5] * len(completions) if n % 2 == 0 else [float(k % 2) for k in range(len(completions))]


def all_flat(completions, prompts=None, **cols):
    return [0.5] * len(completions)


def make(tiny_model, tmp: Path, reward_fn, **over):
    over = toy_overrides(tiny_model, tmp / "run", tmp / "pairs", **over)
    cfg = load_config(REPO / "configs" / "smoke_cpu.yaml", over)
    actor = HFLocalActor(cfg.model_id, lora_r=cfg.lora_r, lora_alpha=cfg.lora_alpha, wire_dtype=cfg.sync.wire_dtype)
    return Trainer(cfg, actor, actor, reward_fn=reward_fn), actor


def steps(run_dir: Path) -> list[dict]:
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if "perf/step_s" in r]


def lora(tr) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in tr.policy.lora_tensors().items()}


def drained(tr, actor) -> bool:
    """Every request the learner made was waited for and answered: nothing is left in the actor's queue or the
    broker's (a dropped group left nothing waiting)."""
    return not actor._queue and not tr.broker.done and not tr.broker.items


def test_degenerate_groups_are_replaced_and_spares_banked(tiny_model, tmp_path):
    tr, actor = make(tiny_model, tmp_path, half_flat, max_steps=3, **{
        "sync.max_staleness": 1, "dynamic_sampling.enabled": True, "dynamic_sampling.max_rounds": 2,
        "dynamic_sampling.max_factor": 3.0})
    res = tr.run()
    assert res.stopped is None and res.version == 3 and drained(tr, actor)
    rows = steps(tmp_path / "run")
    assert len(rows) == 3
    for r in rows:
        # the step trained P = 2 informative groups of G = 4 (none of it skipped for a zero advantage) unless
        # the budget ran out, and said so
        if r["dynamic/underfilled"] == 0:
            assert r["train/completions"] == 8 and r["dynamic/groups_trained"] == 2
        assert r["train/skipped_completions"] == 0
        assert r["dynamic/groups_dropped"] == r["dynamic/groups_scored"] * (1 - r["dynamic/keep_rate"])
        # the watchdog's share is over every group scored this step, before the filter
        assert r["train/frac_reward_zero_std"] == pytest.approx(1 - r["dynamic/keep_rate"])
        assert r["dynamic/groups_requested"] <= 6  # max_factor x P
        assert r["sampling/k3"] >= 0 and "sampling/importance_sampling_ratio/max" in r
    assert sum(r["dynamic/groups_dropped"] for r in rows) >= 2
    assert any(r["dynamic/rounds"] > 1 for r in rows), "no step topped up"
    assert any(r["dynamic/groups_requested"] > 2 for r in rows[1:]), "requests ahead did not grow with the share"
    assert any(r["dynamic/bank_used"] > 0 or r["dynamic/groups_banked"] > 0 for r in rows), "nothing was banked"
    assert rows[-1]["dynamic/degenerate_share"] > 0.2


@pytest.mark.parametrize("dynamic", [False, True], ids=["plain", "dynamic"])
def test_a_step_with_nothing_to_learn_makes_no_optimizer_step(tiny_model, tmp_path, dynamic):
    """Every group without spread: no optimizer step (AdamW would apply a momentum-only update), the version stays,
    and with dynamic sampling the top-ups end at the budget without a deadlock."""
    tr, actor = make(tiny_model, tmp_path, all_flat, max_steps=2, **{
        "sync.max_staleness": 1, "dynamic_sampling.enabled": dynamic, "dynamic_sampling.max_rounds": 2,
        "dynamic_sampling.max_factor": 2.0})
    before = lora(tr)
    res = tr.run()
    assert res.stopped is None and res.steps == 2 and res.version == 0 and drained(tr, actor)
    after = lora(tr)
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert tr.policy.engine.global_steps == 0
    rows = steps(tmp_path / "run")
    assert all(r["train/skipped_step"] == 1.0 and r["train/frac_reward_zero_std"] == 1.0 for r in rows)
    assert all(r["train/version"] == 0 for r in rows)
    if dynamic:
        assert all(r["train/skipped_step/no_rollouts"] == 1.0 and r["dynamic/underfilled"] == 1.0 for r in rows)
        assert rows[-1]["dynamic/underfilled_steps"] == 2
        # step 1 asked 2 ahead and topped up to the cap (2 x P); later steps ask the cap ahead (share 1)
        assert all(r["dynamic/groups_requested"] == 4 for r in rows) and rows[0]["dynamic/rounds"] == 2
    else:
        assert all(r["train/skipped_step/no_signal"] == 1.0 and r["train/completions"] == 8 for r in rows)
