"""SQL sandbox: one read-only SELECT against ``commerce.db`` under a deadline (see :mod:`commerce.sandbox`).

The implementation lives in :mod:`commerce.sandbox` so that ``python -m commerce check`` runs a
user's reference queries through the very sandbox the sql_qa reward uses, while ``commerce`` stays
free of ``rewards`` imports (``rewards`` may import ``commerce``, not the reverse).

>>> import commerce.sandbox
>>> Sandbox is commerce.sandbox.Sandbox and SqlResult is commerce.sandbox.SqlResult
True
>>> split_statements("SELECT 1; DROP TABLE orders")
['SELECT 1', 'DROP TABLE orders']
"""

from __future__ import annotations

from commerce.sandbox import ALLOWED_FUNCTIONS, Sandbox, SqlResult, split_statements

__all__ = ["ALLOWED_FUNCTIONS", "Sandbox", "SqlResult", "split_statements"]
