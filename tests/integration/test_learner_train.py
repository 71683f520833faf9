"""The learner with the real DeepSpeed engine (ZeRO-2, gloo, CPU) on the tiny model, fed by the
in-process HF actor (:mod:`learner.rollouts_local`) with the toy-token stand-in reward."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from configs import load_config
from learner.rollouts_local import HFLocalActor
from e2e_helpers import toy_overrides
from learner.trainer import Trainer

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]


def make(tiny_model, tmp: Path, actor_kwargs=None, reward_fn=None, resume=False, **over):
    over.setdefault("learner.checkpoint_every", 2)
    cfg = load_config(
        REPO / "configs" / "smoke_cpu.yaml", toy_overrides(tiny_model, tmp / "run", tmp / "pairs", **over)
    )
    actor = HFLocalActor(
        cfg.model_id,
        lora_r=cfg.lora_r,
        lora_alpha=cfg.lora_alpha,
        wire_dtype=cfg.sync.wire_dtype,
        **(actor_kwargs or {}),
    )
    return Trainer(cfg, actor, actor, resume=resume, reward_fn=reward_fn), actor


def metrics(run_dir: Path) -> list[dict]:
    return [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_one_step_changes_only_lora_parameters(tiny_model, tmp_path):
    tr, _ = make(tiny_model, tmp_path, max_steps=1, **{"eval.at_start": True, "eval.subset_size": 4})
    before = {n: p.detach().clone() for n, p in tr.policy.module.named_parameters()}
    from sync import RolloutTransport, WeightPublisher

    assert isinstance(tr.transport, RolloutTransport) and isinstance(tr.publisher, WeightPublisher)
    res = tr.run()
    assert res.steps == 1 and res.version == 1 and res.stopped is None
    after = dict(tr.policy.module.named_parameters())
    changed = {n for n in before if not torch.equal(before[n], after[n].detach())}
    assert changed, "nothing was trained"
    assert all("lora_" in n for n in changed), sorted(changed)[:3]
    assert any("lora_B" in n for n in changed)
    # the final adapter is PEFT format, loads in transformers+PEFT and holds the learner's tensors
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    run = tmp_path / "run"
    assert (run / "adapter" / "adapter_config.json").exists() and (
        run / "best" / "adapter_config.json"
    ).exists()
    loaded = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model), run / "adapter")
    ours = tr.policy.lora_tensors()
    theirs = {k.replace(".default", ""): v for k, v in loaded.state_dict().items() if "lora_" in k}
    assert set(ours) == set(theirs)
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)
    lines = metrics(run)
    assert lines[0]["step"] == 0 and "eval/mean_reward" in lines[0] and "eval/best_step" in lines[0]
    step1 = lines[1]
    for key in (
        "train/reward",
        "train/reward_std",
        "train/frac_reward_zero_std",
        "train/completion_length",
        "train/completion_length_min",
        "train/completion_length_max",
        "train/clipped_ratio",
        "train/grad_norm",
        "train/loss",
        "train/learning_rate",
        "train/kl",
        "train/clip_ratio",
        "train/staleness",
        "train/coverage",
        "perf/step_s",
        "perf/generation_wait_s",
        "perf/sync_s",
        "perf/learner_tokens_per_s",
        "perf/actor_tokens_per_s",
    ):
        assert key in step1, key
    assert step1["step"] == 1 and step1["train/grad_norm"] > 0 and step1["train/kl"] == 0.0
    # the in-process actor reports the delta it serves too (read back from its PEFT model)
    assert lines[0]["sync/served_delta_cosine"] == 1.0 and step1["sync/served_delta_cosine"] > 0.999999
    assert step1["train/skipped_completions"] >= 0 and "sync/wire_delta_cosine" in step1


def test_resume_gives_the_same_adapter_as_a_straight_run(tiny_model, tmp_path):
    over = {"max_steps": 4, "lr_scheduler_type": "cosine", "warmup_ratio": 0.25, "learning_rate": 5e-3}
    straight, _ = make(tiny_model, tmp_path / "a", **over)
    straight.run()
    first, _ = make(tiny_model, tmp_path / "b", **over)
    r1 = first.run(stop_after=2)
    assert r1.steps == 2 and r1.stopped == "stop_after 2 steps"
    second, _ = make(tiny_model, tmp_path / "b", resume=True, **over)
    assert second.step == 2 and second.version == 2
    r2 = second.run()
    assert r2.steps == 4
    a = load_file(tmp_path / "a" / "run" / "adapter" / "adapter_model.safetensors")
    b = load_file(tmp_path / "b" / "run" / "adapter" / "adapter_model.safetensors")
    assert set(a) == set(b)
    diff = max(float((a[k] - b[k]).abs().max()) for k in a)
    moved = max(float(a[k].abs().max()) for k in a if "lora_B" in k)
    assert diff == 0.0 and moved > 0, (diff, moved)
    steps = [m["step"] for m in metrics(tmp_path / "b" / "run") if "train/loss" in m]
    assert steps == [1, 2, 3, 4]
    lr_a = [m["train/learning_rate"] for m in metrics(tmp_path / "a" / "run") if "train/loss" in m]
    lr_b = [m["train/learning_rate"] for m in metrics(tmp_path / "b" / "run") if "train/loss" in m]
    assert lr_a == lr_b and lr_a[0] != lr_a[-1]
    ckpts = sorted(p.name for p in (tmp_path / "b" / "run" / "checkpoints").iterdir())
    assert ckpts == ["step-000002", "step-000004"]  # keep_checkpoints 2, no .tmp leftovers


def test_nan_rewards_never_reach_the_optimizer(tiny_model, tmp_path):
    calls = {"n": 0}

    def poisoned(completions, prompts=None, **cols):
        calls["n"] += 1
        if calls["n"] in (3, 4) or cols["task"][0] == "push":  # step 2: every group; push always
            return [math.nan] + [0.5] * (len(completions) - 1)
        return [c.count("a") / max(1, len(c)) for c in completions]

    tr, _ = make(tiny_model, tmp_path, reward_fn=poisoned, max_steps=3, **{"sync.max_staleness": 1})
    res = tr.run()
    assert all(torch.isfinite(p).all() for p in tr.policy.module.parameters())
    lines = [m for m in metrics(tmp_path / "run") if "train/skipped_nan_reward" in m]
    assert sum(m["train/skipped_nan_reward"] for m in lines) >= 2
    assert any(m.get("train/skipped_step") == 1.0 for m in lines)  # the all-NaN step did not update
    assert res.version == res.steps - 1
    assert all(math.isfinite(m.get("train/loss", 0.0)) for m in lines)
    assert tr.totals["skipped_nan_reward"] >= 2


def test_failed_sync_stops_the_run_after_a_checkpoint(tiny_model, tmp_path):
    tr, _ = make(tiny_model, tmp_path, actor_kwargs={"fail_versions": (2,)}, max_steps=5)
    res = tr.run()
    assert res.steps == 2 and res.stopped.startswith("sync failed") and "injected load failure" in res.stopped
    assert (tmp_path / "run" / "checkpoints" / "step-000002" / "trainer_state.json").exists()


def test_watchdog_stop_rule_checkpoints_and_logs(tiny_model, tmp_path):
    rules = "[{name: gn, metric: train/grad_norm, kind: above, threshold: 0.0, action: stop}]"
    tr, _ = make(tiny_model, tmp_path, max_steps=5, watchdog=rules)
    res = tr.run()
    assert res.steps == 1 and res.stopped == "watchdog rule gn"
    assert (tmp_path / "run" / "checkpoints" / "step-000001").is_dir()
    trig = [m for m in metrics(tmp_path / "run") if "watchdog/gn" in m]
    assert len(trig) == 1 and trig[0]["step"] == 1 and trig[0]["watchdog/rule"] == "gn"
    assert trig[0]["watchdog/values"][-1] > 0


def test_probe_gap_and_stale_rollouts(tiny_model, tmp_path):
    tr, _ = make(
        tiny_model,
        tmp_path,
        max_steps=3,
        **{
            "learner.probe_every": 1,
            "sync.max_staleness": 1,
            "sync.wait_for_acks": False,
            "sync.wire_dtype": "fp32",
        },
    )
    tr.run()
    lines = [m for m in metrics(tmp_path / "run") if "train/loss" in m]
    assert all(m["sync/logprob_gap"] < 1e-4 for m in lines)  # same weights on both sides, fp32 wire
    assert [m["train/staleness"] for m in lines] == [0.0, 1.0, 1.0]
    assert [m["train/coverage"] for m in lines] == pytest.approx([2 / 24, 4 / 24, 6 / 24])


def test_lagging_actor_stale_groups_are_dropped_and_re_requested(tiny_model, tmp_path):
    """An actor that loads each version one publication late (acks checked in the background): its groups reach
    staleness 2 > max_staleness 1, are dropped, counted and re-requested; training goes on."""
    tr, actor = make(
        tiny_model,
        tmp_path,
        actor_kwargs={"lag_versions": 1},
        max_steps=4,
        **{"sync.max_staleness": 1, "sync.wait_for_acks": False},
    )
    res = tr.run()
    assert res.stopped is None and res.version == 4
    lines = [m for m in metrics(tmp_path / "run") if "train/loss" in m]
    assert sum(m["train/dropped_stale"] for m in lines) > 0
    assert all(m["train/staleness"] <= 1 for m in lines)
    # one behind the learner while it trained; the run ends only once the last version is acknowledged
    assert actor.version == 4


def test_publish_every_2_with_staleness_1_never_drops_a_batch(tiny_model, tmp_path):
    """publish_every 2 leaves every other batch generated one version behind; requesting max_staleness
    batches ahead on top of that made half of them two versions old, dropped and regenerated. The learner
    requests max_staleness - (publish_every - 1) ahead, so every batch is within the bound."""
    tr, _ = make(tiny_model, tmp_path, max_steps=6, **{"learner.publish_every": 2, "sync.max_staleness": 1})
    assert tr.depth == 0
    res = tr.run()
    assert res.stopped is None and res.version == 6
    lines = [m for m in metrics(tmp_path / "run") if "train/loss" in m]
    assert sum(m["train/dropped_stale"] for m in lines) == 0
    assert sorted({m["train/staleness"] for m in lines}) == [0.0, 1.0]  # both: the bound is used, not exceeded
    pub = [m["step"] for m in lines if m["perf/sync_s"] > 0]
    assert pub == [2, 4, 6]


def test_eval_samples_score_every_completion_of_every_prompt(tiny_model, tmp_path):
    """``eval.samples: 3``: each eval prompt gets three sampled completions; the eval mean is over all of them
    (a prompt's score is their mean) and the noise band (``eval_se/...``) is logged beside it."""
    seen: list[list[float]] = []

    def reward(completions, prompts=None, **cols):
        out = [float(len(c) % 2) for c in completions]  # varies with the sample
        if len(completions) == 12:  # the eval: 4 prompts x 3 samples in one request (train groups are 4)
            seen.append(out)
        return out

    tr, _ = make(tiny_model, tmp_path, reward_fn=reward, max_steps=1,
                 **{"eval.at_start": True, "eval.samples": 3, "eval.temperature": 1.0})
    tr.run()
    first = metrics(tmp_path / "run")[0]
    assert first["step"] == 0 and seen, "no eval request carried 3 completions per prompt"
    assert first["eval/mean_reward"] == pytest.approx(sum(seen[0]) / 12)
    assert "eval_se/mean_reward" in first and first["eval_se/mean_reward"] >= 0.0
