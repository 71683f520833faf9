"""End to end, the system learns, and the weight sync is what carries the learning.

Two runs of ``launch/cpu.sh`` (a real vLLM actor process and a real DeepSpeed learner process over
ZeroMQ) on the tiny model with the toy reward (``rewards.toy_reward("m")``: min(1, count("m") / 4)):

* ``sync.publish_weights: true``: the eval reward (the eval prompts through the actor at the learner's
  current version, sampled at temperature 1 with a fixed seed) rises clearly within 15 steps;
* ``sync.publish_weights: false`` (the ablation: the actor keeps serving v0): it does not rise, although
  the learner trains on the same kind of rollouts.

The model is the tiny fixture with its last norm scaled (``e2e_helpers.sharpen_model``): a random
model's next-token distribution is nearly uniform, and LoRA cannot move it enough for any reward.
"""

from __future__ import annotations

import pytest

from cuda_probes import by_program, poisoning, probes
from e2e_helpers import LEARNING, every_load_checked, learning_run, read_metrics, train_steps

pytestmark = pytest.mark.slow

STEPS = LEARNING["max_steps"]


@pytest.fixture(scope="module")
def learning_runs(tiny_model, tmp_path_factory):
    base = tmp_path_factory.getbasetemp() / "e2e_learning"  # shared with test_e2e_adapter.py
    base.mkdir(exist_ok=True)
    return {publish: learning_run(tiny_model, base, publish) for publish in (True, False)}


def evals(run_dir) -> list[tuple[int, float]]:
    return [(r["step"], r["eval/mean_reward"]) for r in read_metrics(run_dir) if "eval/mean_reward" in r]


def gain(curve: list[tuple[int, float]]) -> float:
    """Mean of the last two evals minus the first (step 0, before any update)."""
    assert curve[0][0] == 0 and len(curve) >= 3, curve
    return (curve[-1][1] + curve[-2][1]) / 2 - curve[0][1]


def test_eval_reward_rises_with_the_weight_sync(learning_runs):
    run = learning_runs[True]
    curve = evals(run)
    print(f"\nsync on, eval/mean_reward by step: {[(s, round(v, 3)) for s, v in curve]}")
    assert [s for s, _ in curve] == [0, 5, 10, 15]
    assert train_steps(read_metrics(run)) == list(range(1, STEPS + 1))
    assert gain(curve) > 0.3, curve
    log = (run / "logs" / "actor-0.log").read_text()
    rows = [r for r in read_metrics(run) if "perf/step_s" in r]
    # a version per step that reached the optimizer: once every group of the toy reward earns the same reward (it
    # saturates within ~6 updates), a step has no nonzero advantage and makes none
    last = STEPS - int(sum(r.get("train/skipped_step/no_signal", 0) for r in rows))
    assert rows[-1]["train/version"] == last, [r.get("train/skipped_step") for r in rows]
    assert f"serving v{last}" in log  # the actor followed the learner to the last version
    assert "merged mode, float32" in log
    # every sync measured: the float32 merged engine serves the delta the learner trained
    syncs = [r for r in read_metrics(run) if "sync/served_delta_cosine" in r]
    every_load_checked(read_metrics(run), run, last)
    assert all(r["sync/served_delta_cosine"] > 0.999 for r in syncs), [r["sync/served_delta_cosine"] for r in syncs]


def test_eval_reward_stays_flat_without_the_weight_sync(learning_runs):
    run = learning_runs[False]
    curve = evals(run)
    print(f"\nsync off, eval/mean_reward by step: {[(s, round(v, 3)) for s, v in curve]}")
    assert [s for s, _ in curve] == [0, 5, 10, 15]
    assert abs(gain(curve)) < 0.1, curve
    rows = [r for r in read_metrics(run) if "perf/step_s" in r]
    assert [r["step"] for r in rows] == list(range(1, STEPS + 1))
    # The learner trained (a version per step that reached the optimizer) on every rollout, all from v0, none
    # dropped as stale.
    assert rows[-1]["train/version"] == STEPS - sum(r.get("train/skipped_step/no_signal", 0) for r in rows)
    assert all(r["train/dropped_stale"] == 0 and r["train/staleness"] == 0 for r in rows)
    assert sum(r["train/completions"] for r in rows) == STEPS * 2 * 8
    log = (run / "logs" / "actor-0.log").read_text()
    assert "serving v0" in log and "serving v1 " not in log  # only the first version was published


def test_no_process_of_a_run_probes_cuda_in_a_way_that_poisons_a_fork(learning_runs):
    """Every CUDA probe the launcher, the actor (and its engine) and the learner made during the run, recorded by
    ``tests/cuda_probe``: on CUDA vLLM forks its EngineCore, and a ``torch.cuda.is_available()`` made before without
    ``PYTORCH_NVML_BASED_CUDA_CHECK=1`` would kill it at every start ("Cannot re-initialize CUDA in forked
    subprocess"). The actor's own probe (``actor.__main__``) must be among the records: the recorder was on."""
    run = learning_runs[True]
    records = probes(run.parent / f"{run.name}-cuda-probes")
    progs = by_program(records)
    assert "actor" in progs and "learner" in progs, sorted(progs)
    assert any("/actor/" in r["caller"] for r in progs["actor"]), progs["actor"]
    bad = poisoning(records)
    assert not bad, "\n".join(f"{r['argv']} at {r['caller']}" for r in bad)
