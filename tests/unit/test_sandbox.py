"""SQL sandbox: hostile SQL scores ~0 quickly, the db file never changes, no file is created."""

from __future__ import annotations

import hashlib
import os
import sqlite3
import time

import pytest

from commerce.db import write_db
from rewards import Sandbox, make_reward

REFERENCE = "SELECT COUNT(*) AS pedidos FROM orders_enriched WHERE customer_state = 'SP'"
DEADLINE_MS = 200

HOSTILE = {
    "delete": "DELETE FROM orders",
    "insert": "INSERT INTO orders (order_id) VALUES ('x')",
    "update": "UPDATE orders_enriched SET review_score = 5",
    "drop": "DROP TABLE orders",
    "create": "CREATE TABLE x (a)",
    "temp_table": "CREATE TEMP TABLE t AS SELECT * FROM orders",
    "temp_view": "CREATE TEMP VIEW v AS SELECT 1",
    "trigger": "CREATE TEMP TRIGGER t AFTER INSERT ON orders BEGIN SELECT 1; END",
    "attach": "ATTACH DATABASE '{dir}/evil.db' AS evil",
    "vacuum": "VACUUM",
    "vacuum_into": "VACUUM INTO '{dir}/copy.db'",
    "pragma": "PRAGMA journal_mode=WAL",
    "pragma_writable": "PRAGMA writable_schema = ON",
    "pragma_function": "SELECT * FROM pragma_table_info('orders')",
    "multi": "SELECT 1; DROP TABLE orders",
    "multi_comment": "SELECT 1 /* ; */; DELETE FROM orders",
    "with_delete": "WITH x AS (SELECT 1) DELETE FROM orders",
    "recursive_cte": "WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM c) SELECT COUNT(*) FROM c",
    "cross_join": "SELECT COUNT(*) FROM orders_enriched a, orders_enriched b, orders_enriched c",
    "cross_join_sort": "SELECT a.order_id FROM orders_enriched a, order_items b ORDER BY a.review_comment_message, "
                       "b.price",
    "randomblob": "SELECT randomblob(1000000000)",
    "zeroblob": "SELECT length(zeroblob(1000000000))",
    "printf_bomb": "SELECT length(printf('%.*c', 1000000000, 'x'))",
    "replace_growth": "SELECT length(" + "replace(" * 5 + "'1111111111'" + ", '1', '1111111111')" * 5 + ")",
    "group_concat_bomb": "SELECT length(group_concat(a.review_comment_message)) FROM orders_enriched a, "
                         "orders_enriched b",
    "load_extension": "SELECT load_extension('/tmp/evil.so')",
    "readfile": "SELECT readfile('/etc/passwd')",
    "transaction": "BEGIN IMMEDIATE",
    "savepoint": "SAVEPOINT x",
    "reindex": "REINDEX",
    "analyze": "ANALYZE",
    "temp_schema": "SELECT * FROM temp.sqlite_master",
    "compound_bomb": " UNION ".join(["SELECT 1"] * 200),
    "deep_expr": "SELECT " + "(" * 500 + "1" + ")" * 500,
    "huge_sql": "SELECT 1 " + "-- x\n" * 10_000,
}


def _digest(path) -> str:
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


@pytest.fixture(scope="module")
def db(tmp_path_factory):
    d = tmp_path_factory.mktemp("sandbox")
    return write_db(d / "commerce.db", seed=3, n_orders=2000)


@pytest.fixture(scope="module")
def fn(db):
    f = make_reward(db, sql_timeout_ms=DEADLINE_MS)
    yield f
    f.close()


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_sql_scores_near_zero_quickly_and_changes_nothing(fn, db, name):
    before, files = _digest(db), sorted(os.listdir(db.parent))
    sql = HOSTILE[name].format(dir=db.parent)
    completion = f"```sql\n{sql};\n```\nEsta consulta responde à pergunta sobre os pedidos."
    t0 = time.perf_counter()
    r = fn([completion], task=["sql_qa"], reference_sql=[REFERENCE])[0]
    elapsed = time.perf_counter() - t0
    assert r <= 0.1 + 1e-9, name
    assert elapsed < 2 * DEADLINE_MS / 1000 + 0.1, (name, elapsed)
    assert _digest(db) == before
    assert sorted(os.listdir(db.parent)) == files


def test_sandbox_limits_rows_and_reports(db):
    sb = Sandbox(db, timeout_ms=DEADLINE_MS, max_rows=50)
    try:
        r = sb.run("SELECT * FROM orders_enriched")
        assert r.ok and len(r.rows) == 50 and r.truncated
        r = sb.run("SELECT customer_state, COUNT(*) FROM orders_enriched GROUP BY 1 ORDER BY 2 DESC LIMIT 1")
        assert r.ok and r.rows[0][0] == "SP" and r.columns == ("customer_state", "COUNT(*)")
        r = sb.run("SELECT COUNT(*) FROM orders_enriched a, orders_enriched b, orders_enriched c")
        assert not r.ok and "deadline" in r.error and r.ms < 2 * DEADLINE_MS
        assert sb.run("-- só um comentário").error == "empty statement"
        assert sb.run("SELECT ';' AS x;").rows == [(";",)]
        assert sb.run(None).ok is False
    finally:
        sb.close()


def test_wal_database_opened_without_creating_files(tmp_path):
    p = tmp_path / "wal.db"
    con = sqlite3.connect(p)
    con.execute("PRAGMA journal_mode=WAL")
    con.execute("CREATE TABLE t (x)")
    con.execute("INSERT INTO t VALUES (1)")
    con.commit()
    con.close()
    files, before = sorted(os.listdir(tmp_path)), _digest(p)
    sb = Sandbox(p)
    try:
        assert sb.run("SELECT x FROM t").rows == [(1,)]
    finally:
        sb.close()
    assert sorted(os.listdir(tmp_path)) == files and _digest(p) == before


def test_missing_db_is_an_error_at_construction(tmp_path):
    with pytest.raises(FileNotFoundError):
        make_reward(tmp_path / "nope.db")
