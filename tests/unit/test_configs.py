"""Run configs: every shipped file validates, scenarios differ from V4.1 exactly as the handoff says,
bad values are refused with the field named, extends and --set work from every command line."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from configs import ConfigError, load_config
from configs.loader import apply_overrides, resolve_file
from configs.schema import RewardsConfig

CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs"
SHIPPED = sorted(CONFIG_DIR.glob("*.yaml"))
# Deployment sections may differ per scenario (GPU split, ports); the handoff speaks of training values.
DEPLOYMENT = {"run_dir", "actor", "learner", "sync", "logging"}


def flat(cfg, prefix="") -> dict:
    out = {}
    for k, v in cfg.items():
        if not prefix and k in DEPLOYMENT:
            continue
        if isinstance(v, dict):
            out.update(flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def diff(a: str, b: str) -> dict:
    fa = flat(load_config(CONFIG_DIR / a).model_dump(mode="json", by_alias=True))
    fb = flat(load_config(CONFIG_DIR / b).model_dump(mode="json", by_alias=True))
    assert fa.keys() == fb.keys()
    return {k: fb[k] for k in fa if fa[k] != fb[k]}


def test_expected_files_are_shipped():
    names = {p.name for p in SHIPPED}
    assert {"v4.yaml", "v4_1.yaml", "v4_2_a_3b.yaml", "v4_2_b_base_sft.yaml", "v4_2_c_extraction.yaml",
            "v4_2_c_sql_qa.yaml", "v4_2_c_insights.yaml", "smoke_cpu.yaml"} <= names


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_every_shipped_config_validates(path):
    cfg = load_config(path)
    assert cfg.run_dir == Path("runs") / path.stem


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_every_shipped_config_evaluates_often_enough_for_the_decision_tree(path):
    from learner.decide import MIN_EVALS

    cfg = load_config(path)
    points = int(cfg.eval.at_start) + (cfg.max_steps // cfg.eval.every if cfg.eval.every else 0)
    assert points >= MIN_EVALS, f"{path.name}: {points} evals, learner.decide needs {MIN_EVALS}"


def test_v4_is_the_baseline():
    cfg = load_config(CONFIG_DIR / "v4.yaml")
    assert (cfg.max_steps, cfg.learning_rate, cfg.lr_scheduler_type, cfg.warmup_ratio) == \
        (200, 2e-6, "cosine", 0.1)
    assert (cfg.num_generations, cfg.max_completion_length, cfg.temperature, cfg.beta) == (16, 512, 1.0, 0.0)
    assert (cfg.scale_rewards, cfg.prompts_per_step, cfg.grad_accum, cfg.lora_r, cfg.lora_alpha) == \
        ("none", 2, 1, 16, 32)


def test_v4_1_is_exactly_the_four_changes():
    assert diff("v4.yaml", "v4_1.yaml") == {
        "max_steps": 600, "learning_rate": 5e-6, "lr_scheduler_type": "constant_with_warmup",
        "warmup_ratio": 0.05}


def test_scenario_a_scales_to_3_7b():
    assert diff("v4_1.yaml", "v4_2_a_3b.yaml") == {
        "model_id": "Polygl0t/Tucano2-qwen-3.7B-Instruct", "num_generations": 8,
        "max_completion_length": 1024, "learning_rate": 2e-6, "max_steps": 400}
    assert load_config(CONFIG_DIR / "v4_2_a_3b.yaml").max_seq_length == 2048


def test_scenario_b_switches_to_base_with_sft():
    assert diff("v4_1.yaml", "v4_2_b_base_sft.yaml") == {
        "model_id": "Polygl0t/Tucano2-qwen-0.5B-Base", "sft.enabled": True}
    cfg = load_config(CONFIG_DIR / "v4_2_b_base_sft.yaml")
    assert cfg.sft.tasks == ["extraction"] and cfg.sft.epochs == 1


def test_scenario_c_variants_touch_only_their_task():
    ext = diff("v4_1.yaml", "v4_2_c_extraction.yaml")
    assert set(ext) == {f"rewards.extraction.weights.{k}" for k in ("schema", "values")}
    assert ext["rewards.extraction.weights.values"] > load_config(
        CONFIG_DIR / "v4_1.yaml").rewards.extraction.weights.values
    assert diff("v4_1.yaml", "v4_2_c_sql_qa.yaml") == {"data.tasks": ["extraction", "push"]}
    ins = diff("v4_1.yaml", "v4_2_c_insights.yaml")
    assert ins.pop("data.insights_pairs") == 350
    assert set(ins) == {"data.train_pairs", "data.eval_pairs", "data.db_path"}


BAD = [
    ("num_generations=1", "num_generations"),
    ("lora_r=0", "lora_r"),
    ("lora_r=12", "lora_r"),
    ("max_completion_length=4096", "max_completion_length"),
    ("warmup_ratio=1.0", "warmup_ratio"),
    ("warmup_ratio=-0.1", "warmup_ratio"),
    ("learning_rate=0", "learning_rate"),
    ("beta=-0.5", "beta"),
    ("lr_scheduler_type=cosine_restarts", "lr_scheduler_type"),
    ("bogus_key=1", "bogus_key"),
    ("actor.bogus=1", "actor.bogus"),
    ("learner.zero_stage=5", "learner.zero_stage"),
    ("sync.host=0.0.0.0", "sync"),
    ("sync.rollout_port=80", "sync.rollout_port"),
    ("actor.serve_mode=lora", "actor.serve_mode"),
    ("watchdog=[{name: x, metric: y, kind: sideways}]", "watchdog.0.kind"),
    # the objective options TRL names (#34)
    ("epsilon_high=0", "epsilon_high"),
    ("delta=0.9", "delta"),
    ("delta=1.1", "delta"),  # within the PPO clip 1 + epsilon
    ("importance_sampling_level=sentence", "importance_sampling_level"),
    ("mask_truncated_completions=maybe", "mask_truncated_completions"),
    ("learner.seq_ratio_band=[1.01,0.99]", "learner.seq_ratio_band"),
    ("rewards.overlong_buffer=0", "rewards.overlong_buffer"),
    ("rewards.overlong_buffer=4096", "rewards.overlong_buffer"),
    ("rewards.overlong_penalty=-1", "rewards.overlong_penalty"),
    ("dynamic_sampling.tol=-0.1", "dynamic_sampling.tol"),
    ("dynamic_sampling.max_rounds=9", "dynamic_sampling.max_rounds"),
    ("dynamic_sampling.max_factor=0.5", "dynamic_sampling.max_factor"),
    ("dynamic_sampling.bogus=1", "dynamic_sampling.bogus"),
]


@pytest.mark.parametrize("override,field", BAD, ids=[b[0] for b in BAD])
def test_bad_values_are_refused_naming_the_field(override, field):
    with pytest.raises(ConfigError) as e:
        load_config(CONFIG_DIR / "v4_1.yaml", [override])
    msg = str(e.value)
    assert "\n" not in msg
    assert f": {field}:" in msg or f": {field} " in msg, msg


def test_inline_engine_needs_one_rank():
    with pytest.raises(ConfigError) as e:
        load_config(CONFIG_DIR / "v4_1.yaml", ["actor.inline_engine=true", "actor.tensor_parallel_size=2"])
    msg = str(e.value)
    assert "\n" not in msg and "actor.inline_engine" in msg and "tensor_parallel_size 1" in msg, msg
    assert load_config(CONFIG_DIR / "v4_1.yaml", ["actor.inline_engine=true"]).actor.inline_engine


def test_scale_rewards_accepts_the_handoffs_booleans():
    assert load_config(CONFIG_DIR / "v4_1.yaml", ["scale_rewards=true"]).scale_rewards == "group"
    assert load_config(CONFIG_DIR / "v4_1.yaml", ["scale_rewards=false"]).scale_rewards == "none"


def test_set_overrides_nested_and_typed():
    cfg = load_config(CONFIG_DIR / "v4_1.yaml", ["learner.zero_stage=3", "sync.max_staleness=0",
                                                 "model_id=models/tiny", "data.tasks=[push]"])
    assert cfg.learner.zero_stage == 3 and cfg.sync.max_staleness == 0
    assert cfg.model_id == "models/tiny" and cfg.data.tasks == ["push"]
    with pytest.raises(ConfigError, match="key=value"):
        apply_overrides({}, ["no_equals_sign"])


def test_extends_chain_and_cycle(tmp_path):
    (tmp_path / "base.yaml").write_text("extends: v.yaml\nmax_steps: 7\n")
    (tmp_path / "v.yaml").write_text((CONFIG_DIR / "v4.yaml").read_text())
    (tmp_path / "child.yaml").write_text("extends: base.yaml\nactor:\n  replicas: 3\n")
    cfg = load_config(tmp_path / "child.yaml")
    assert cfg.max_steps == 7 and cfg.actor.replicas == 3 and cfg.learning_rate == 2e-6
    (tmp_path / "a.yaml").write_text("extends: b.yaml\n")
    (tmp_path / "b.yaml").write_text("extends: a.yaml\n")
    with pytest.raises(ConfigError, match="cycle"):
        resolve_file(tmp_path / "a.yaml")


def test_unreadable_files_give_one_line(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.yaml")
    (tmp_path / "broken.yaml").write_text("max_steps: [1,\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(tmp_path / "broken.yaml")
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(tmp_path / "list.yaml")


def test_every_field_has_a_docstring():
    from pydantic import BaseModel

    from configs.schema import RunConfig

    def walk(model: type[BaseModel], path: str):
        for name, field in model.model_fields.items():
            assert field.description, f"{path}{name} has no docstring"
            ann = field.annotation
            if isinstance(ann, type) and issubclass(ann, BaseModel):
                walk(ann, f"{path}{name}.")

    walk(RunConfig, "")


def test_cli_validate_prints_and_exits(tmp_path):
    ok = subprocess.run([sys.executable, "-m", "configs", "validate", str(CONFIG_DIR / "v4_1.yaml"),
                         "--set", "max_steps=9"], capture_output=True, text=True)
    assert ok.returncode == 0 and "max_steps: 9" in ok.stdout
    bad = subprocess.run([sys.executable, "-m", "configs", "validate", str(CONFIG_DIR / "v4_1.yaml"),
                          "--set", "num_generations=1"], capture_output=True, text=True)
    assert bad.returncode == 2
    assert bad.stderr.strip().count("\n") == 0 and "num_generations" in bad.stderr
    assert "Traceback" not in bad.stderr


def test_publish_every_bound_counts_the_pipelined_batches():
    """A batch is generated by a version up to ``publish_every - 1`` older than the newest published; the
    learner requests ``max_staleness - (publish_every - 1)`` batches ahead, so that must not be negative."""
    assert load_config("smoke_cpu.yaml", ["learner.publish_every=2", "sync.max_staleness=1"])
    assert load_config("smoke_cpu.yaml",
                       ["learner.publish_every=3", "sync.max_staleness=2", "actor.max_lora_versions=3"])
    for every, stale in ((2, 0), (3, 1)):
        with pytest.raises(ConfigError, match="publish_every"):
            load_config("smoke_cpu.yaml", [f"learner.publish_every={every}", f"sync.max_staleness={stale}"])


def test_load_mode_and_lora_slots():
    """``actor.load_mode`` defaults to inflight; ``max_lora_versions`` below the versions live in flight is
    refused in one line naming both fields; drained, any count will do; merged serving ignores it."""
    cfg = load_config("smoke_cpu.yaml", ["sync.max_staleness=2"])
    assert cfg.actor.load_mode == "inflight" and cfg.lora_slots == 3
    assert load_config("smoke_cpu.yaml", ["sync.max_staleness=2", "actor.load_mode=drain"]).lora_slots == 1
    for mode in ("adapter", "auto"):
        with pytest.raises(ConfigError, match="actor.max_lora_versions .1. must be >= sync.max_staleness") as e:
            load_config("smoke_cpu.yaml", ["sync.max_staleness=1", "actor.max_lora_versions=1",
                                           f"actor.serve_mode={mode}"])
        assert "\n" not in str(e.value)
    assert load_config("smoke_cpu.yaml", ["sync.max_staleness=1", "actor.max_lora_versions=1",
                                          "actor.serve_mode=adapter", "actor.load_mode=drain"]).lora_slots == 1
    assert load_config("smoke_cpu.yaml", ["sync.max_staleness=1", "actor.max_lora_versions=1",
                                          "actor.serve_mode=merged"])
    with pytest.raises(ConfigError, match="actor.load_mode"):
        load_config("smoke_cpu.yaml", ["actor.load_mode=pause"])


def test_serve_mode_auto_is_merged_only_in_float32():
    from actor.runtime import serve_mode

    assert serve_mode("auto", "float32") == "merged"
    assert serve_mode("auto", "bfloat16") == "adapter" and serve_mode("auto", "float16") == "adapter"
    assert serve_mode("merged", "bfloat16") == "merged"  # forced: the served-delta cosine then guards it


def test_eval_samples_need_a_sampling_temperature():
    cfg = load_config("smoke_cpu.yaml", ["eval.samples=4", "eval.temperature=1.0"])
    assert cfg.eval.samples == 4
    with pytest.raises(ConfigError, match="eval.samples"):
        load_config("smoke_cpu.yaml", ["eval.samples=4", "eval.temperature=0"])


@pytest.mark.parametrize("override", ["sync.rollout_port=29612", "sync.weight_port=65535"])
def test_the_rendezvous_port_is_kept_free(override):
    """The learner ranks meet on sync.weight_port + 1 (launch plans and Slurm jobs): it must be a port of
    its own, or rank 0's store and the rollout socket fight over it at start."""
    with pytest.raises(ConfigError, match="rendezvous") as e:
        load_config(CONFIG_DIR / "v4_1.yaml", [override])
    assert "\n" not in str(e.value)


