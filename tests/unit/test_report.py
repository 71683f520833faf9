"""Plots and report.md from a metrics history (including a line cut by a crash)."""

from __future__ import annotations

import json

import pytest

from launch.report import main


def test_report_and_plots(tmp_path):
    rows = []
    for step in range(0, 21):
        rows.append({"step": step, "train/reward": 0.1 + step / 40, "train/completion_length": 30 + step,
                     "train/grad_norm": 0.2, "perf/step_s": 1.5, "perf/learner_wait_s": 0.3 if step % 2 else 0.0})
        if step % 5 == 0:
            rows.append({"step": step, "eval/mean_reward": 0.2 + step / 50, "eval/extraction": 0.1 + step / 40,
                         "eval/sql_qa": 0.3, "eval/insights": 0.2, "eval/push": 0.4})
    text = "\n".join(json.dumps(r) for r in rows) + '\n{"step": 21, "train/rew'  # crash mid-line
    (tmp_path / "metrics.jsonl").write_text(text)
    assert main([str(tmp_path)]) == 0
    md = (tmp_path / "report.md").read_text()
    assert "| extraction | 0.100 | 0.600 | +0.500 |" in md
    assert "| mean_reward | 0.200 | 0.600 | +0.400 |" in md
    assert "Best eval/mean_reward: 0.600 at step 20." in md
    assert "waited (rollouts, publishing, acknowledgements, probes) 0.14 s a step: 10% of the step time" in md
    for png in ("eval_rewards.png", "train_curves.png"):
        assert (tmp_path / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert main([str(tmp_path / "missing")]) == 2


def test_report_carries_the_noise_band_when_evals_have_standard_errors(tmp_path):
    rows = [{"step": 0, "train/reward": 0.1, "train/completion_length": 80.0, "train/clipped_ratio": 0.5},
            {"step": 10, "train/reward": 0.3, "train/completion_length": 60.0, "train/clipped_ratio": 0.0}]
    for step, v in ((0, 0.4), (10, 0.5)):
        rows.append({"step": step, "eval/mean_reward": v, "eval/push": v, "eval_se/mean_reward": 0.03,
                     "eval_se/push": 0.04})
    (tmp_path / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    assert main([str(tmp_path)]) == 0
    md = (tmp_path / "report.md").read_text()
    assert "| push | 0.400 | 0.500 | +0.100 | 0.113 |" in md  # 2 * sqrt(0.04^2 + 0.04^2)
    assert "| mean_reward | 0.400 | 0.500 | +0.100 | 0.085 |" in md
    assert "train/clipped_ratio, mean of the first and the last 1 steps: 0.50 -> 0.00" in md


def test_report_names_the_component_that_moved_most_and_the_runs_own_tasks(tmp_path):
    import doctest

    import launch.report as R

    assert doctest.testmod(R).attempted >= 2 and doctest.testmod(R).failed == 0
    rows = []
    for step, k in ((0, 0.0), (50, 1.0)):
        rows.append({"step": step, "eval/mean_reward": 0.4 + 0.1 * k, "eval/sql_qa": 0.3 + 0.1 * k,
                     "eval/sql_qa/executes": 0.5 + 0.4 * k, "eval/sql_qa/result_match": 0.1 + 0.05 * k,
                     "eval/faq": 0.2 + 0.3 * k, "eval_se/mean_reward": 0.02, "eval_se/sql_qa": 0.03,
                     "eval_se/faq": 0.05})
    (tmp_path / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    assert main([str(tmp_path)]) == 0
    md = (tmp_path / "report.md").read_text()
    assert "| sql_qa | 0.300 | 0.400 | +0.100 | 0.085 | executes +0.400 |" in md
    assert "| faq | 0.200 | 0.500 | +0.300 | 0.141 | |" in md  # a task of the run's own: no components


def test_eval_standard_errors_are_over_prompts():
    import doctest

    import learner.evaluate as E

    assert doctest.testmod(E).attempted > 0 and doctest.testmod(E).failed == 0
    se = E.standard_errors([0.25, 0.75] * 8, ["push"] * 16)  # sample std 0.258, n 16
    assert se["eval_se/push"] == se["eval_se/mean_reward"] == 0.064550


def test_compare_race_arithmetic():
    """The side-by-side's finish line: the moving average and the first time it reaches a target."""
    import doctest

    import launch.race as C
    import launch.racewatch as W

    assert doctest.testmod(C).attempted >= 4 and doctest.testmod(C).failed == 0
    assert doctest.testmod(W).attempted >= 1 and doctest.testmod(W).failed == 0
    curve = C.race([{"step_s": 2.0, "reward": 0.0}, {"step_s": 1.0, "reward": 1.0}, {"step_s": 1.0, "reward": 1.0}], 2)
    assert curve == {"clock_s": [2.0, 3.0, 4.0], "ma": [0.0, 0.5, 1.0]}
    assert C.time_to(curve, 0.5) == 3.0 and C.time_to(curve, 1.01) is None


def test_load_modes_run_metrics():
    """launch.load_modes' per-run figures: tokens delivered per second of training, median s/step past the
    first step, the mean share of mixed-version completions."""
    from launch.load_modes import run_metrics

    rows = [{"step_s": 4.0, "reward": 0.0, "completions": 8, "completion_length": 10.0, "mixed_version_frac": 0.0},
            {"step_s": 1.0, "reward": 1.0, "completions": 8, "completion_length": 20.0, "mixed_version_frac": 0.5},
            {"step_s": 3.0, "reward": 1.0, "completions": 4, "completion_length": 15.0, "mixed_version_frac": 0.25}]
    m = run_metrics(rows, 2)
    assert m["actor_tokens_per_s"] == (80 + 160 + 60) / 8.0
    assert m["step_s"] == 2.0 and m["mixed_version_frac"] == 0.25
    assert m["curve"]["clock_s"] == [4.0, 5.0, 8.0]
    assert m["learner_wait_frac"] != m["learner_wait_frac"]  # NaN: no run logged it
    rows[1]["learner_wait_s"], rows[2]["learner_wait_s"] = 0.5, 0.1
    rows[1]["generation_s"] = 0.4
    m = run_metrics(rows, 2)
    assert m["learner_wait_frac"] == pytest.approx(0.6 / 4.0)  # past the first step
    assert m["overhead_frac"] == pytest.approx(0.2 / 4.0)  # less the wait for rollouts


def test_load_modes_variants_name_their_overrides():
    from launch.load_modes import MODES, parse_variants

    assert parse_variants(MODES) == {"inflight": ["actor.load_mode=inflight"], "drain": ["actor.load_mode=drain"]}
    assert parse_variants("bg:sync.wait_for_acks=false;block:sync.wait_for_acks=true,seed=3")["block"] == [
        "sync.wait_for_acks=true", "seed=3"]
    for bad in ("bg:sync.wait_for_acks", "only:a=1", "two words:a=1;b:a=2"):
        with pytest.raises(ValueError, match="--variants"):
            parse_variants(bad)


def test_compare_pairs_each_seed_and_reports_median_and_spread():
    """Ours against a peer seed by seed (both trained on that seed's prompts), then median and min-max."""
    import pytest

    import launch.race as C

    def res(system, seed, rewards, step_s):
        return C.summarize(system, seed, [{"step_s": step_s, "reward": r} for r in rewards], 1)

    rs = [res("ours", 42, [0.0, 1.0, 1.0], 1.0), res("trl_x", 42, [0.0, 0.5, 0.9], 3.0),
          res("ours", 43, [0.0, 0.2, 0.4], 1.0), res("trl_x", 43, [0.0, 0.8, 0.8], 2.0),
          res("trl_x", 44, [0.0, 0.1, 0.2], 1.0)]  # a seed ours did not run: left out, not paired with another
    out = C.races(rs, ("trl_x", "trl_y"))
    assert set(out) == {"trl_x"}
    per = out["trl_x"]["per_seed"]
    # seed 42: the line is 0.9 (the peer's final): ours at 2 s, the peer at 9 s; seed 43: 0.4 (ours): 3 s vs 4 s
    assert [(p["seed"], p["target"], p["time_ours_s"], p["time_peer_s"]) for p in per] == [
        (42, 0.9, 2.0, 9.0), (43, 0.4, 3.0, 4.0)]
    assert out["trl_x"]["ratio"] == {"median": pytest.approx((4.5 + 4 / 3) / 2), "min": pytest.approx(4 / 3),
                                     "max": 4.5, "n": 2}
    systems = C.per_system(rs)
    assert systems["trl_x"]["seeds"] == [42, 43, 44] and systems["ours"]["step_s"]["median"] == 1.0


def test_compare_races_the_seed_averaged_curves():
    """The race on the seed-averaged curves: per step the mean clock and reward over the seeds both ran, the finish
    line the lower final mean, its spread the reward's standard deviation over seeds there."""
    import pytest

    import launch.race as C

    def res(system, seed, rewards, step_s):
        return C.summarize(system, seed, [{"step_s": step_s, "reward": r} for r in rewards], 1)

    rs = [res("ours", 42, [0.0, 1.0, 1.0], 1.0), res("trl_x", 42, [0.0, 0.5, 0.9], 3.0),
          res("ours", 43, [0.0, 0.2, 0.4], 1.0), res("trl_x", 43, [0.0, 0.8, 0.8], 2.0),
          res("trl_x", 44, [0.0, 0.1, 0.2], 1.0)]
    av = C.averaged_races(rs, ("trl_x", "trl_y"))["trl_x"]
    # ours: clock 1, 2, 3 and reward 0, 0.6, 0.7; the peer (seeds 42, 43): clock 2.5, 5, 7.5 and 0, 0.65, 0.85
    assert av["seeds"] == [42, 43] and av["target"] == pytest.approx(0.7)
    assert av["time_ours_s"] == 3.0 and av["time_peer_s"] == 7.5 and av["ratio"] == pytest.approx(2.5)
    assert av["target_sd"] == pytest.approx(max(0.42426, 0.07071), abs=1e-4)


def test_compare_set_reaches_trl_under_its_names(tmp_path, single_process):
    """``launch.compare --set`` gives both systems one config: GRPOTrainer gets the objective options TRL names,
    the overlong punishment as TRL's own reward function weighted by the penalty, and a note of what it lacks."""
    from configs import load_config
    from launch.compare import DEMO_CONFIG, race_sets
    from launch.trl_peer import grpo_args, not_in_trl, trl_rewards

    sets = race_sets(sft=None, steps=4, seed=1, tasks=["push"], num_generations=4, prompts_per_step=2,
                     max_completion_length=32, learning_rate=1e-3, temperature=1.0, model="models/small-pt")
    plain = load_config(DEMO_CONFIG, sets)
    assert not_in_trl(plain) == [] and trl_rewards(plain, len) == ([len], None)
    cfg = load_config(DEMO_CONFIG, sets + ["epsilon_high=0.28", "delta=4", "importance_sampling_level=sequence",
                                           "mask_truncated_completions=true", "rewards.overlong_buffer=8",
                                           "rewards.overlong_penalty=0.5", "dynamic_sampling.enabled=true"])
    funcs, weights = trl_rewards(cfg, len)
    args = grpo_args(cfg, str(tmp_path), vllm=False, reward_weights=weights)
    assert (args.epsilon, args.epsilon_high, args.delta) == (0.2, 0.28, 4.0)
    assert args.importance_sampling_level == "sequence" and args.mask_truncated_completions is True
    assert weights == [1.0, 0.5] and args.reward_weights == [1.0, 0.5]
    assert funcs[1](completion_ids=[[1] * 24, [1] * 28, [1] * 32]) == [0.0, -0.5, -1.0]  # TRL's, unscaled
    assert not_in_trl(cfg) == ["dynamic_sampling.enabled"]
