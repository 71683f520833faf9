"""sql_qa reward: a PT-BR question to SQL (in a ```sql block) plus a one-line explanation.

Components (weights from ``rewards.sql_qa.weights``, normalised to sum 1):

- ``has_sql`` (0.1): a read statement (SELECT/WITH/VALUES) could be extracted (```sql/```sqlite
  block, any fenced block that starts with SELECT/WITH, an unclosed fence, or a bare ``SELECT ...;``);
- ``executes`` (0.2): it runs in the read-only :class:`rewards.sandbox.Sandbox` within the deadline **and reads
  the database** (SQLite's authorizer reports every table and column a statement reads). ``SELECT 'DF',
  'esporte_lazer'`` runs but reads nothing: it answers nothing and earns neither this nor anything below;
- ``result_match`` (0.6): its result against the reference query's result (see :func:`match_results`): 1.0
  equal (order-insensitive unless the reference has ORDER BY, numbers compared at the reference's precision, at
  most 2 decimals), 0.8 when the right rows come in the wrong order or with at most ``max_extra_columns`` extra
  columns (``SELECT *`` does not find the answer among 28 columns), 0.5 when only some of the reference's columns
  are returned, up to 0.5 for partially overlapping rows. A result that matches in none of these ways earns up to
  ``partial_credit`` (0.25) for asking the right thing (:func:`relevance`): half for making the reference's
  comparisons with its string literals (``WHERE customer_state = 'DF'``: the same column or expression against
  the same value; a literal selected, in a comment, or compared with another column is not that filter), half
  for reading the columns the reference reads (Jaccard: reading every column earns little);
- ``explanation`` (0.1): a short (15-300 characters) PT-BR explanation outside the SQL, counted only when the
  SQL executes and reads data (an explanation of a query that answers nothing explains nothing) and, with a
  reference, when its result earns at least ``explained_match`` (0.5) of ``result_match``: an explanation of
  another question's answer is not one of this question's.

Robustness (tests/unit/test_reward_attacks.py): SQL that answers nothing (the question's literals selected or
commented, a guessed constant, an empty fence, the question or the schema echoed) never scores more than an
honest query that runs and returns wrong rows; one query for every question (a count, ``SELECT *``) earns at
most 0.4, the format's share.

Reference results are cached per ``reference_sql``; candidate results per statement text (GRPO's
16 samples of a prompt often agree), both for the life of the reward function (the db is
read-only). Without a ``reference_sql`` ``result_match`` is dropped and the rest renormalised.

How it departs from the user's earlier reward ("SQL structure, numbers, domain coherence", scored
on the text): a query that looks right but does not run, or runs and answers something else,
earned most of that reward. Here the SQL is executed and its result compared with the reference's,
so only correct answers score high; hostile SQL cannot touch the db and scores 0.1 at most
(0 for anything that is not a SELECT).
"""

from __future__ import annotations

import itertools
import re
from collections import Counter, OrderedDict
from typing import Any

from .common import combine, pt_score
from .sandbox import Sandbox, SqlResult

COMPONENTS = {"has_sql": 0.1, "executes": 0.2, "result_match": 0.6, "explanation": 0.1}
SHAPING = {"partial_credit": 0.25, "max_extra_columns": 2, "explained_match": 0.5}
"""Defaults of the knobs (``rewards.sql_qa`` in the run config passes every one of them explicitly)."""

_FENCE = re.compile(r"```[ \t]*([A-Za-z0-9_+-]*)[^\n]*\n(.*?)(?:```|\Z)", re.S)
_BARE = re.compile(r"(?is)\b(?:SELECT|WITH)\b.*?(?:;|\n\s*\n|\Z)")
_STARTS = re.compile(r"(?is)^\s*(?:--[^\n]*\n\s*)*\(?\s*(?:SELECT|WITH|VALUES)\b")
_ORDER_BY = re.compile(r"(?i)\border\s+by\b")
_LITERAL = re.compile(r"'((?:[^']|'')*)'")
_LIT = r"'(?:[^']|'')*'"
_OP = r"(?:=|==|<>|!=|<=|>=|<|>|\bLIKE\b|\bGLOB\b|\bIS\b)"
_COMPARED = re.compile(rf"{_OP}\s*({_LIT})|({_LIT})\s*{_OP}", re.I)
_IN_LIST = re.compile(r"\bIN\s*\(([^()]*)\)", re.I)


