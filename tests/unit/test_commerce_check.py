"""``python -m commerce check`` on our synthetic data, on user-shaped copies of it and on broken copies.

What it claims about the rewards (which column each reads, what happens without it) is checked
against the rewards themselves; the sandbox and classifier it uses are the rewards' own objects.
"""

from __future__ import annotations

import doctest
import importlib
import json
import re
import shutil
import sqlite3
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from commerce import check as chk
from commerce.check import check_data
from commerce.schema import SQL_QA_COLUMNS
from pair_files import rows_of, write

REPO = Path(__file__).resolve().parents[2]


def edit(rows: list[dict], fn) -> list[dict]:
    out = []
    for r in rows:
        r = json.loads(json.dumps(r))
        fn(r)
        out.append(r)
    return out


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "commerce", "check", *args], capture_output=True, text=True,
                          cwd=REPO)


@pytest.fixture(scope="module")
def data(commerce_data) -> dict:
    pairs = commerce_data / "pairs"
    return {"db": commerce_data / "commerce.db", "train": pairs / "train.jsonl", "eval": pairs / "eval.jsonl",
            "rows": rows_of(pairs / "eval.jsonl")}


def by_task(rows: list[dict]) -> dict[str, int]:
    return dict(Counter(r["task"] for r in rows))


def test_our_synthetic_data_is_ready(data):
    r = cli("--db", str(data["db"]), "--pairs", str(data["train"]), str(data["eval"]))
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stderr == "" and r.stdout.strip().splitlines()[-1].startswith("ready: no problems")
    rep = check_data(data["db"], [data["train"], data["eval"]])
    want = Counter(by_task(rows_of(data["train"]))) + Counter(by_task(data["rows"]))
    assert rep.counts == dict(want) and sum(rep.classified.values()) == 0
    assert rep.have == rep.counts and sum(rep.no_fallback.values()) == 0
    n_sql = len({r["reference_sql"] for r in rows_of(data["train"]) + data["rows"] if r["task"] == "sql_qa"})
    assert rep.queries == n_sql and rep.failed_queries == 0
    assert set(rep.reads) == {"orders_enriched"} and rep.reads["orders_enriched"] <= set(SQL_QA_COLUMNS)
    assert not rep.problems and not rep.warnings


def test_copy_without_task_column_is_classified(tmp_path, data):
    p = write(tmp_path / "notask.jsonl", edit(data["rows"], lambda r: r.pop("task")))
    rep = check_data(data["db"], [p])
    assert rep.ok and rep.counts == by_task(data["rows"]) and rep.classified == rep.counts
    r = cli("--db", str(data["db"]), "--pairs", str(p))
    assert r.returncode == 0
    line = next(x for x in r.stdout.splitlines() if x.strip().startswith("push"))
    assert line.split() == ["push", str(rep.counts["push"]), "0", str(rep.counts["push"])]  # rows labelled classified


def _user(r):
    return next(m["content"] for m in r["prompt"] if m["role"] == "user")


@pytest.mark.parametrize("name,fn", [
    ("string prompts", lambda r: r.update(prompt=_user(r))),
    ("messages", lambda r: r.update(messages=r.pop("prompt") + [{"role": "assistant", "content": r.pop("answer")}])),
    ("completion", lambda r: r.update(completion=r.pop("answer"))),
    ("TRL prompt-completion, no task", lambda r: r.update(prompt=_user(r), completion=r.pop("answer"), task=None)),
])
def test_trl_format_copies_are_ready_with_the_same_counts(tmp_path, data, name, fn):
    p = write(tmp_path / "trl.jsonl", edit(data["rows"], fn))
    rep = check_data(data["db"], [p])
    assert rep.ok, (name, rep.problems)
    assert rep.counts == by_task(data["rows"]) and rep.have == rep.counts, name


