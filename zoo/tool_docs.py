"""Tool-use documents for the stand-in's pre-training (``python -m zoo pretrain --tool-share X``).

A real Instruct model reads tool use in its post-training; the demo's stand-in reads only what ``zoo.pretrain`` gives
it. With a tool share, that share of the sql_qa task documents is written as the episode the actor runs
(``actor.episodes``): the question, a query in ``<sql>…</sql>``, the observation the actor appends for it (the same
sandbox, the same rendering: ``commerce.episode``), then the answer. Half the probes are the answer's own query
(its rows come back and the answer repeats it); the other half are a near miss, the query with its first string
literal mis-written (``'SP'`` as ``'sp'``, ``'cama_mesa_banho'`` as ``'cama mesa banho'``) or, without one, a
column misspelt, whose empty rows, zero or error come back before the right answer: what a policy can learn to read
from an observation. Deterministic for a seed.
"""

from __future__ import annotations

import random
import re

from commerce.episode import OBS_CHARS, OBS_ROWS, call_text, observation, rows_text

_FENCE = re.compile(r"```sql\n(.*?)\n```", re.S)
_LITERAL = re.compile(r"'([^']+)'")
_COLUMN = re.compile(r"\b(review_score|price|freight_value|delivery_days|delay_days|payment_value)\b")


def near_miss(sql: str) -> str:
    """``sql`` with its first string literal mis-written, else a column misspelt (else unchanged).

    >>> near_miss("SELECT COUNT(*) FROM t WHERE uf = 'SP'"), near_miss("SELECT 1 FROM t WHERE c = 'cama_mesa'")
    ("SELECT COUNT(*) FROM t WHERE uf = 'sp'", "SELECT 1 FROM t WHERE c = 'cama mesa'")
    >>> near_miss("SELECT AVG(price) FROM t")
    'SELECT AVG(preco) FROM t'
    """
    m = _LITERAL.search(sql)
    if m:
        lit = m.group(1)
        wrong = lit.lower() if lit != lit.lower() else (lit.replace("_", " ") if "_" in lit else lit + "s")
        return sql[:m.start(1)] + wrong + sql[m.end(1):]
    m = _COLUMN.search(sql)
    if m:
        return sql[:m.start()] + {"review_score": "nota", "price": "preco", "freight_value": "frete",
                                  "delivery_days": "dias", "delay_days": "atraso",
                                  "payment_value": "valor"}[m.group(1)] + sql[m.end():]
    return sql


def episode_answer(answer: str, sandbox, rng: random.Random) -> str | None:
    """The answer of a sql_qa document written as a tool episode (None when it holds no ```sql block)."""
    m = _FENCE.search(answer)
    if m is None:
        return None
    query = " ".join(m.group(1).split()).rstrip(";")
    probe = query if rng.random() < 0.5 else near_miss(query)
    res = sandbox.run(probe)
    text = (rows_text(res.columns, res.rows, OBS_ROWS, OBS_CHARS, more=res.truncated)[0] if res.ok
            else f"erro: {res.error}")
    return call_text("sql", probe) + observation(text) + answer