def extract_sql(text: str) -> str | None:
    """The SQL statement of a completion, without the trailing semicolon; None if there is none.

    >>> extract_sql("Aqui está:\\n```sql\\nSELECT COUNT(*) FROM orders_enriched;\\n```\\nConta os pedidos.")
    'SELECT COUNT(*) FROM orders_enriched'
    >>> extract_sql("SELECT 1;\\nIsso retorna 1.")
    'SELECT 1'
    >>> extract_sql("Não sei.") is None
    True
    """
    if not isinstance(text, str):
        return None
    text = text[:50000]
    blocks = [(lang.lower(), body) for lang, body in _FENCE.findall(text)]
    body = next((b for lang, b in blocks if lang.startswith("sql")), None)
    if body is None:
        body = next((b for _, b in blocks if _STARTS.match(b)), None)
    if body is None:
        m = _BARE.search(text)
        body = m.group() if m else None
    if body is None:
        return None
    sql = body.strip().rstrip(";").strip()
    return sql or None


def explanation_score(text: str, sql: str | None) -> float:
    """Credit for a short PT-BR explanation outside the SQL (15-300 characters).

    >>> explanation_score("```sql\\nSELECT 1\\n```\\nConta os pedidos que foram entregues com atraso.", "SELECT 1")
    1.0
    """
    rest = _FENCE.sub(" ", text[:50000])
    if sql:
        rest = rest.replace(sql, " ")
    rest = re.sub(r"(?is)\b(?:SELECT|WITH)\b.*?(?:;|\n\s*\n|\Z)", " ", rest) if not sql else rest
    rest = " ".join(rest.split())
    if not rest:
        return 0.0
    n = len(rest)
    length = min(1.0, n / 15) if n <= 300 else max(0.3, 1.0 - (n - 300) / 600)
    return round(length * min(1.0, pt_score(rest) / 0.6), 4)


def _decimals(v: Any) -> int:
    if isinstance(v, float):
        r = repr(v)
        return min(2, len(r.split(".")[1])) if "." in r and "e" not in r else 2
    return 0


def _canon_value(v: Any, d: int) -> Any:
    if isinstance(v, bool):
        v = int(v)
    if isinstance(v, (int, float)):
        x = round(float(v), d)
        return x + 0.0  # -0.0 -> 0.0
    if isinstance(v, str):
        return v.strip().lower()
    if isinstance(v, (bytes, bytearray)):
        return bytes(v).hex()
    return v


def _canon(rows: list[tuple], cols: list[int], decimals: list[int]) -> list[tuple]:
    return [tuple(_canon_value(r[c], d) for c, d in zip(cols, decimals, strict=True)) for r in rows]


def _same(a: list[tuple], b: list[tuple], ordered: bool) -> float:
    if len(a) != len(b):
        return 0.0
    if a == b:
        return 1.0
    if Counter(a) == Counter(b):
        return 0.8 if ordered else 1.0
    return 0.0


def match_results(got: list[tuple], ref: list[tuple], ordered: bool = False, max_extra_columns: int = 2) -> float:
    """Compare a candidate result with the reference result, in [0, 1].

    >>> match_results([(4.0712,)], [(4.07,)])
    1.0
    >>> match_results([("RJ", 2), ("SP", 9)], [("SP", 9), ("RJ", 2)], ordered=True)
    0.8
    >>> match_results([("SP", 9, 0.5)], [("SP", 9)])
    0.8
    >>> match_results([(9,)], [("SP", 9)])
    0.5
    >>> match_results([], [(1,)])
    0.0
    >>> match_results([("SP", 9, 1, 2, 3)], [("SP", 9)])  # the answer somewhere among many columns: no credit
    0.0
    """
    if not ref or not ref[0]:
        return 1.0 if not got else 0.0
    if not got or not got[0]:
        return 0.0
    nr, ng = len(ref[0]), len(got[0])
    if any(len(r) != nr for r in ref) or any(len(r) != ng for r in got):
        return 0.0
    dec = [max(_decimals(r[j]) for r in ref[:1000]) for j in range(nr)]
    ref_c = _canon(ref, list(range(nr)), dec)
    if ng == nr:
        s = _same(_canon(got, list(range(ng)), dec), ref_c, ordered)
        if s:
            return s
    best = 0.0
    if nr < ng <= nr + max_extra_columns:  # extra columns: find the reference's columns among the candidate's
        for perm in itertools.islice(itertools.permutations(range(ng), nr), 720):
            s = _same(_canon(got, list(perm), dec), ref_c, ordered)
            if s:
                return 0.8 * s
    elif ng < nr:  # missing columns: the candidate's columns are some of the reference's
        for perm in itertools.islice(itertools.permutations(range(nr), ng), 720):
            s = _same(_canon(got, list(range(ng)), [dec[j] for j in perm]),
                      _canon(ref, list(perm), [dec[j] for j in perm]), ordered)
            if s:
                return 0.5 * s
    if ng == nr:  # partial row overlap
        common = sum((Counter(_canon(got, list(range(ng)), dec)) & Counter(ref_c)).values())
        best = 0.5 * common / max(len(got), len(ref))
    return round(best, 4)


