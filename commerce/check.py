"""``python -m commerce check [--db FILE] [--pairs FILE ...]``: is a user's own data ready for a run?

Run it before a GPU run on the ``commerce.db`` and ``pairs/*.jsonl`` that ``data.*`` points at. It
reads the pairs with the learner's own reader (:mod:`commerce.rows`), so it refuses exactly the rows
a run refuses, and runs the sql_qa reference queries through the reward's own sandbox
(:class:`commerce.sandbox.Sandbox`, which ``rewards.Sandbox`` re-exports) with the reward's limits.
It reports:

- rows per task after classification, and how many of them were classified (no ``task`` column);
- the reference column each task's reward reads (:data:`FALLBACK` says what the reward does without
  it), and which rows lack it;
- whether the database has the table and columns the sql_qa prompts show the model
  (:data:`commerce.schema.SQL_QA_TABLE`), and which tables and columns the reference queries read;
- whether every distinct reference query runs in the sandbox (and warns when one returns no rows,
  which any empty answer then matches, or more rows than the reward compares);
- every malformed row, ``FILE:LINE: FIELD: reason``.

Problems (exit 2): a missing or unreadable file, malformed rows (a run skips them, and refuses to
start above :data:`commerce.rows.MAX_BAD_SHARE`), a file with no usable row, a database without what
the sql_qa prompts show, a reference query that fails. Warnings (exit 0, problems with ``--strict``):
rows lacking their reference column, references that return nothing, sql_qa rows but no ``--db``.
"""

from __future__ import annotations

import argparse
import re
import sqlite3
import sys
from dataclasses import dataclass, field
from pathlib import Path

from .classify import user_text
from .rows import MAX_BAD_SHARE, REFERENCE_COLUMNS, PairsError, percent, as_mapping, read_pairs
from .sandbox import Sandbox
from .schema import SQL_QA_COLUMNS, SQL_QA_TABLE, TABLES, TASKS, SchemaMismatch, db_tables

LISTED = 20  # bad rows and failing queries listed per file without --all

FALLBACK = {
    "extraction": ("values", "valid_json, schema", None, None),
    "sql_qa": ("result_match", "has_sql, executes, explanation", None, None),
    "insights": ("grounded", "insightful, bullets, action_verbs, portuguese, length", "the numbers in the prompt",
                 "grounded and insightful have no number to check against: every number cited counts as invented "
                 "(rewards.insights.no_number_credit when none is cited)"),
    "push": ("situation", "length, tone", "the prompt's 'Produto: X (categoria: Y)' and 'Situação:' lines",
             "no situation component and no product gate: format, tone, Portuguese and novelty only"),
}
"""What each task's reward does for a row without its reference column (see ``rewards/<task>.py``):
(the component the column feeds, the other components, what the reward reads from the prompt
instead, what happens when the prompt lacks that too -- None: the component is dropped and the
reward scores the format only)."""


def fallback_text(task: str) -> str:
    """One line: what the reward of ``task`` does without its reference column."""
    dropped, left, via, without = FALLBACK[task]
    last = without or f"format only ({left}; no {dropped})"
    return f"{dropped} uses {via} instead; with none there, {last}" if via else last


# The prompt fallbacks of the insights and push rewards (rewards.common.numbers_in, rewards.push).
_NUMBER = re.compile(r"(?<![\w])[-+]?\d+(?:[.,]\d+)*")
_PROMPT_PRODUCT = re.compile(r"Produto:\s*(.+?)\s*\(categoria:\s*(.+?)\)")
# As rewards.sql_qa.SqlQaScorer: a reference query gets max(5 s, 10x the candidates' deadline).
REFERENCE_TIMEOUT_MS = 5000


