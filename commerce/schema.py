"""Tables of ``commerce.db`` (Olist column names), the columns the sql_qa prompts show, and the db check.

``check_db(path)`` raises :class:`SchemaMismatch` (a ``ValueError``) whose message is one line naming
every missing table and column, e.g.
``commerce.db schema mismatch: missing table order_payments; orders_enriched lacks delay_days, is_late``.
It asks for every Olist table (what ``build`` and the tokenizer corpus read); the rewards read less:
see :data:`SQL_QA_TABLE` and ``python -m commerce check`` (:mod:`commerce.check`). Pair files are read
by :mod:`commerce.rows`.
"""

from __future__ import annotations

import re
import sqlite3
from pathlib import Path

TASKS = ("extraction", "sql_qa", "insights", "push")

# table -> [(column, sqlite type)], in Olist's naming
TABLES: dict[str, list[tuple[str, str]]] = {
    "customers": [("customer_id", "TEXT PRIMARY KEY"), ("customer_unique_id", "TEXT"),
                  ("customer_zip_code_prefix", "TEXT"), ("customer_city", "TEXT"), ("customer_state", "TEXT")],
    "sellers": [("seller_id", "TEXT PRIMARY KEY"), ("seller_zip_code_prefix", "TEXT"), ("seller_city", "TEXT"),
                ("seller_state", "TEXT")],
    "products": [("product_id", "TEXT PRIMARY KEY"), ("product_category_name", "TEXT"),
                 ("product_name_lenght", "INTEGER"), ("product_description_lenght", "INTEGER"),
                 ("product_photos_qty", "INTEGER"), ("product_weight_g", "INTEGER")],
    "orders": [("order_id", "TEXT PRIMARY KEY"), ("customer_id", "TEXT"), ("order_status", "TEXT"),
               ("order_purchase_timestamp", "TEXT"), ("order_approved_at", "TEXT"),
               ("order_delivered_carrier_date", "TEXT"), ("order_delivered_customer_date", "TEXT"),
               ("order_estimated_delivery_date", "TEXT")],
    "order_items": [("order_id", "TEXT"), ("order_item_id", "INTEGER"), ("product_id", "TEXT"),
                    ("seller_id", "TEXT"), ("shipping_limit_date", "TEXT"), ("price", "REAL"),
                    ("freight_value", "REAL")],
    "order_payments": [("order_id", "TEXT"), ("payment_sequential", "INTEGER"), ("payment_type", "TEXT"),
                       ("payment_installments", "INTEGER"), ("payment_value", "REAL")],
    "order_reviews": [("review_id", "TEXT"), ("order_id", "TEXT"), ("review_score", "INTEGER"),
                      ("review_comment_title", "TEXT"), ("review_comment_message", "TEXT"),
                      ("review_creation_date", "TEXT"), ("review_answer_timestamp", "TEXT")],
    "orders_enriched": [
        ("order_id", "TEXT PRIMARY KEY"), ("order_status", "TEXT"), ("customer_id", "TEXT"),
        ("customer_unique_id", "TEXT"), ("customer_city", "TEXT"), ("customer_state", "TEXT"),
        ("seller_id", "TEXT"), ("seller_state", "TEXT"), ("product_id", "TEXT"),
        ("product_category_name", "TEXT"), ("n_items", "INTEGER"), ("price", "REAL"), ("freight_value", "REAL"),
        ("payment_type", "TEXT"), ("payment_installments", "INTEGER"), ("payment_value", "REAL"),
        ("order_purchase_timestamp", "TEXT"), ("order_delivered_customer_date", "TEXT"),
        ("order_estimated_delivery_date", "TEXT"), ("purchase_month", "TEXT"), ("delivery_days", "INTEGER"),
        ("delay_days", "INTEGER"), ("is_late", "INTEGER"), ("review_score", "INTEGER"),
        ("review_comment_title", "TEXT"), ("review_comment_message", "TEXT"), ("sentiment", "TEXT"),
        ("complaint_category", "TEXT")],
}

INDEXES = (
    "CREATE INDEX idx_oe_state ON orders_enriched(customer_state)",
    "CREATE INDEX idx_oe_category ON orders_enriched(product_category_name)",
    "CREATE INDEX idx_oe_sentiment ON orders_enriched(sentiment)",
    "CREATE INDEX idx_items_order ON order_items(order_id)",
    "CREATE INDEX idx_pay_order ON order_payments(order_id)",
    "CREATE INDEX idx_rev_order ON order_reviews(order_id)",
)