def literals(sql: str) -> set[str]:
    """The string literals of a statement, case-folded and stripped.

    >>> sorted(literals("SELECT COUNT(*) FROM t WHERE uf = 'DF' AND cat = 'Esporte_Lazer'"))
    ['df', 'esporte_lazer']
    """
    return {m.replace("''", "'").strip().lower() for m in _LITERAL.findall(sql or "")} - {""}


def compared_literals(sql: str) -> set[str]:
    """The string literals a statement compares against (``col = 'x'``, ``'x' = col``, ``LIKE 'x%'``,
    ``IN ('x', 'y')``), case-folded; literals that are selected, or sit in comments, are not compared.

    >>> sorted(compared_literals("SELECT 'DF', COUNT(*) FROM t WHERE uf IN ('SP', 'RJ') AND c = 'x' -- 'y'"))
    ['rj', 'sp', 'x']
    """
    from .sandbox import split_statements

    stmts = split_statements(sql or "")  # comments removed, string literals kept
    body = " ".join(stmts)
    out = {(a or b) for a, b in _COMPARED.findall(body)}
    for group in _IN_LIST.findall(body):
        out |= set(_LIT_RE.findall(group))
    return {x[1:-1].replace("''", "'").strip().lower() for x in out} - {""}


_LIT_RE = re.compile(_LIT)
_EXPR = r"[A-Za-z_][\w.]*(?:\s*\([^()]*\))?"
_PAIR_L = re.compile(rf"({_EXPR})\s*{_OP}\s*({_LIT})", re.I)
_PAIR_R = re.compile(rf"({_LIT})\s*{_OP}\s*({_EXPR})", re.I)
_PAIR_IN = re.compile(rf"({_EXPR})\s+(?:NOT\s+)?IN\s*\(([^()]*)\)", re.I)


def _expr(e: str) -> str:
    e = re.sub(r"\s+", "", e.lower())
    return re.sub(r"\b\w+\.(?=\w)", "", e)  # t.col -> col


def compared_pairs(sql: str) -> set[tuple[str, str]]:
    """(expression, literal) of each comparison with a string literal, case-folded: what a filter asks.

    >>> sorted(compared_pairs("SELECT 'DF' FROM t WHERE t.uf IN ('SP', 'RJ') AND substr(d, 1, 4) = '2018' -- c = 'y'"))
    [('substr(d,1,4)', '2018'), ('uf', 'rj'), ('uf', 'sp')]
    """
    from .sandbox import split_statements

    body = " ".join(split_statements(sql or ""))  # comments removed, string literals kept
    out = {(_expr(e), lit) for e, lit in _PAIR_L.findall(body)} | {(_expr(e), lit) for lit, e in _PAIR_R.findall(body)}
    for e, group in _PAIR_IN.findall(body):
        out |= {(_expr(e), lit) for lit in _LIT_RE.findall(group)}
    return {(e, lit[1:-1].replace("''", "'").strip().lower()) for e, lit in out if lit[1:-1].strip()}


