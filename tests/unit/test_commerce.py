"""commerce: distributions of a built db, determinism, train/eval split, schema checks, CLI, corpus."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

import commerce
from commerce import SchemaMismatch, build, check_db, check_pairs, corpus_texts
from commerce.pairs import EVAL_MIN
from commerce.db import score_distributions
from commerce.pairs import EXTRACTION_FIELDS
from commerce.schema import TABLES

REPO = Path(__file__).resolve().parents[2]
ORDERS = 4000


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> dict:
    return build(tmp_path_factory.mktemp("commerce") / "data", seed=7, orders=ORDERS)


@pytest.fixture(scope="module")
def con(built):
    c = sqlite3.connect(built["db"])
    yield c
    c.close()


def _rows(path: str) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines()]


def q(con, sql):
    return con.execute(sql).fetchall()


def test_build_writes_files_and_counts(built):
    assert Path(built["db"]).is_file()
    assert built["train_counts"] == {"extraction": 590, "sql_qa": 590, "insights": 148, "push": 148}
    # 15% of each task, and at least EVAL_MIN: insights and push get eval prompts on top of their 174
    assert built["eval_counts"] == {"extraction": 104, "sql_qa": 104, "insights": EVAL_MIN, "push": EVAL_MIN}
    train, evals = _rows(built["train"]), _rows(built["eval"])
    prompts = [r["prompt"][-1]["content"] for r in evals]
    assert len(set(prompts)) == len(prompts) and not set(prompts) & {r["prompt"][-1]["content"] for r in train}
    assert len({r["id"] for r in train + evals}) == len(train) + len(evals)


def test_a_small_database_names_each_task_short_of_pairs_and_eval_prompts(tmp_path, capsys):
    got = build(tmp_path / "data", seed=7, orders=600)
    err = capsys.readouterr().err
    short = {t: n for t, n in got["eval_counts"].items() if n < EVAL_MIN}
    assert short, got["eval_counts"]  # 600 orders leave extraction and sql_qa short
    for task, n in short.items():
        assert f"only {n} {task} eval prompts (EVAL_MIN {EVAL_MIN})" in err, err
    for task, n in got["eval_counts"].items():
        assert (f"{task} eval prompts" in err) == (n < EVAL_MIN), err


def test_tables_have_olist_columns(con):
    for table, cols in TABLES.items():
        have = {r[1] for r in con.execute(f"PRAGMA table_info({table})")}
        assert {c for c, _ in cols} <= have, table
    assert q(con, "SELECT COUNT(*) FROM orders_enriched")[0][0] == ORDERS
    assert q(con, "PRAGMA journal_mode")[0][0] == "delete"


def test_review_score_marginal(con):
    n = q(con, "SELECT COUNT(*) FROM orders_enriched")[0][0]
    shares = dict(q(con, f"SELECT review_score, COUNT(*) * 1.0 / {n} FROM orders_enriched GROUP BY 1"))
    for star, target in zip(range(1, 6), (0.115, 0.032, 0.082, 0.193, 0.578), strict=True):
        assert abs(shares[star] - target) < 0.025, (star, shares[star])


def test_late_deliveries_and_their_scores(con):
    late = q(con, "SELECT AVG(is_late) FROM orders_enriched WHERE order_status = 'delivered'")[0][0]
    assert 0.06 < late < 0.10
    means = dict(q(con, "SELECT is_late, AVG(review_score) FROM orders_enriched WHERE is_late IS NOT NULL "
                        "GROUP BY is_late"))
    assert abs(means[1] - 2.6) < 0.3 and abs(means[0] - 4.3) < 0.1
    # the solved on-time distribution is a distribution and gives ~4.3 stars
    ontime = score_distributions()["ontime"]
    assert abs(sum(ontime) - 1) < 1e-9 and min(ontime) > 0
    assert abs(sum((i + 1) * p for i, p in enumerate(ontime)) - 4.3) < 0.05


def test_states_payments_categories(con):
    states = [s for s, _ in q(con, "SELECT customer_state, COUNT(*) FROM orders_enriched GROUP BY 1 ORDER BY 2 DESC")]
    sp = q(con, "SELECT AVG(customer_state = 'SP') FROM orders_enriched")[0][0]
    assert states[0] == "SP" and 0.38 < sp < 0.46
    assert set(states[1:5]) <= {"RJ", "MG", "RS", "PR", "SC"} and {"RJ", "MG"} <= set(states[1:4])
    pays = [p for p, _ in q(con, "SELECT payment_type, COUNT(*) FROM orders_enriched GROUP BY 1 ORDER BY 2 DESC")]
    assert pays == ["credit_card", "boleto", "voucher", "debit_card"]
    cats = {c for c, _ in q(con, "SELECT product_category_name, COUNT(*) FROM orders_enriched GROUP BY 1 "
                                 "ORDER BY 2 DESC LIMIT 8")}
    assert {"cama_mesa_banho", "beleza_saude", "esporte_lazer"} <= cats


def test_reviews_text_and_complaints(con):
    no_text = q(con, "SELECT AVG(review_comment_message IS NULL) FROM orders_enriched")[0][0]
    assert 0.45 < no_text < 0.7
    by_sent = dict(q(con, "SELECT sentiment, AVG(review_comment_message IS NOT NULL) FROM orders_enriched "
                          "GROUP BY 1"))
    assert by_sent["negative"] > by_sent["positive"]
    complaints = {c for (c,) in q(con, "SELECT DISTINCT complaint_category FROM orders_enriched "
                                       "WHERE sentiment = 'negative'")}
    assert {"atraso_entrega", "produto_errado", "defeito", "avaria", "item_faltante", "extravio",
            "nao_recebido", "atendimento"} <= complaints
    msgs = [m for (m,) in q(con, "SELECT review_comment_message FROM orders_enriched WHERE sentiment = 'negative' "
                                 "AND review_comment_message IS NOT NULL")]
    assert len(set(msgs)) > 0.7 * len(msgs)  # composed, not one template per star
    late_neg = q(con, "SELECT AVG(complaint_category = 'atraso_entrega') FROM orders_enriched "
                      "WHERE is_late = 1 AND sentiment = 'negative'")[0][0]
    assert late_neg > 0.6


def test_train_and_eval_never_overlap(built):
    train, ev = _rows(built["train"]), _rows(built["eval"])
    key = lambda r: json.dumps(r["prompt"], ensure_ascii=False)  # noqa: E731
    assert not {key(r) for r in train} & {key(r) for r in ev}
    assert not {r["id"] for r in train} & {r["id"] for r in ev}
    assert len({key(r) for r in train}) == len(train)
    sqls = [r["reference_sql"] for r in train + ev if r["task"] == "sql_qa"]
    assert len(set(sqls)) == len(sqls)


def test_pair_lines(built):
    rows = _rows(built["train"])
    assert {tuple(sorted(r)) for r in rows} == {tuple(sorted(commerce.schema.PAIR_COLUMNS))}
    by = Counter(r["task"] for r in rows)
    assert by["extraction"] == by["sql_qa"] == 590
    for r in rows:
        assert [m["role"] for m in r["prompt"]] == ["system", "user"]
        assert r["answer"]
        if r["task"] == "extraction":
            ref = json.loads(r["reference"])
            assert tuple(ref) == EXTRACTION_FIELDS
            assert ref["sentiment"] in ("positive", "neutral", "negative") and 0 <= ref["sentiment_score"] <= 5
        elif r["task"] == "sql_qa":
            assert r["reference_sql"].startswith("SELECT") and "```sql" in r["answer"]
        elif r["task"] == "insights":
            assert 3 <= r["answer"].count("\n- ") + 1 <= 5 and json.loads(r["facts"])["pedidos"] > 0
        else:
            assert len(r["answer"]) <= 120 and json.loads(r["context"])["produto"]
    assert check_pairs(built["train"]) == dict(Counter(r["task"] for r in rows))


def test_reference_sql_results_are_meaningful(built, con):
    for r in _rows(built["eval"]):
        if r["task"] == "sql_qa":
            rows = con.execute(r["reference_sql"]).fetchall()
            assert rows and rows[0][0] is not None


def test_same_seed_same_files(built, tmp_path):
    again = build(tmp_path / "again", seed=7, orders=ORDERS)
    for k in ("train", "eval"):
        assert Path(again[k]).read_bytes() == Path(built[k]).read_bytes()
    a, b = sqlite3.connect(again["db"]), sqlite3.connect(built["db"])
    try:
        assert list(a.iterdump()) == list(b.iterdump())
    finally:
        a.close()
        b.close()
    other = build(tmp_path / "other", seed=8, orders=ORDERS)
    assert Path(other["train"]).read_bytes() != Path(built["train"]).read_bytes()


def test_make_items_for_some_tasks_draws_the_same_items(con):
    """Pre-training and the eval top-up ask only for the tasks they still need: each task has its own stream."""
    from commerce.pairs import DEFAULT_COUNTS, make_items

    every = make_items(con, 11, DEFAULT_COUNTS)
    some = make_items(con, 11, DEFAULT_COUNTS, ("insights", "push"))
    assert set(some) == {"insights", "push"} and some["push"] and some["insights"]
    assert some == {t: every[t] for t in some}
    assert make_items(con, 12, DEFAULT_COUNTS, ("push",))["push"] != every["push"]  # another seed, other items


def test_insights_grows_for_scenario_c(tmp_path):
    out = build(tmp_path / "c", seed=3, orders=3000, insights=350)
    n = out["train_counts"]["insights"] + out["eval_counts"]["insights"]
    assert out["train_counts"]["insights"] == 350 - round(350 * 0.15) and n == 350 - round(350 * 0.15) + EVAL_MIN
    samples = [r for r in _rows(out["train"]) + _rows(out["eval"])
               if r["task"] == "insights" and "avaliação negativa" in json.loads(r["facts"])["recorte"]]
    assert len(samples) >= 350 - 174


def test_check_db_names_missing_tables_and_columns(tmp_path, built):
    check_db(built["db"])
    bad = tmp_path / "bad.db"
    c = sqlite3.connect(bad)
    c.execute("CREATE TABLE orders (order_id TEXT, customer_id TEXT)")
    c.execute("CREATE TABLE orders_enriched (order_id TEXT, sentiment TEXT)")
    c.commit()
    c.close()
    with pytest.raises(SchemaMismatch) as e:
        check_db(bad)
    msg = str(e.value)
    assert "\n" not in msg and isinstance(e.value, ValueError)
    assert "order_payments" in msg and "sellers" in msg
    assert "orders lacks order_status" in msg and "is_late" in msg and "complaint_category" in msg
    with pytest.raises(SchemaMismatch, match="no such database"):
        check_db(tmp_path / "missing.db")
    junk = tmp_path / "junk.db"
    junk.write_text("not sqlite")
    with pytest.raises(SchemaMismatch, match="not a SQLite database"):
        check_db(junk)


def test_check_pairs_counts_users_rows_and_refuses_malformed_ones(tmp_path):
    p = tmp_path / "p.jsonl"
    p.write_text(json.dumps({"task": "sql_qa", "prompt": [{"role": "user", "content": "x"}]}) + "\n"
                 + json.dumps({"prompt": "Escreva uma notificação push curta"}) + "\n")
    assert check_pairs(p) == {"sql_qa": 1, "push": 1}  # no reference, no task: usable (classified)
    p.write_text(p.read_text() + json.dumps({"task": "sql", "prompt": "x"}) + "\n" + "{oops\n")
    with pytest.raises(SchemaMismatch) as e:
        check_pairs(p)
    assert str(e.value) == (f"{p}: 2 malformed rows of 4; first: {p}:3: task: unknown task 'sql' "
                            "(one of extraction, sql_qa, insights, push, or empty to classify)")


def test_cli_check_exit_codes(tmp_path, built):
    ok = subprocess.run([sys.executable, "-m", "commerce", "check", "--db", built["db"], "--pairs", built["eval"]],
                        capture_output=True, text=True, cwd=REPO)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert ok.stdout.strip().splitlines()[-1].startswith("ready: no problems")
    bad = tmp_path / "bad.db"
    sqlite3.connect(bad).execute("CREATE TABLE orders (order_id TEXT)").connection.close()
    r = subprocess.run([sys.executable, "-m", "commerce", "check", "--db", str(bad)],
                       capture_output=True, text=True, cwd=REPO)
    assert r.returncode == 2
    assert len(r.stderr.strip().splitlines()) == 1 and "missing table orders_enriched" in r.stderr
    none = subprocess.run([sys.executable, "-m", "commerce", "check"], capture_output=True, text=True, cwd=REPO)
    assert none.returncode == 2 and "needs --db FILE, --pairs FILE" in none.stderr


def test_corpus_texts(built):
    texts = list(corpus_texts(built["db"]))
    assert len(texts) > 3000 and all(isinstance(t, str) and t for t in texts)
    joined = "\n".join(texts)
    assert "SELECT" in joined and '"sentiment_score"' in joined and "Avaliação" in joined
    assert any("atraso" in t for t in texts)


def test_import_commerce_is_stdlib_only():
    code = ("import sys, commerce, commerce.db, commerce.pairs; "
            "bad = [m for m in ('numpy', 'torch', 'tqdm', 'pydantic', 'yaml') if m in sys.modules]; "
            "print(bad); sys.exit(1 if bad else 0)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert r.returncode == 0, r.stdout + r.stderr