def test_rows_without_references_are_named_and_said_to_score_format_only(tmp_path, data):
    def strip(r):
        if r["task"] == "sql_qa":
            r["reference_sql"] = None
        elif r["task"] == "extraction":
            r.pop("reference")
        elif r["task"] == "push":
            r["context"] = ""
            for m in r["prompt"]:
                m["content"] = m["content"].replace("Produto:", "Item:")  # no prompt fallback either
        else:
            r["facts"] = None  # insights prompts carry the numbers: the reward grounds on them instead
    rows = edit(data["rows"], strip)
    p = write(tmp_path / "noref.jsonl", rows)
    rep = check_data(data["db"], [p])
    n = by_task(rows)
    assert rep.ok and rep.have == {t: 0 for t in n}
    assert rep.no_fallback == {"extraction": n["extraction"], "sql_qa": n["sql_qa"], "insights": 0, "push": n["push"]}
    assert rep.prompt_fallback["insights"] == n["insights"]
    first_sql = next(i for i, r in enumerate(rows, 1) if r["task"] == "sql_qa")
    w = next(x for x in rep.warnings if x.startswith("sql_qa"))
    assert w.startswith(f"sql_qa: {n['sql_qa']} of {n['sql_qa']} rows lack reference_sql ({p} lines {first_sql}, ")
    assert w.endswith("the reward falls back to format-only scoring for them (has_sql, executes, explanation; "
                      "no result_match)")
    assert {x.split(":")[0] for x in rep.warnings} == {"extraction", "sql_qa", "push"}
    assert rep.queries == 0
    strict = cli("--db", str(data["db"]), "--pairs", str(p), "--strict")
    assert strict.returncode == 2 and "(--strict) sql_qa:" in strict.stdout


def test_fallbacks_it_reports_are_what_the_rewards_do(data):
    """No reference column -> the component the check names is dropped (None) or read from the prompt."""
    from rewards.extraction import extraction_parts
    from rewards.insights import insights_parts
    from rewards.push import _PROMPT_PRODUCT, push_parts
    from rewards.sql_qa import SqlQaScorer

    ans = {r["task"]: r for r in data["rows"]}
    assert extraction_parts(ans["extraction"]["answer"], None)["values"] is None
    sql = SqlQaScorer(data["db"])
    try:
        assert sql.parts(ans["sql_qa"]["answer"], None)["result_match"] is None
        assert sql.parts(ans["sql_qa"]["answer"], "SELECT nope FROM orders_enriched")["result_match"] is None
    finally:
        sql.close()
    ins = ans["insights"]
    assert insights_parts(ins["answer"], None, _user(ins))["grounded"] == 1.0  # grounded on the prompt's numbers
    cited = "- Priorizar o Norte: 37% dos pedidos atrasam\n- Reduzir o frete\n- Rever prazos"
    assert insights_parts(cited, None, "sem números")["grounded"] == 0.0  # every cited number invented
    assert insights_parts("- Priorizar\n- Reduzir\n- Rever", None, "sem números")["grounded"] == 0.0  # no_number_credit
    push = ans["push"]
    assert push_parts(push["answer"], None, "")[0]["mentions_product"] is None
    assert push_parts(push["answer"], None, _user(push))[0]["mentions_product"] is not None
    assert chk._PROMPT_PRODUCT.pattern == _PROMPT_PRODUCT.pattern
    from rewards import common

    assert chk._NUMBER.pattern == common._NUMBER.pattern
    for task, (dropped, left, _, _) in chk.FALLBACK.items():
        weights = importlib.import_module(f"rewards.{task}").COMPONENTS
        assert set(weights) == {dropped, *left.split(", ")}, task