@dataclass
class Report:
    """What :func:`check_data` found; ``text`` is the printed report."""

    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    lines: list[str] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)
    """Rows per task over every pairs file, after classification."""
    classified: dict[str, int] = field(default_factory=dict)
    """Of those, rows whose task was classified from the prompt."""
    have: dict[str, int] = field(default_factory=dict)
    """Rows per task whose reference column the reward can use."""
    prompt_fallback: dict[str, int] = field(default_factory=dict)
    """Rows per task lacking it whose prompt gives the reward what it needs instead (insights, push)."""
    no_fallback: dict[str, int] = field(default_factory=dict)
    """Rows per task lacking it, with no prompt fallback either: scored on format only (extraction,
    sql_qa, push) or with every cited number counted as invented (insights)."""
    bad: list = field(default_factory=list)
    """Every malformed row (:class:`commerce.rows.BadRow`)."""
    queries: int = 0
    """Distinct sql_qa reference queries run against the database."""
    failed_queries: int = 0
    reads: dict[str, set[str]] = field(default_factory=dict)
    """Tables and columns the reference queries read."""

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def text(self) -> str:
        out = list(self.lines)
        if self.warnings:
            out.append(f"warnings ({len(self.warnings)}):")
            out += [f"  {w}" for w in self.warnings]
        if self.problems:
            out.append(f"problems ({len(self.problems)}):")
            out += [f"  {p}" for p in self.problems]
            out.append(f"not ready: {len(self.problems)} problem{'s' if len(self.problems) > 1 else ''}")
        else:
            n = sum(self.counts.values())
            out.append(f"ready: no problems ({n} rows" + (f", {len(self.warnings)} warnings)" if self.warnings
                                                           else ")"))
        return "\n".join(out)


def _where(locs: list[tuple[str, int]]) -> str:
    """``f.jsonl lines 3, 9, 12 and 4 more`` (or ``a:3, b:9`` across files)."""
    files = {p for p, _ in locs}
    if len(files) == 1:
        shown = f"{locs[0][0]} line{'s' if len(locs) > 1 else ''} " + ", ".join(str(n) for _, n in locs[:3])
    else:
        shown = ", ".join(f"{p}:{n}" for p, n in locs[:3])
    return shown + (f" and {len(locs) - 3} more" if len(locs) > 3 else "")


def check_data(db: str | Path | None, pairs: list[str | Path], *, strict: bool = False, list_all: bool = False,
               sql_timeout_ms: int = 200, sql_max_rows: int = 1000) -> Report:
    """Check the pair files and the database; see the module docstring for what is reported."""
    rep = Report()
    limit = None if list_all else LISTED
    rows = []  # accepted rows of every file, with their file
    for path in pairs:
        try:
            pf = read_pairs(path)
        except PairsError as e:
            rep.problems.append(str(e))
            continue
        rows += [(pf.path, r) for r in pf.rows]
        rep.bad += pf.bad
        counts = pf.counts()
        cls = {t: sum(1 for r in pf.rows if r.task == t and not r.labelled) for t in counts}
        rep.lines.append(f"pairs {pf.path}: {pf.total} rows, {len(pf.rows)} usable, {len(pf.bad)} malformed")
        if counts:
            rep.lines.append(f"  {'task':<11} {'rows':>6} {'labelled':>9} {'classified':>11}")
            for t, n in counts.items():
                rep.lines.append(f"  {t:<11} {n:>6} {n - cls[t]:>9} {cls[t]:>11}")
        for t, n in counts.items():
            rep.counts[t] = rep.counts.get(t, 0) + n
            rep.classified[t] = rep.classified.get(t, 0) + cls[t]
        if pf.total == 0 or not pf.rows:
            rep.problems.append(f"{pf.path}: no usable pairs")
        if pf.bad:
            share = len(pf.bad) / pf.total
            verdict = (f"above the {percent(MAX_BAD_SHARE)} limit: a run refuses to start" if share > MAX_BAD_SHARE
                       else "a run skips them")
            rep.problems.append(f"{pf.path}: {len(pf.bad)} of {pf.total} rows are malformed ({percent(share)}; "
                                f"{verdict})")
            rep.problems += [str(b) for b in pf.bad[:limit]]
            if limit is not None and len(pf.bad) > limit:
                rep.problems.append(f"{pf.path}: ... and {len(pf.bad) - limit} more malformed rows (--all lists them)")
    if len(pairs) > 1 and rep.counts:
        rep.lines.append("all pairs: " + ", ".join(f"{t} {rep.counts[t]}" for t in TASKS if t in rep.counts)
                         + f" ({sum(rep.classified.values())} classified)")
    if rows:
        _references(rep, rows)
    sql_rows = [(p, r) for p, r in rows if r.task == "sql_qa"]
    if db is not None:
        _database(rep, Path(db), sql_rows, bool(pairs), limit, sql_timeout_ms, sql_max_rows)
    elif any(isinstance(r.columns.get("reference_sql"), str) and r.columns["reference_sql"].strip()
             for _, r in sql_rows):
        rep.warnings.append("sql_qa rows have reference_sql but no --db was given: the reference queries were "
                            "not run (a run executes them against data.db_path)")
    if strict:
        rep.problems += [f"(--strict) {w}" for w in rep.warnings]
        rep.warnings = []
    return rep