def test_reward_defaults_are_the_rewards_own():
    """The run config passes every weight and knob; its defaults are the ones ``rewards`` applies when called
    without them (TRL users, doctests), so no module constant differs from what a config says."""
    from rewards.core import DEFAULT_SHAPING, DEFAULT_WEIGHTS, task_shaping

    kwargs = RewardsConfig().reward_kwargs()
    for task in DEFAULT_WEIGHTS:
        weights, shaping = task_shaping(task, kwargs[task])
        assert weights == task_shaping(task, None)[0]
        assert shaping == DEFAULT_SHAPING[task], task
        assert set(kwargs[task]) == {"weights", *DEFAULT_SHAPING[task]}, task


def test_unknown_reward_knob_and_bad_custom_reward_are_refused(tmp_path):
    with pytest.raises(Exception, match="push.*lenght"):
        load_config(CONFIG_DIR / "smoke_cpu.yaml", ["rewards.push.lenght=1"])
    with pytest.raises(Exception, match="rewards.custom"):
        load_config(CONFIG_DIR / "smoke_cpu.yaml", ["rewards.custom={'my task': 'm:f'}"])
    with pytest.raises(Exception, match="not 'package.module:function'"):
        load_config(CONFIG_DIR / "smoke_cpu.yaml", ["rewards.custom={'mine': 'nofunction'}"])
    with pytest.raises(Exception, match="data.tasks: unknown task 'mine'"):
        load_config(CONFIG_DIR / "smoke_cpu.yaml", ["data.tasks=[push, mine]"])
    cfg = load_config(CONFIG_DIR / "smoke_cpu.yaml", ["rewards.custom={'mine': 'pkg.mod:fn'}"])
    assert cfg.data.tasks == ["extraction", "sql_qa", "insights", "push", "mine"]
    cfg = load_config(CONFIG_DIR / "smoke_cpu.yaml", ["rewards.custom={'mine': 'pkg.mod:fn'}", "data.tasks=[mine]"])
    assert cfg.data.tasks == ["mine"]