def test_broken_pairs_are_listed_file_line_field(tmp_path, data):
    rows: list = list(data["rows"][:150])
    rows[3] = '{"prompt": "x", '
    rows[5] = {k: v for k, v in rows[5].items() if k != "prompt"}
    rows[7] = dict(rows[7], task=3)
    rows[9] = dict(rows[9], prompt=[{"role": "user", "content": 5}])
    p = write(tmp_path / "broken.jsonl", rows)
    r = cli("--db", str(data["db"]), "--pairs", str(p))
    assert r.returncode == 2
    probs = r.stdout.split("problems (5):\n")[1].splitlines()
    assert probs[:5] == [
        f"  {p}: 4 of 150 rows are malformed (2.67%; above the 1% limit: a run refuses to start)",
        f"  {p}:4: json: not valid JSON (Expecting property name enclosed in double quotes at column 16)",
        f"  {p}:6: prompt: missing (a row needs prompt or messages)",
        f"  {p}:8: task: must be a string, got a number",
        f"  {p}:10: prompt[0].content: must be a string, got a number",
    ]
    assert r.stdout.strip().endswith("not ready: 5 problems")
    assert r.stderr.strip() == f"error: 5 problems; first: {p}: 4 of 150 rows are malformed (2.67%; above the 1% " \
                               "limit: a run refuses to start)"
    one = write(tmp_path / "one.jsonl", data["rows"][:150] + ["[]"])
    rep = check_data(None, [one])
    assert rep.problems == [f"{one}: 1 of 151 rows are malformed (0.66%; a run skips them)",
                            f"{one}:151: row: must be a JSON object, got a list"]


def test_bad_rows_listed_up_to_a_cap_unless_all(tmp_path, data):
    p = write(tmp_path / "junk.jsonl", ["nope"] * 30)
    rep = check_data(None, [p])
    assert len(rep.problems) == 1 + 1 + chk.LISTED + 1 and "and 10 more malformed rows" in rep.problems[-1]
    assert len(check_data(None, [p], list_all=True).problems) == 1 + 1 + 30
    assert len(rep.bad) == 30


def _copy_db(src: Path, dst: Path, *sql: str) -> Path:
    shutil.copy(src, dst)
    con = sqlite3.connect(dst)
    for s in sql:
        con.execute(s)
    con.commit()
    con.close()
    return dst


def test_db_missing_the_sql_qa_table_or_columns(tmp_path, data):
    no_table = _copy_db(data["db"], tmp_path / "a.db", "DROP TABLE orders_enriched")
    rep = check_data(no_table, [])
    assert rep.problems == [f"{no_table}: missing table orders_enriched (the sql_qa prompts of `commerce build` "
                            "show it; the sql_qa reward runs the model's queries against it)"]
    no_col = _copy_db(data["db"], tmp_path / "b.db", "ALTER TABLE orders_enriched DROP COLUMN is_late")
    r = cli("--db", str(no_col), "--pairs", str(data["eval"]))
    assert r.returncode == 2
    assert f"  {no_col}: orders_enriched lacks is_late (the sql_qa prompts show it)" in r.stdout.splitlines()
    # every reference query reading is_late fails in the sandbox, named by its line
    fails = [x for x in r.stdout.splitlines() if "reference_sql: fails in the reward's sandbox" in x]
    n_late = sum(1 for x in data["rows"] if x["task"] == "sql_qa" and "is_late" in x["reference_sql"])
    assert n_late > 0 and len(fails) == min(n_late, chk.LISTED) + 0
    line = next(i for i, x in enumerate(data["rows"], 1) if x["task"] == "sql_qa" and "is_late" in x["reference_sql"])
    assert fails[0] == f"  {data['eval']}:{line}: reference_sql: fails in the reward's sandbox: no such column: is_late"
    # other Olist tables are not read by any reward: not a problem
    lean = _copy_db(data["db"], tmp_path / "c.db", "DROP TABLE order_payments", "DROP TABLE sellers")
    rep = check_data(lean, [data["eval"]])
    assert rep.ok and any("absent: sellers, order_payments" in x for x in rep.lines)