def _references(rep: Report, rows: list) -> None:
    rep.lines.append("reference columns (each task's reward reads one):")
    rep.lines.append(f"  {'task':<11} {'column':<14} {'have':>6} {'lack':>6}  without it")
    for task in TASKS:
        mine = [(p, r) for p, r in rows if r.task == task]
        if not mine:
            continue
        col = REFERENCE_COLUMNS[task]
        lack, unreadable, via_prompt, fmt = [], [], [], []
        for p, r in mine:
            v = r.columns.get(col)
            if task == "sql_qa":
                usable = isinstance(v, str) and bool(v.strip())
            else:
                usable = bool(as_mapping(v))
                if isinstance(v, str) and v.strip() and as_mapping(v) is None:
                    unreadable.append((p, r.line))
            if usable:
                continue
            loc = (p, r.line)
            lack.append(loc)
            text = user_text(r.messages)
            if (task == "insights" and _NUMBER.search(text)) or (task == "push" and _PROMPT_PRODUCT.search(text)):
                via_prompt.append(loc)
            else:
                fmt.append(loc)
        rep.have[task] = len(mine) - len(lack)
        rep.prompt_fallback[task] = len(via_prompt)
        rep.no_fallback[task] = len(fmt)
        rep.lines.append(f"  {task:<11} {col:<14} {len(mine) - len(lack):>6} {len(lack):>6}  {fallback_text(task)}")
        dropped, left, via, without = FALLBACK[task]
        if unreadable:
            rep.warnings.append(f"{task}: {len(unreadable)} rows have a {col} string that is not a JSON object "
                                f"({_where(unreadable)}); counted as lacking it (the reward's tolerant JSON "
                                "parser may still read some)")
        if via_prompt:
            rep.lines.append(f"    {len(via_prompt)} of the {len(lack)} {task} rows without {col}: {dropped} "
                             f"uses {via} instead")
        if fmt:
            what = (f"and their prompt has no number either: {without}" if without else
                    f"the reward falls back to format-only scoring for them ({left}; no {dropped})")
            rep.warnings.append(f"{task}: {len(fmt)} of {len(mine)} rows lack {col} ({_where(fmt)}): {what}")


def _database(rep: Report, db: Path, sql_rows: list, have_pairs: bool, limit: int | None, timeout_ms: int,
              max_rows: int) -> None:
    try:
        tables = db_tables(db)
    except SchemaMismatch as e:
        rep.problems.append(str(e))
        return
    rep.lines.append(f"database {db}: {len(tables)} tables and views")
    shown = [r for _, r in sql_rows if SQL_QA_TABLE in user_text(r.messages).lower()]
    if have_pairs and not sql_rows:
        rep.lines.append("  no sql_qa rows: no reward reads the database")
    elif not have_pairs or shown:
        why = "the sql_qa prompts show it" if have_pairs else "the sql_qa prompts of `commerce build` show it"
        if SQL_QA_TABLE not in tables:
            rep.problems.append(f"{db}: missing table {SQL_QA_TABLE} ({why}; the sql_qa reward runs the model's "
                                "queries against it)")
        else:
            lacking = [c for c in SQL_QA_COLUMNS if c not in tables[SQL_QA_TABLE]]
            if lacking:
                rep.problems.append(f"{db}: {SQL_QA_TABLE} lacks {', '.join(lacking)} ({why})")
            else:
                rep.lines.append(f"  {SQL_QA_TABLE}: all {len(SQL_QA_COLUMNS)} columns the sql_qa prompt shows")
    else:
        rep.lines.append(f"  the sql_qa prompts do not name {SQL_QA_TABLE}: the reward reads only what the "
                         "queries name")
    others = [t for t in TABLES if t != SQL_QA_TABLE and t not in tables]
    if others:
        rep.lines.append(f"  not read by any reward, absent: {', '.join(others)} (`commerce build` makes them)")
    refs: dict[str, list[tuple[str, int]]] = {}
    for p, r in sql_rows:
        v = r.columns.get("reference_sql")
        if isinstance(v, str) and v.strip():
            refs.setdefault(v, []).append((p, r.line))
    if not refs:
        return
    _run_references(rep, db, refs, limit, timeout_ms, max_rows)


