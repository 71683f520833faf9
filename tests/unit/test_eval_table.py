"""``python -m learner.evaluate``'s table: each task and each reward component side by side, each change against the
first candidate with the noise of the paired difference (the same prompts and seeds for every candidate)."""

from __future__ import annotations

import math

import pytest

from learner.eval_cli import Candidate, paired, table


def prompts(scores, comps):
    return [{"task": t, "score": s, "components": c} for (t, s), c in zip(scores, comps, strict=True)]


A = prompts([("push", 0.2), ("push", 0.4), ("sql_qa", 0.0), ("sql_qa", 0.5)],
            [{"push/length": 1.0}, {"push/length": 0.5}, {"sql_qa/executes": 0.0}, {"sql_qa/executes": 1.0}])
B = prompts([("push", 0.6), ("push", 0.6), ("sql_qa", 0.1), ("sql_qa", 0.5)],
            [{"push/length": 1.0}, {"push/length": 1.0}, {"sql_qa/executes": 1.0}, {}])


def metrics(p):
    by = {}
    for x in p:
        by.setdefault(x["task"], []).append(x["score"])
    m = {f"eval/{t}": sum(v) / len(v) for t, v in by.items()}
    m["eval/mean_reward"] = sum(x["score"] for x in p) / len(p)
    for key in {k for x in p for k in x["components"]}:
        vals = [x["components"][key] for x in p if key in x["components"]]
        m[f"eval/{key}"] = sum(vals) / len(vals)
    return m


def test_the_noise_of_a_change_is_twice_the_standard_error_of_the_paired_differences():
    d = [0.4, 0.2, 0.1, 0.0]   # B - A on the four prompts
    mean = sum(d) / 4
    se = math.sqrt(sum((x - mean) ** 2 for x in d) / 3 / 4)
    assert paired(A, B, None, None) == pytest.approx((mean, 2 * se, 4))
    assert paired(A, B, None, "push") == pytest.approx((0.3, 0.2, 2))   # differences 0.4 and 0.2: s.e. 0.1
    # a component is paired over the prompts where both candidates have it (sql_qa/executes: only the first)
    assert paired(A, B, "sql_qa/executes", None) == pytest.approx((1.0, 0.0, 1))
    assert paired(A, B, "push/length", None) == pytest.approx((0.25, 0.5, 2))


def test_the_table_puts_tasks_and_components_side_by_side():
    a, b = Candidate("base", None, 0, metrics(A), A), Candidate("v41", None, 1, metrics(B), B)
    text, diffs = table([a, b])
    lines = text.splitlines()
    assert lines[0].split() == ["metric", "base", "v41", "(change,", "noise)"]
    labels = [ln.split()[0] for ln in lines[2:]]
    assert labels == ["mean_reward", "push", "push/length", "sql_qa", "sql_qa/executes"]
    push = next(ln for ln in lines if ln.startswith("push "))
    assert push.split()[1:3] == ["0.300", "0.600"] and "(+0.300 ±" in push
    assert {d["metric"] for d in diffs} == {"eval/mean_reward", "eval/push", "eval/push/length", "eval/sql_qa",
                                            "eval/sql_qa/executes"}
    assert all(d["candidate"] == "v41" and d["against"] == "base" for d in diffs)
    assert next(d for d in diffs if d["metric"] == "eval/push")["beyond_noise"] is True