# What the sql_qa prompt shows the model (orders_enriched only: every reference query uses it).
ENRICHED_DOC = """Tabela orders_enriched (um pedido por linha):
- order_id TEXT
- order_status TEXT ('delivered', 'shipped', 'canceled', 'unavailable', 'invoiced', 'processing',
  'approved')
- customer_unique_id TEXT, customer_city TEXT (minúsculas, sem acento), customer_state TEXT (UF, ex.: 'SP')
- seller_state TEXT, product_category_name TEXT (ex.: 'cama_mesa_banho', 'beleza_saude')
- n_items INTEGER, price REAL (soma dos itens, R$), freight_value REAL (frete, R$)
- payment_type TEXT ('credit_card', 'boleto', 'voucher', 'debit_card'), payment_installments INTEGER, payment_value REAL
- order_purchase_timestamp, order_delivered_customer_date, order_estimated_delivery_date TEXT ('AAAA-MM-DD HH:MM:SS')
- purchase_month TEXT ('AAAA-MM'), delivery_days INTEGER, delay_days INTEGER (entrega - prazo; negativo = adiantado)
- is_late INTEGER (1 atrasado, 0 no prazo, NULL não entregue)
- review_score INTEGER (1 a 5), review_comment_title TEXT, review_comment_message TEXT
- sentiment TEXT ('positive', 'neutral', 'negative')
- complaint_category TEXT ('atraso_entrega', 'produto_errado', 'defeito', 'avaria', 'item_faltante',
  'extravio', 'nao_recebido', 'atendimento', 'nenhuma')"""

SQL_QA_TABLE = "orders_enriched"
"""The table the sql_qa prompts describe (:data:`ENRICHED_DOC`) and every generated reference query reads."""
SQL_QA_COLUMNS = tuple(c for c, _ in TABLES[SQL_QA_TABLE] if re.search(rf"\b{c}\b", ENRICHED_DOC))
"""The columns of :data:`SQL_QA_TABLE` that the sql_qa prompt shows the model."""

# Columns every pair line carries (values may be null where a task has no use for them).
PAIR_COLUMNS = ("id", "task", "prompt", "answer", "reference", "reference_sql", "facts", "context")
PAIR_REQUIRED = {"extraction": ("reference",), "sql_qa": ("reference_sql",), "insights": ("facts",),
                 "push": ("context",)}


class SchemaMismatch(ValueError):
    """A database or pair file does not have what the project needs; the message is one line."""


def ddl() -> list[str]:
    """CREATE TABLE statements for every table, in dependency order."""
    return [f"CREATE TABLE {t} ({', '.join(f'{c} {ty}' for c, ty in cols)})" for t, cols in TABLES.items()]


def db_tables(path: str | Path) -> dict[str, set[str]]:
    """Tables and views of a SQLite file with their columns, read-only; :class:`SchemaMismatch` when the
    file is missing or not a SQLite database."""
    p = Path(path)
    if not p.is_file():
        raise SchemaMismatch(f"{p}: no such database file")
    try:
        con = sqlite3.connect(f"{p.resolve().as_uri()}?mode=ro", uri=True)
        try:
            have = {}
            for (name,) in con.execute("SELECT name FROM sqlite_master WHERE type IN ('table', 'view')"):
                have[name] = {row[1] for row in con.execute(f'PRAGMA table_info("{name}")')}
        finally:
            con.close()
    except sqlite3.DatabaseError as e:
        raise SchemaMismatch(f"{p}: not a SQLite database ({e})") from None
    return have


def check_db(path: str | Path) -> None:
    """Raise :class:`SchemaMismatch` unless ``path`` is a SQLite db with every table and column.

    The file is opened read-only (``mode=ro``) and is not modified.
    """
    p = Path(path)
    have = db_tables(p)
    problems = []
    missing_tables = [t for t in TABLES if t not in have]
    if missing_tables:
        problems.append(f"missing table{'s' if len(missing_tables) > 1 else ''} {', '.join(missing_tables)}")
    for t, cols in TABLES.items():
        if t in have:
            lacking = [c for c, _ in cols if c not in have[t]]
            if lacking:
                problems.append(f"{t} lacks {', '.join(lacking)}")
    if problems:
        raise SchemaMismatch(f"{p.name} schema mismatch: {'; '.join(problems)}")
