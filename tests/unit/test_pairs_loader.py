"""The learner's pair loader on a user's own rows: TRL's formats, rows without a task, malformed rows.

Every accepted format must give the very PromptItems our format gives; a row without ``task`` is
classified and that task reaches the reward and the per-task eval; a malformed row is refused with
``FILE:LINE: FIELD: reason`` and the share of them decides whether the run starts.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest

from commerce.rows import MAX_BAD_SHARE, BadRowsWarning, PairsError, read_pairs
from learner.data import load_items, per_task_means
from rewards import make_reward
from pair_files import rows_of, write

REPO = Path(__file__).resolve().parents[2]


def user_only(r: dict) -> str:
    return next(m["content"] for m in r["prompt"] if m["role"] == "user")


@pytest.fixture(scope="module")
def ours(commerce_data) -> list[dict]:
    return rows_of(commerce_data / "pairs" / "eval.jsonl")


def variant(rows: list[dict], fn) -> list[dict]:
    out = []
    for r in rows:
        r = json.loads(json.dumps(r))
        fn(r)
        out.append(r)
    return out


def _no_task(r):
    r.pop("task")


def _messages(r):
    r["messages"] = r.pop("prompt") + [{"role": "assistant", "content": r.pop("answer")}]


def _completion_str(r):
    r["completion"] = r.pop("answer")


def _completion_msgs(r):
    r["completion"] = [{"role": "assistant", "content": r.pop("answer")}]


def _trl_standard(r):  # TRL's prompt-completion format, plain strings, no task: what a user's script writes
    r["prompt"] = user_only(r)
    r["completion"] = r.pop("answer")
    r.pop("task")


@pytest.mark.parametrize("name,fn", [("no task column", _no_task), ("messages", _messages),
                                     ("completion string", _completion_str),
                                     ("completion messages", _completion_msgs),
                                     ("messages, no task", lambda r: (_messages(r), _no_task(r)))])
def test_each_format_gives_the_same_items_as_ours(tmp_path, commerce_data, ours, name, fn):
    want = load_items(commerce_data / "pairs" / "eval.jsonl")
    got = load_items(write(tmp_path / "v.jsonl", variant(ours, fn)))
    assert len(got) == len(want) == len(ours)
    assert got == want, name


@pytest.mark.parametrize("fn", [lambda r: r.update(prompt=user_only(r)), _trl_standard])
def test_string_prompt_is_one_user_message(tmp_path, ours, fn):
    as_ours = variant(ours, lambda r: r.update(prompt=[{"role": "user", "content": user_only(r)}]))
    want = load_items(write(tmp_path / "ours.jsonl", as_ours))
    got = load_items(write(tmp_path / "v.jsonl", variant(ours, fn)))
    assert got == want
    assert all(it.messages == [{"role": "user", "content": user_only(r)}] for it, r in zip(got, ours, strict=True))


def test_messages_without_a_final_assistant_turn_are_a_prompt_only_row(tmp_path, ours):
    r = ours[0]
    row = {"messages": r["prompt"], "reference": r["reference"]}
    (it,) = load_items(write(tmp_path / "p.jsonl", [row]))
    assert it.messages == r["prompt"] and "answer" not in it.columns and it.task == r["task"]


def test_classified_task_reaches_the_reward_and_the_per_task_eval(tmp_path, commerce_data, ours):
    items = load_items(write(tmp_path / "notask.jsonl", variant(ours, _no_task)))
    assert [it.task for it in items] == [r["task"] for r in ours]
    assert all(it.columns["task"] == it.task for it in items)
    # the eval path (learner.evaluate): the items' columns go to the reward, their task to per_task_means
    fn = make_reward(commerce_data / "commerce.db")
    try:
        cols: dict[str, list] = {}
        for it in items:
            for k, v in it.columns.items():
                cols.setdefault(k, []).append(v)
        answers = [it.columns["answer"] for it in items]
        # without prompts the reward could only classify the completion text: the column is what it reads
        assert fn.tasks(answers, **cols) == [it.task for it in items]
        rewards = fn(answers, prompts=[it.messages for it in items], **cols)
        assert [s.task for s in fn.last_scored] == [it.task for it in items]
    finally:
        fn.close()
    m = per_task_means(rewards, [it.task for it in items], "eval")
    assert set(m) == {"eval/mean_reward", "eval/extraction", "eval/sql_qa", "eval/insights", "eval/push"}
    assert "eval/all" not in m and all(v > 0.9 for v in m.values()), m  # reference answers score high
    # the tasks filter applies to classified rows too
    push = load_items(tmp_path / "notask.jsonl", ["push"])
    assert push and {it.task for it in push} == {"push"} and [it.index for it in push] == list(range(len(push)))


def test_reward_fallback_and_loader_classify_alike(ours):
    fn = make_reward(None)
    prompts = [r["prompt"] for r in ours]
    assert fn.tasks(["x"] * len(ours), prompts) == [r["task"] for r in ours]


BAD = [
    ("{oops", "json: not valid JSON (Expecting property name enclosed in double quotes at column 2)"),
    ("[1, 2]", "row: must be a JSON object, got a list"),
    ({"task": "push", "answer": "x"}, "prompt: missing (a row needs prompt or messages)"),
    ({"prompt": 5}, "prompt: must be a string or a list of {role, content} messages, got a number"),
    ({"prompt": "  "}, "prompt: empty"),
    ({"prompt": []}, "prompt: empty list of messages"),
    ({"prompt": ["oi"]}, "prompt[0]: must be an object with string role and content, got a string"),
    ({"prompt": [{"role": "user"}]}, "prompt[0].content: missing"),
    ({"prompt": [{"role": "user", "content": [{"type": "text", "text": "oi"}]}]},
     "prompt[0].content: must be a string, got a list"),
    ({"prompt": [{"role": None, "content": "oi"}]}, "prompt[0].role: must be a string, got null"),
    ({"prompt": [{"role": "system", "content": "Responda em JSON."}]}, "prompt: no non-empty user turn"),
    ({"messages": "oi"}, "messages: must be a list of {role, content} messages, got a string"),
    ({"messages": [{"role": "assistant", "content": "x"}]}, "messages: only an assistant turn, no prompt before it"),
    ({"messages": [{"role": "user", "content": "x"}], "prompt": "y"},
     "messages: both prompt and messages are given (use one)"),
    ({"messages": [{"role": "user", "content": "x"}], "completion": "y"},
     "completion: given with messages (messages already holds the answer)"),
    ({"prompt": "oi", "completion": 3}, "completion: must be a string or a list of {role, content} messages, "
                                        "got a number"),
    ({"prompt": "oi", "completion": [{"role": "user", "content": "y"}]}, "completion: no assistant turn"),
    ({"prompt": "oi", "answer": {"a": 1}}, "answer: must be a string, got an object"),
    ({"prompt": "oi", "task": "sql"},
     "task: unknown task 'sql' (one of extraction, sql_qa, insights, push, or empty to classify)"),
    ({"prompt": "oi", "task": 2}, "task: must be a string, got a number"),
    ({"prompt": "oi", "reference_sql": 1}, "reference_sql: must be a string, got a number"),
    ({"prompt": "oi", "facts": [1, 2]}, "facts: must be an object or a JSON string, got a list"),
    ({"prompt": "oi", "context": True}, "context: must be an object or a JSON string, got a boolean"),
]


@pytest.mark.parametrize("row,message", BAD, ids=[m.split(":")[0] + str(i) for i, (_, m) in enumerate(BAD)])
def test_malformed_row_is_refused_with_file_line_field(tmp_path, ours, row, message):
    good = ours[:3]
    p = write(tmp_path / "p.jsonl", [good[0], "", good[1], row, good[2]])  # the blank line is skipped
    pf = read_pairs(p)
    assert [str(b) for b in pf.bad] == [f"{p}:4: {message}"]
    assert pf.total == 4 and [r.line for r in pf.rows] == [1, 3, 5]


def test_non_utf8_line_is_refused(tmp_path, ours):
    p = tmp_path / "p.jsonl"
    p.write_bytes(json.dumps(ours[0]).encode() + b"\n" + b'{"prompt": "caf\xe9"}\n')
    assert [str(b) for b in read_pairs(p).bad] == [f"{p}:2: json: not UTF-8 text (byte 16)"]  # 1-based


def _file(tmp_path, ours, n_rows: int, n_bad: int) -> Path:
    rows: list = [dict(ours[i % len(ours)], id=f"ok-{i}") for i in range(n_rows - n_bad)]
    for k in range(n_bad):  # spread through the file; distinct prompts that must never become items
        rows.insert(7 + 40 * k, {"prompt": f"BAD-{k}", "task": "sql"})
    return write(tmp_path / f"t{n_bad}.jsonl", rows)


def test_bad_share_at_the_limit_warns_and_trains_on_the_good_rows_only(tmp_path, ours):
    assert MAX_BAD_SHARE == 0.01
    p = _file(tmp_path, ours, 200, 2)  # 2 of 200 = exactly 1%: accepted
    with pytest.warns(BadRowsWarning) as w:
        items = load_items(p)
    assert [str(x.message) for x in w] == [
        f"{p}: skipping 2 malformed rows of 200 (1%); first: {p}:8: task: unknown task 'sql' "
        "(one of extraction, sql_qa, insights, push, or empty to classify)"]
    assert len(items) == 198
    assert not any("BAD-" in m["content"] for it in items for m in it.messages)


def test_bad_share_above_the_limit_refuses_the_file(tmp_path, ours):
    p = _file(tmp_path, ours, 200, 3)  # 1.5%
    with pytest.raises(PairsError) as e:
        load_items(p)
    assert str(e.value) == (f"{p}: 3 of 200 rows are malformed (1.5%, above the 1% limit); first: {p}:8: task: "
                            "unknown task 'sql' (one of extraction, sql_qa, insights, push, or empty to classify)")
    assert isinstance(e.value, ValueError) and "\n" not in str(e.value)
    with pytest.warns(BadRowsWarning):
        assert len(load_items(p, max_bad_share=0.015)) == 197  # the limit is a parameter of the loader


def test_clean_file_loads_without_warning(commerce_data):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert load_items(commerce_data / "pairs" / "eval.jsonl")


def test_missing_and_empty_files(tmp_path):
    with pytest.raises(PairsError, match="no such pairs file"):
        load_items(tmp_path / "nope.jsonl")
    (tmp_path / "e.jsonl").write_text("\n\n")
    with pytest.raises(PairsError, match="no pairs"):
        load_items(tmp_path / "e.jsonl")


# ---- the learner's preflight: the share check happens before any model loads ----------------------

def _args(tiny_model, commerce_data, train: Path, *extra: str) -> list[str]:
    sets = [f"model_id={tiny_model}", f"data.train_pairs={train}", f"data.db_path={commerce_data / 'commerce.db'}",
            f"data.eval_pairs={commerce_data / 'pairs' / 'eval.jsonl'}", *extra]
    return ["--config", str(REPO / "configs" / "smoke_cpu.yaml")] + [a for s in sets for a in ("--set", s)]


def test_preflight_refuses_too_many_bad_rows_in_one_line(tmp_path, tiny_model, commerce_data, ours, capsys):
    from learner.__main__ import main

    p = _file(tmp_path, ours, 200, 3)
    assert main(_args(tiny_model, commerce_data, p)) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0
    assert err == (f"learner: {p}: 3 of 200 rows are malformed (1.5%, above the 1% limit); first: {p}:8: task: "
                   "unknown task 'sql' (one of extraction, sql_qa, insights, push, or empty to classify) "
                   f"(`python -m commerce check --pairs {p}` lists every bad row)")


def test_preflight_passes_a_few_bad_rows_with_a_warning(tmp_path, tiny_model, commerce_data, ours, capsys):
    from configs import load_config
    from learner.__main__ import main, preflight

    p = _file(tmp_path, ours, 200, 2)
    cfg = load_config(REPO / "configs" / "smoke_cpu.yaml", _args(tiny_model, commerce_data, p)[3::2])
    with pytest.warns(BadRowsWarning, match="skipping 2 malformed rows of 200"):
        assert preflight(cfg) is None
    notask = write(tmp_path / "notask.jsonl", variant(ours, _no_task))
    cfg = load_config(REPO / "configs" / "smoke_cpu.yaml", _args(tiny_model, commerce_data, notask)[3::2])
    assert preflight(cfg) is None
    only_push = write(tmp_path / "push.jsonl", variant([r for r in ours if r["task"] == "push"], _no_task))
    assert main(_args(tiny_model, commerce_data, only_push, "data.tasks=[sql_qa]")) == 2
    assert capsys.readouterr().err.strip() == (f"learner: {only_push}: no pairs of data.tasks sql_qa "
                                               f"(rows per task: push {sum(r['task'] == 'push' for r in ours)})")