def test_failing_and_empty_reference_queries(tmp_path, data):
    rows = edit(data["rows"], lambda r: None)
    sql_lines = [i for i, r in enumerate(rows) if r["task"] == "sql_qa"]
    rows[sql_lines[0]]["reference_sql"] = "SELECT printf('%d', 1)"  # runs in sqlite, not in the reward's sandbox
    rows[sql_lines[1]]["reference_sql"] = "SELECT COUNT(*) FROM orders_enrichd"
    rows[sql_lines[2]]["reference_sql"] = "SELECT order_id FROM orders_enriched WHERE 0"
    p = write(tmp_path / "refs.jsonl", rows)
    rep = check_data(data["db"], [p])
    assert rep.failed_queries == 2
    assert rep.problems[0].startswith(f"{p}:{sql_lines[0] + 1}: reference_sql: fails in the reward's sandbox: ")
    assert rep.problems[1] == (f"{p}:{sql_lines[1] + 1}: reference_sql: fails in the reward's sandbox: "
                               "no such table: orders_enrichd")
    assert rep.warnings == [f"1 reference queries return no rows ({p} line {sql_lines[2] + 1}): any query that "
                            "returns no rows matches them"]
    assert cli("--db", str(data["db"]), "--pairs", str(p)).returncode == 2


def test_sql_rows_without_db_warn_and_bad_files_are_problems(tmp_path, data):
    rep = check_data(None, [data["eval"]])
    assert rep.ok and rep.warnings == ["sql_qa rows have reference_sql but no --db was given: the reference queries "
                                       "were not run (a run executes them against data.db_path)"]
    junk = tmp_path / "junk.db"
    junk.write_text("not sqlite")
    rep = check_data(junk, [tmp_path / "missing.jsonl"])
    assert rep.problems[0] == f"{tmp_path / 'missing.jsonl'}: no such pairs file"
    assert re.match(rf"{re.escape(str(junk))}: not a SQLite database", rep.problems[1])


def test_check_never_writes_the_db(tmp_path, data):
    db = _copy_db(data["db"], tmp_path / "ro.db")
    before = db.read_bytes()
    assert check_data(db, [data["eval"]]).ok
    assert db.read_bytes() == before and sorted(x.name for x in tmp_path.iterdir()) == ["ro.db"]


def test_commerce_imports_no_rewards_and_shares_its_functions():
    code = ("import sys, commerce, commerce.check, commerce.rows, commerce.__main__; "
            "bad = [m for m in sys.modules if m.split('.')[0] in ('rewards', 'learner', 'torch')]; "
            "print(bad); sys.exit(1 if bad else 0)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert r.returncode == 0, r.stdout + r.stderr
    import commerce.classify
    import commerce.sandbox
    import rewards
    from rewards.common import completion_text, fold

    assert rewards.classify_task is commerce.classify.classify_task and rewards.Sandbox is commerce.sandbox.Sandbox
    assert fold is commerce.classify.fold and completion_text is commerce.classify.completion_text  # one copy


@pytest.mark.parametrize("module", ["commerce.classify", "commerce.sandbox"])
def test_doctests(module):
    result = doctest.testmod(importlib.import_module(module))
    assert result.failed == 0 and result.attempted > 0


def test_insights_without_facts_or_numbers_in_the_prompt(tmp_path, data):
    row = next(r for r in data["rows"] if r["task"] == "insights")
    ask = "Escreva três insights estratégicos sobre o frete."  # no digit at all ("3 insights" would count)
    bare = dict(row, facts=None, prompt=[{"role": "user", "content": ask}])
    p = write(tmp_path / "ins.jsonl", [bare, dict(row, facts=None)])
    rep = check_data(None, [p])
    assert rep.no_fallback == {"insights": 1} and rep.prompt_fallback == {"insights": 1}
    assert rep.warnings == [f"insights: 1 of 2 rows lack facts ({p} line 1): and their prompt has no number either: "
                            "grounded and insightful have no number to check against: every number cited counts as "
                            "invented (rewards.insights.no_number_credit when none is cited)"]
