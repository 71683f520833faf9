"""End to end, generation overlaps training: ``sync.max_staleness: 1`` takes less wall time per step
than ``0``.

Two runs of ``launch/cpu.sh`` with the actor and the learner pinned to separate cores
(``--actor-cores 0 --learner-cores 1``, stand-ins for separate GPUs) and generation and training of
similar cost per step on the tiny model (40-token completions, the learner runs micro-batches of 1: at
``max_staleness: 0`` both take ~0.14 s a step on this 2-core box).
With ``max_staleness: 0`` a step is generate, then train, then publish; with ``1`` the actor generates
the next batch (at the previous version) while the learner trains this one. The time per step is the
learner's ``perf/step_s``, median over the steps after the first two. Only the direction is asserted
(timings on a shared box are noisy); the ratio is printed for the record.

Both runs load versions in flight (``actor.load_mode: inflight``, the default): with staleness 1 the next batch is
being generated when the learner publishes, so the actor loads with requests running (its log says so) and some
completions span two versions; every step is trained once, every sync verified, no token staler than the bound.
(``drain`` runs end to end in ``test_e2e_faults.py``'s resumed learner.)
"""

from __future__ import annotations

import os
import statistics

import pytest

from e2e_helpers import (INFLIGHT_LOAD, INLINE, Launch, e2e_overrides, every_load_checked, read_metrics,
                         train_steps)

pytestmark = pytest.mark.slow

STEPS = 12
SETTINGS = {
    "max_steps": STEPS,
    "learning_rate": 1e-3,
    "num_generations": 8,
    "prompts_per_step": 2,
    "max_completion_length": 40,
    "learner.micro_batch_size": 1,
    "learner.checkpoint_every": 100,
    "rewards.toy_token": "q",
    # at most 4 sequences at once: a batch takes the actor longer than a step takes the learner, so with staleness 1
    # each version reaches an actor still generating (a load in flight), on a quiet box as on a loaded one
    "actor.max_num_seqs": 4,
    **INLINE,  # the actor's engine in the actor process, on the actor's cores
}


def step_time(run_dir) -> float:
    rows = [r for r in read_metrics(run_dir) if "perf/step_s" in r]
    assert train_steps(rows) == list(range(1, STEPS + 1))
    return statistics.median(r["perf/step_s"] for r in rows[2:])


@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="needs two cores to pin actor and learner apart")
def test_staleness_one_overlaps_generation_with_training(tiny_model, tmp_path):
    times, parts, mixed = {}, {}, {}
    for staleness in (0, 1):
        key = staleness
        run = tmp_path / f"staleness{staleness}"
        over = e2e_overrides(tiny_model, tmp_path / "pairs", **SETTINGS, **{"sync.max_staleness": staleness})
        with Launch(run, over, tmp_path / f"{run.name}.log", "--actor-cores", "0", "--learner-cores", "1") as la:
            assert la.wait(timeout=300) == 0, la.log()[-4000:]
        times[key] = step_time(run)
        every = [r for r in read_metrics(run) if "perf/step_s" in r]
        rows = every[2:]
        parts[key] = {k: round(statistics.median(r[k] for r in rows), 3)
                      for k in ("perf/train_s", "perf/generation_wait_s", "perf/sync_s", "perf/learner_wait_s")}
        assert all(r["train/token_staleness_max"] <= staleness for r in every), run
        assert all(r["train/dropped_stale"] == 0 and r["train/refused_version"] == 0 for r in every), run
        # the learner's time on anything but its compute: the rest of the step, never more
        assert all(0 <= r["perf/learner_wait_s"] <= r["perf/step_s"] - r["perf/train_s"] + 1e-9 for r in every), run
        allrows = read_metrics(run)
        cos = [r["sync/served_delta_cosine"] for r in allrows if "sync/served_delta_cosine" in r]
        assert min(cos) >= 0.99, run
        every_load_checked(allrows, run)
        mixed[key] = sum(r["train/mixed_version_frac"] * r["train/completions"] for r in every)
        if staleness == 1:  # the publish lands while the next batch is generated: loaded with requests running
            assert INFLIGHT_LOAD.search((run / "logs" / "actor-0.log").read_text()), run
            # and the learner hears of it: a version loaded while the engine kept generating
            assert max(r.get("sync/actor_in_flight", 0) for r in allrows) > 0, run
    ratio = times[1] / times[0]
    print(f"\noverlap: median step_s staleness0 {times[0]:.3f} s, staleness1 {times[1]:.3f} s, "
          f"ratio {ratio:.2f} (settings {SETTINGS}, pinned actor core 0 / learner core 1); "
          f"medians staleness0 {parts[0]}, staleness1 {parts[1]}; completions spanning two versions: "
          f"{mixed[0]:.0f} and {mixed[1]:.0f} of {STEPS * 16}")
    # With staleness 1 the learner never waits for generation after the first step.
    assert parts[1]["perf/generation_wait_s"] < parts[0]["perf/generation_wait_s"]
    assert parts[1]["perf/learner_wait_s"] < parts[0]["perf/learner_wait_s"]
    assert ratio < 1.0, (times, parts)


def test_actor_and_learner_sharing_one_core_run_end_to_end(tiny_model, tmp_path):
    """The one-GPU layout's CPU counterpart (``launch/v4_1_05b.sh --gpus 0`` puts both on one device):
    actor and learner pinned to the same core take turns on it, and the run still trains every step with
    every sync checked (the served delta read back by the actor)."""
    run = tmp_path / "shared"
    over = e2e_overrides(tiny_model, tmp_path / "pairs", **SETTINGS)
    with Launch(run, over, tmp_path / "shared.log", "--actor-cores", "0", "--learner-cores", "0") as la:
        assert la.wait(timeout=300) == 0, la.log()[-4000:]
    assert "actor and learner share CPU cores 0" in (tmp_path / "shared.log").read_text()
    rows = [r for r in read_metrics(run) if "perf/step_s" in r]
    assert train_steps(rows) == list(range(1, STEPS + 1))
    allrows = read_metrics(run)
    assert min(r["sync/served_delta_cosine"] for r in allrows if "sync/served_delta_cosine" in r) >= 0.99
    every_load_checked(allrows, run)
    print(f"\nshared core 0: median step_s {statistics.median(r['perf/step_s'] for r in rows[2:]):.3f} s "
          f"(settings {SETTINGS})")