def _run_references(rep: Report, db: Path, refs: dict[str, list[tuple[str, int]]], limit: int | None, timeout_ms: int,
                    max_rows: int) -> None:
    ref_ms = max(REFERENCE_TIMEOUT_MS, 10 * timeout_ms)
    reads: dict[str, set[str]] = {}

    def collect(action, arg1, arg2, dbname, source):
        if action == sqlite3.SQLITE_READ and arg1 and arg2:
            reads.setdefault(arg1, set()).add(arg2)
        return sqlite3.SQLITE_OK

    sb = Sandbox(db, timeout_ms=timeout_ms, max_rows=max_rows)
    con = sqlite3.connect(f"{db.resolve().as_uri()}?mode=ro", uri=True)
    con.set_authorizer(collect)
    failed, empty, slowest = [], [], 0.0
    try:
        for sql, locs in refs.items():
            res = sb.run(sql, timeout_ms=ref_ms)
            rep.queries += 1
            if not res.ok:
                more = f" (and {len(locs) - 1} more rows with this query)" if len(locs) > 1 else ""
                failed.append(f"{locs[0][0]}:{locs[0][1]}: reference_sql: fails in the reward's sandbox: "
                              f"{res.error}{more}")
                continue
            slowest = max(slowest, res.ms)
            try:
                con.execute(f"EXPLAIN {sql.strip().rstrip(';')}").fetchall()
            except sqlite3.Error:
                pass
            if not res.rows:
                empty.append(locs[0])
            elif res.truncated:
                rep.warnings.append(f"{locs[0][0]}:{locs[0][1]}: reference_sql returns more than {max_rows} rows: "
                                    f"the reward compares the first {max_rows}")
    finally:
        sb.close()
        con.close()
    rep.failed_queries = len(failed)
    rep.reads = reads
    n_rows = sum(len(v) for v in refs.values())
    ok = rep.queries - len(failed)
    rep.lines.append(f"  reference queries: {rep.queries} distinct over {n_rows} sql_qa rows; {ok} run in the "
                     f"reward's sandbox (deadline {ref_ms} ms, slowest {slowest:.0f} ms), {len(failed)} fail")
    for t in sorted(reads):
        rep.lines.append(f"  they read {t}: {', '.join(sorted(reads[t]))}")
    rep.problems += failed[:limit]
    if limit is not None and len(failed) > limit:
        rep.problems.append(f"... and {len(failed) - limit} more failing reference queries (--all lists them)")
    if empty:
        rep.warnings.append(f"{len(empty)} reference queries return no rows ({_where(empty)}): any "
                            "query that returns no rows matches them")


def add_arguments(c: argparse.ArgumentParser) -> None:
    c.add_argument("--db", default=None, help="the commerce.db the sql_qa reward reads (data.db_path)")
    c.add_argument("--pairs", action="extend", nargs="+", default=[], metavar="FILE",
                   help="pair files or datasets (data.train_pairs, data.eval_pairs): .jsonl; .parquet, .json, .csv, "
                        "a save_to_disk DIR[:split] or a Hub owner/name:split through datasets; repeatable")
    c.add_argument("--strict", action="store_true", help="treat warnings (rows without references...) as problems")
    c.add_argument("--all", dest="list_all", action="store_true",
                   help=f"list every malformed row and failing query (default: the first {LISTED} per file)")
    c.add_argument("--sql-timeout-ms", type=int, default=200, help="rewards.sql_timeout_ms of the run (200)")
    c.add_argument("--sql-max-rows", type=int, default=1000, help="rewards.sql_max_rows of the run (1000)")


def main(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    if args.db is None and not args.pairs:
        parser.error("check needs --db FILE, --pairs FILE ... or both")
    rep = check_data(args.db, args.pairs, strict=args.strict, list_all=args.list_all,
                  sql_timeout_ms=args.sql_timeout_ms, sql_max_rows=args.sql_max_rows)
    print(rep.text, flush=True)
    if rep.problems:
        n = len(rep.problems)
        print(f"error: {n} problem{'s' if n > 1 else ''}; first: {rep.problems[0]}", file=sys.stderr)
        return 2
    return 0
