"""The red-team search (issue #37): no prompt-agnostic template scores over half on any built-in task.

A GRPO policy is a search; the cheapest thing it learns is one template with slots copied from its prompt. Each
built-in task gets a budgeted search here (``rewards.redteam.red_team``: mutation and recombination of fixed
phrases, the reward's cue words, other prompts' answers and the prompt's own values) on the eval pairs of the
small synthetic build, and its best template must score at most :data:`BOUND`. The same search against the
rewards as they were before #37 (their knobs set back) finds templates above the bound, so the check has teeth.
``python -m rewards.redteam`` runs the full search (BENCHMARKS.md "Rewards under search").
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from commerce.rows import read_pairs
from rewards import make_reward
from rewards.redteam import red_team

REPO = Path(__file__).resolve().parents[2]
BOUND = 0.5
BUDGET, SAMPLE = 160, 32
# insights: each prompt's figures fill the slots in a shuffled order. In their order the best template is the
# reference answers' own (the synthetic facts list the same facts in the same order in 76-88% of the eval prompts,
# and the references are sentences around them): README "Rewards under search".
FIGURES = {"extraction": "ordered", "sql_qa": "ordered", "insights": "any", "push": "ordered"}


@pytest.fixture(scope="module")
def rows(commerce_data):
    return (read_pairs(commerce_data / "pairs" / "eval.jsonl").rows,
            read_pairs(commerce_data / "pairs" / "train.jsonl").rows)


def search(commerce_data, rows, task, budget=BUDGET, seed=0, **knobs):
    fn = make_reward(commerce_data / "commerce.db", **knobs)
    try:
        return red_team(fn, task, rows[0], rows[1], budget, SAMPLE, seed, figures=FIGURES[task])
    finally:
        fn.close()


@pytest.mark.parametrize("task", ["extraction", "sql_qa", "insights", "push"])
def test_no_prompt_agnostic_template_scores_over_half(commerce_data, rows, task):
    found, info = search(commerce_data, rows, task)
    assert info["references"] >= 0.9
    assert found.evaluations == BUDGET
    assert found.score <= BOUND, (f"{task}: a template for every prompt earns {found.score:.3f} "
                                  f"({found.components}): {info['template_text']!r}")


@pytest.mark.parametrize("task,knobs", [
    ("push", {"push": {"salad_penalty": 0.25, "situation_floor": 1.0}}),  # push before #37
    ("insights", {"insights": {"subject_words": 0}}),  # insights before #37: a figure counted anywhere
])
def test_the_search_finds_the_templates_the_old_rewards_paid(commerce_data, rows, task, knobs):
    found, info = search(commerce_data, rows, task, **knobs)
    assert found.score > BOUND + 0.05, (task, found.score, info["template_text"])


def test_the_search_is_seeded(commerce_data, rows):
    a, _ = search(commerce_data, rows, "push", budget=40, seed=3)
    b, _ = search(commerce_data, rows, "push", budget=40, seed=3)
    assert a.template == b.template and a.score == b.score and a.history == b.history


def cli(*args, env=None):
    return subprocess.run([sys.executable, "-m", "rewards.redteam", *args], cwd=REPO, capture_output=True,
                          text=True, env=env, timeout=300)


def test_cli_refuses_an_unknown_task_and_a_bad_budget(commerce_data):
    out = cli("--task", "pushh", "--pairs", str(commerce_data / "pairs" / "eval.jsonl"))
    assert out.returncode == 2 and out.stdout == ""
    assert out.stderr.strip().splitlines() == [
        "rewards.redteam: unknown task 'pushh'; known: extraction, sql_qa, insights, push"]
    out = cli("--task", "push", "--budget", "0")
    assert out.returncode == 2 and out.stderr.strip() == "rewards.redteam: --budget must be at least 1, got 0"


def test_cli_on_a_custom_reward_from_the_config(commerce_data, tmp_path):
    """The user's own reward, named in the run config: the search finds its cheapest template (here: copy the
    quoted keyword of the question, which is all this reward checks), writes JSON and shows a progress bar."""
    (tmp_path / "faq_reward.py").write_text(
        "def score(completions, prompts, keyword=(), **kwargs):\n"
        "    return [1.0 if k in c else 0.0 for c, k in zip(completions, keyword)]\n")
    words = ["pix", "boleto", "troca", "frete", "cupom", "prazo", "nota", "cartao"]
    pairs = tmp_path / "faq.jsonl"
    pairs.write_text("".join(json.dumps({"task": "faq", "keyword": w, "answer": f"Sobre {w}: veja o app.",
                                         "prompt": [{"role": "user", "content": f"Como funciona '{w}' {i}?"}]})
                             + "\n" for i in range(3) for w in words))
    out = cli("--config", "configs/smoke_cpu.yaml", "--set", "rewards.custom={faq: 'faq_reward:score'}",
              "--set", f"data.eval_pairs={pairs}", "--set", f"data.train_pairs={pairs}",
              "--set", f"data.db_path={commerce_data / 'commerce.db'}",
              "--task", "faq", "--budget", "60", "--sample", "12", "--json", str(tmp_path / "out.json"),
              env={"PYTHONPATH": str(tmp_path), "PATH": "/usr/bin:/bin"})
    assert out.returncode == 0, out.stderr
    got = json.loads((tmp_path / "out.json").read_text())["tasks"]["faq"]
    assert got["score"] == 1.0 and "⟦lit1⟧" in got["template_text"] and got["components"] == {}
    assert "faq" in out.stdout and "1.000" in out.stdout
    assert "60/60" in out.stderr  # the progress bar
    out = cli("--config", "configs/smoke_cpu.yaml", "--task", "faqq", "--set", "rewards.custom={faq: 'x:y'}")
    assert out.returncode == 2 and "known: extraction, sql_qa, insights, push, faq" in out.stderr
