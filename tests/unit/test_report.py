"""Plots and report.md from a metrics history (including a line cut by a crash)."""

from __future__ import annotations

import json

from launch.report import main


def test_report_and_plots(tmp_path):
    rows = []
    for step in range(0, 21):
        rows.append({"step": step, "train/reward": 0.1 + step / 40, "train/completion_length": 30 + step,
                     "train/grad_norm": 0.2, "perf/step_s": 1.5})
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
    for png in ("eval_rewards.png", "train_curves.png"):
        assert (tmp_path / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert main([str(tmp_path / "missing")]) == 2