def relevance(sql: str, reads: frozenset, reference_sql: str, reference_reads: frozenset) -> float:
    """How much a wrong query asks what the reference asks, in [0, 1]: half the share of the reference's
    comparisons with a string literal it makes too (the same column or expression against the same value: the
    question's 'SP' compared with the category column asks nothing), half the Jaccard overlap of the columns both
    read (a reference without such comparisons or without column reads gives its half to the other part).

    >>> ref = "SELECT COUNT(*) FROM t WHERE uf = 'SP' AND c = 'x'"
    >>> relevance("SELECT AVG(p) FROM t WHERE uf = 'SP'", frozenset({("t", "uf"), ("t", "p")}), ref,
    ...           frozenset({("t", "uf"), ("t", "c")}))
    0.4167
    >>> relevance("SELECT AVG(p) FROM t WHERE c = 'SP'", frozenset({("t", "c"), ("t", "p")}), ref,
    ...           frozenset({("t", "uf"), ("t", "c")}))
    0.1667
    """
    parts = []
    ref_pairs = compared_pairs(reference_sql)
    if ref_pairs:
        parts.append(len(ref_pairs & compared_pairs(sql)) / len(ref_pairs))
    ref_cols = {c for c in reference_reads if c[1]}
    cols = {c for c in reads if c[1]}
    if ref_cols:
        parts.append(len(ref_cols & cols) / len(ref_cols | cols))
    return round(sum(parts) / len(parts), 4) if parts else 0.0


class SqlQaScorer:
    """Scores sql_qa completions against a database through a :class:`Sandbox`."""

    def __init__(self, db_path, timeout_ms: int = 200, max_rows: int = 1000, cache_size: int = 4096,
                 partial_credit: float = SHAPING["partial_credit"],
                 max_extra_columns: int = SHAPING["max_extra_columns"],
                 explained_match: float = SHAPING["explained_match"]):
        self.partial_credit, self.max_extra_columns = float(partial_credit), int(max_extra_columns)
        self.explained_match = float(explained_match)
        self.sandbox = Sandbox(db_path, timeout_ms=timeout_ms, max_rows=max_rows) if db_path else None
        self._ref_cache: dict[str, SqlResult] = {}
        self._cand_cache: OrderedDict[str, SqlResult] = OrderedDict()
        self.cache_size = cache_size
        self.ref_timeout_ms = max(5000, 10 * timeout_ms)

    def reference_result(self, reference_sql: str) -> SqlResult | None:
        if self.sandbox is None:
            return None
        r = self._ref_cache.get(reference_sql)
        if r is None:
            r = self.sandbox.run(reference_sql, timeout_ms=self.ref_timeout_ms)
            self._ref_cache[reference_sql] = r
        return r

    def candidate_result(self, sql: str) -> SqlResult:
        r = self._cand_cache.get(sql)
        if r is None:
            r = self.sandbox.run(sql)
            self._cand_cache[sql] = r
            if len(self._cand_cache) > self.cache_size:
                self._cand_cache.popitem(last=False)
        else:
            self._cand_cache.move_to_end(sql)
        return r

    def clear_candidate_cache(self) -> None:
        self._cand_cache.clear()

    def parts(self, text: str, reference_sql: Any = None) -> dict[str, float | None]:
        sql = extract_sql(text)
        ref_sql = reference_sql if isinstance(reference_sql, str) and reference_sql.strip() else None
        is_read = bool(sql and _STARTS.match(sql))
        parts: dict[str, float | None] = {"has_sql": 1.0 if is_read else 0.0, "executes": 0.0,
                                          "result_match": 0.0 if ref_sql else None, "explanation": 0.0}
        if self.sandbox is None:
            parts["executes"] = parts["result_match"] = None
            parts["explanation"] = explanation_score(text, sql) if is_read else 0.0
            return parts
        if not is_read:
            return parts
        got = self.candidate_result(sql)
        if not got.ok or not got.reads:  # fails, or reads no data: answers nothing
            return parts
        parts["executes"] = 1.0
        parts["explanation"] = explanation_score(text, sql)
        if ref_sql:
            ref = self.reference_result(ref_sql)
            if ref is not None and ref.ok:
                match = match_results(got.rows, ref.rows, bool(_ORDER_BY.search(ref_sql)), self.max_extra_columns)
                if match == 0.0:
                    match = round(self.partial_credit * relevance(sql, got.reads, ref_sql, ref.reads), 4)
                parts["result_match"] = match
                if match < self.explained_match:
                    parts["explanation"] = 0.0  # it would explain an answer to another question
            else:
                parts["result_match"] = None
        return parts

    def score(self, text: str, reference_sql: Any = None, weights: dict[str, float] | None = None) -> float:
        """The sql_qa reward of one completion, in [0, 1]."""
        return round(combine(weights or COMPONENTS, self.parts(text, reference_sql)), 6)

    def close(self) -> None:
        if self.sandbox is not None:
            self.sandbox.close()
