"""The handoff's decision tree on synthetic V4.1 histories, one per branch, plus unjudgeable runs."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from learner.decide import decide, main, read_evals


def write_run(tmp_path, curve, tasks_at_end, every=10, steps=600):
    """Eval every `every` steps; mean follows curve(step); per-task values interpolate to tasks_at_end."""
    lines = []
    for step in range(0, steps + 1, every):
        frac = step / steps
        row = {"step": step, "eval/mean_reward": curve(step)}
        for t, end in tasks_at_end.items():
            row[f"eval/{t}"] = 0.17 + (end - 0.17) * frac if t == "extraction" else end * (0.5 + 0.5 * frac)
        lines.append(json.dumps(row))
        lines.append(json.dumps({"step": step, "train/reward": 0.3}))  # train lines are ignored
    (tmp_path / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    return tmp_path


def rising(step):
    return 0.30 + 0.30 * step / 600


def plateau(step):
    return min(0.476, 0.30 + 0.476 * step / 260)


def run_decide(path, capsys):
    assert main([str(path)]) == 0
    return capsys.readouterr().out.splitlines()


def test_scenario_a_when_target_reached(tmp_path, capsys):
    run = write_run(tmp_path, rising, {"extraction": 0.6, "sql_qa": 0.5, "insights": 0.6, "push": 0.7})
    out = run_decide(run, capsys)
    assert out[0] == "Scenario A"
    assert "Run next: configs/v4_2_a_3b.yaml" in out
    assert any(line.strip().startswith("4. eval/mean_reward at the end: 0.600") for line in out)


def test_scenario_b_when_plateau_and_extraction_stuck(tmp_path, capsys):
    run = write_run(tmp_path, plateau, {"extraction": 0.17, "sql_qa": 0.5, "insights": 0.6, "push": 0.7})
    out = run_decide(run, capsys)
    assert out[0] == "Scenario B"
    assert "Run next: configs/v4_2_b_base_sft.yaml" in out
    assert any("plateaued from step" in line for line in out)
    assert any("2. Eval improved past step 130? no" in line for line in out)
    assert any("-> no, the model cannot produce valid JSON yet" in line for line in out)


@pytest.mark.parametrize("task,config", [("extraction", "configs/v4_2_c_extraction.yaml"),
                                         ("sql_qa", "configs/v4_2_c_sql_qa.yaml"),
                                         ("insights", "configs/v4_2_c_insights.yaml")])
def test_scenario_c_names_the_lagging_task(tmp_path, capsys, task, config):
    tasks = {"extraction": 0.5, "sql_qa": 0.5, "insights": 0.5, "push": 0.6}
    tasks[task] = 0.10
    run = write_run(tmp_path, lambda s: 0.30 + 0.2 * s / 600, tasks)
    out = run_decide(run, capsys)
    assert out[0] == f"Scenario C ({task} lags)"
    assert f"Run next: {config}" in out
    assert any(f"3. Lowest task at the end: {task}" in line for line in out)


def test_extraction_under_target_but_improving_is_c_not_b(tmp_path):
    evals = read_evals(write_run(tmp_path, lambda s: 0.3 + 0.2 * s / 600,
                                 {"extraction": 0.15, "sql_qa": 0.5, "insights": 0.5, "push": 0.5}))
    d = decide(evals)
    assert (d.scenario, d.weak_task, d.plateaued) == ("C", "extraction", False)


def test_too_short_or_missing_metrics_exit_2(tmp_path, capsys):
    assert main([str(tmp_path)]) == 2
    assert "no metrics.jsonl" in capsys.readouterr().err
    (tmp_path / "metrics.jsonl").write_text(json.dumps({"step": 1, "train/reward": 0.1}) + "\n")
    assert main([str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "eval points" in err


def test_cli_entry(tmp_path):
    run = write_run(tmp_path, rising, {"extraction": 0.6, "sql_qa": 0.5, "insights": 0.6, "push": 0.7})
    proc = subprocess.run([sys.executable, "-m", "learner.decide", str(run)], capture_output=True, text=True,
                          check=False)
    assert proc.returncode == 0 and proc.stdout.splitlines()[0] == "Scenario A"


def test_no_branch_fits_when_only_push_is_low(tmp_path, capsys):
    """The old demo's end: target missed, no plateau, nothing under Scenario C's thresholds, push weakest."""
    run = write_run(tmp_path, lambda s: 0.42 + 0.05 * s / 600,
                    {"extraction": 0.722, "sql_qa": 0.397, "insights": 0.672, "push": 0.0})
    out = run_decide(run, capsys)
    assert out[0] == "No branch of the handoff's tree fits"
    assert not any("lags)" in line for line in out)
    assert any("weakest task: push (0.000) -- the handoff prescribes no fix for it" in line for line in out)
    assert any(line.strip().startswith("why no branch:") and "sql_qa 0.397 (< 0.2)" in line for line in out)
    assert "Run next: nothing prescribed" in out
    d = decide(read_evals(run))
    assert (d.scenario, d.weak_task, d.next_config) == ("none", None, None)


def test_no_branch_when_every_task_is_middling(tmp_path, capsys):
    run = write_run(tmp_path, lambda s: 0.30 + 0.15 * s / 600,
                    {"extraction": 0.45, "sql_qa": 0.40, "insights": 0.50, "push": 0.48})
    out = run_decide(run, capsys)
    assert out[0] == "No branch of the handoff's tree fits"
    assert any(line.strip() == "weakest task: sql_qa (0.400)" for line in out)


def test_a_lagging_task_is_named_even_when_push_is_weaker(tmp_path, capsys):
    run = write_run(tmp_path, lambda s: 0.30 + 0.15 * s / 600,
                    {"extraction": 0.6, "sql_qa": 0.15, "insights": 0.5, "push": 0.05})
    out = run_decide(run, capsys)
    assert out[0] == "Scenario C (sql_qa lags)"
    assert "Run next: configs/v4_2_c_sql_qa.yaml" in out
    assert any("weakest task: push (0.050) -- the handoff prescribes no fix for it" in line for line in out)
