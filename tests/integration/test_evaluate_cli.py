"""``python -m learner.evaluate``: a run's adapters and the base through a real actor (vLLM), the run's own eval: the
numbers agree exactly with the run's ``metrics.jsonl`` at the steps the adapters were saved; and each bad input as one
line and exit 2. The run is the learning proof's (``e2e_helpers.learning_run``, made once per session)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from e2e_helpers import learning_run
from learner.metrics import read_metrics

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def run(tiny_model, tmp_path_factory):
    base = tmp_path_factory.getbasetemp() / "e2e_learning"  # shared with test_e2e_learning.py, test_e2e_adapter.py
    base.mkdir(exist_ok=True)
    return learning_run(tiny_model, base, publish=True)


def test_adapters_side_by_side_agree_with_the_runs_own_eval(run, tmp_path):
    evals = {r["step"]: r for r in read_metrics(run) if "eval/mean_reward" in r}
    last = max(evals)
    best_step = int(evals[last]["eval/best_step"])
    out = tmp_path / "ev"
    cmd = [sys.executable, "-m", "learner.evaluate", "--config", str(run / "config.yaml"), "--base",
           "--adapter", f"final={run / 'adapter'}", "--adapter", f"best={run / 'best'}", "--out", str(out)]
    r = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads((out / "evaluate.json").read_text())
    got = {c["name"]: c["metrics"] for c in res["candidates"]}
    for name, step in (("base", 0), ("final", last), ("best", best_step)):
        want = {k: v for k, v in evals[step].items() if k.startswith(("eval/", "eval_se/"))
                and k not in ("eval/best_mean_reward", "eval/best_step")}
        assert got[name] == want, (name, step)   # exactly the run's eval of that version
    assert got["final"]["eval/mean_reward"] > got["base"]["eval/mean_reward"]
    # the table: every candidate side by side, each change against the first with its (paired) noise
    table = r.stdout[r.stdout.index("metric"):]
    head, mean = table.splitlines()[0], next(ln for ln in table.splitlines() if ln.startswith("mean_reward"))
    assert head.split()[:4] == ["metric", "base", "final", "(change,"]
    change = got["final"]["eval/mean_reward"] - got["base"]["eval/mean_reward"]
    diff = next(d for d in res["differences"] if d["metric"] == "eval/mean_reward" and d["candidate"] == "final")
    assert abs(diff["change"] - change) < 1e-9 and diff["noise_2se"] > 0 and diff["prompts"] == res["eval"]["prompts"]
    assert f"{change:+.3f} ± {diff['noise_2se']:.3f}" in mean
    assert "evaluate: 100%" in r.stderr   # the progress bar
    assert "INFO" not in r.stdout + r.stderr and "Successfully" in (out / "logs" / "actor-0.log").read_text()


@pytest.mark.parametrize("case", ["nothing", "not an adapter", "another base", "no eval pairs", "no model"])
def test_bad_input_is_one_line_and_exit_2(run, tmp_path, capsys, case):
    from learner.eval_cli import main

    argv = ["--config", str(run / "config.yaml"), "--out", str(tmp_path / "ev")]
    if case == "nothing":
        want = "nothing to evaluate: give --adapter DIR (repeatable) and/or --base"
    elif case == "not an adapter":
        argv += ["--adapter", str(tmp_path)]
        want = f"--adapter {tmp_path}: not a PEFT adapter directory"
    elif case == "another base":
        other = tmp_path / "other"
        shutil.copytree(run / "adapter", other)
        conf = json.loads((other / "adapter_config.json").read_text())
        conf["base_model_name_or_path"] = "Polygl0t/Tucano2-qwen-3.7B-Instruct"
        (other / "adapter_config.json").write_text(json.dumps(conf))
        argv += ["--adapter", str(other)]
        want = f"--adapter {other} was trained on Polygl0t/Tucano2-qwen-3.7B-Instruct, the config evaluates"
    elif case == "no eval pairs":
        argv += ["--base", "--set", f"data.eval_pairs={tmp_path / 'none.jsonl'}"]
        want = f"eval pairs not found: {tmp_path / 'none.jsonl'}"
    else:
        argv += ["--base", "--set", f"model_id={tmp_path / 'no-model'}"]
        want = f"model {tmp_path / 'no-model'} not found"
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("evaluate: ") and want in err, err
    assert not (tmp_path / "ev").exists()


def test_help():
    r = subprocess.run([sys.executable, "-m", "learner.evaluate", "--help"], cwd=REPO, capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0 and "--adapter" in r.stdout and "--base" in r.stdout
