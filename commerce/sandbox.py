"""SQL sandbox: run one policy-written SELECT against ``commerce.db`` without any way to harm it.

Used by the sql_qa reward (re-exported as ``rewards.Sandbox``) and by ``python -m commerce check``,
which runs the pairs' reference queries through it; it lives here so that both can use it (``rewards``
may import ``commerce``, not the reverse).

Layers, each sufficient for its class of attack:

- the file is opened read-only (URI ``mode=ro``; ``immutable=1`` as well when the file is in WAL
  mode, where a read-only reader would otherwise create ``-shm``), ``PRAGMA query_only=1``,
  ``temp_store=MEMORY`` (sorts and temp b-trees never spill to files), ``trusted_schema=OFF``;
- the statement must be exactly one statement starting with SELECT, WITH or VALUES (comments and
  string literals are respected when splitting), so ``VACUUM INTO``, ``ATTACH``, ``PRAGMA`` and
  multi-statement payloads are refused before SQLite sees them;
- an authorizer allows only SELECT, reads of the main database and an allow-list of pure
  functions (no ``load_extension``, ``randomblob``, ``zeroblob``, ``printf``...); recursive CTEs,
  writes, temp objects, triggers, ATTACH/DETACH, PRAGMA and transactions are denied;
- limits: string/blob length (``SQLITE_LIMIT_LENGTH``, 10,000: bounds the work of a single function
  call, which the progress handler cannot interrupt), LIKE/GLOB pattern length (64), SQL length,
  columns, expression depth, compound SELECTs, attached databases (0), function arguments;
- a deadline enforced by a progress handler (every 500 VM instructions; default 200 ms) for both
  execution and fetching, and caps on rows fetched and on the total size of the result.

Nothing is written anywhere: no journal, WAL, SHM or temp file. A failure is returned, never raised.
"""

from __future__ import annotations

import re
import sqlite3
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

ALLOWED_FUNCTIONS = frozenset("""
count sum avg min max total group_concat string_agg round abs lower upper length octet_length substr substring
trim ltrim rtrim replace instr coalesce ifnull nullif iif if typeof cast date time datetime julianday unixepoch
strftime timediff like glob char unicode hex quote sign ceil ceiling floor trunc sqrt pow power
mod exp ln log log2 log10 pi row_number rank dense_rank ntile lag lead first_value last_value nth_value
percent_rank cume_dist likely unlikely likelihood concat concat_ws median
""".split())

_LIMITS = (
    ("SQLITE_LIMIT_SQL_LENGTH", 20000),
    ("SQLITE_LIMIT_COLUMN", 100),
    ("SQLITE_LIMIT_EXPR_DEPTH", 100),
    ("SQLITE_LIMIT_COMPOUND_SELECT", 20),
    ("SQLITE_LIMIT_VDBE_OP", 50000),
    ("SQLITE_LIMIT_FUNCTION_ARG", 16),
    ("SQLITE_LIMIT_ATTACHED", 0),
    ("SQLITE_LIMIT_LIKE_PATTERN_LENGTH", 64),
    ("SQLITE_LIMIT_VARIABLE_NUMBER", 10),
    ("SQLITE_LIMIT_TRIGGER_DEPTH", 1),
)
_FIRST_WORD = re.compile(r"[A-Za-z]+")


@dataclass
class SqlResult:
    """Outcome of one statement: ``ok`` with ``rows`` (tuples), or ``error`` (one line)."""

    ok: bool
    rows: list[tuple] = field(default_factory=list)
    columns: tuple[str, ...] = ()
    error: str | None = None
    truncated: bool = False
    ms: float = 0.0
    reads: frozenset[tuple[str, str]] = frozenset()
    """``(table, column)`` pairs the statement reads (SQLite's authorizer; column ``""`` for a table read as a
    whole, ``COUNT(*)``); empty when it reads no data at all (``SELECT 'SP'``)."""


def split_statements(sql: str) -> list[str]:
    """Split on ';' outside quotes and comments; drop statements that are only blanks/comments.

    >>> split_statements("SELECT 1; -- fim")
    ['SELECT 1']
    >>> split_statements("SELECT ';' AS x; DROP TABLE orders")
    ["SELECT ';' AS x", 'DROP TABLE orders']
    """
    out, buf, i, n = [], [], 0, len(sql)
    while i < n:
        c = sql[i]
        if c in "'\"`[":
            close = "]" if c == "[" else c
            j = sql.find(close, i + 1)
            while j != -1 and close != "]" and j + 1 < n and sql[j + 1] == close:
                j = sql.find(close, j + 2)
            j = n - 1 if j == -1 else j
            buf.append(sql[i:j + 1])
            i = j + 1
        elif sql.startswith("--", i):
            j = sql.find("\n", i)
            i = n if j == -1 else j + 1
            buf.append(" ")
        elif sql.startswith("/*", i):
            j = sql.find("*/", i + 2)
            i = n if j == -1 else j + 2
            buf.append(" ")
        elif c == ";":
            out.append("".join(buf))
            buf = []
            i += 1
        else:
            j = i + 1
            while j < n and sql[j] not in "'\"`[;-/":
                j += 1
            buf.append(sql[i:j])
            i = j
    out.append("".join(buf))
    return [s.strip() for s in out if s.strip()]


def _db_uri(path: Path) -> str:
    uri = f"{path.resolve().as_uri()}?mode=ro"
    try:
        with path.open("rb") as f:
            header = f.read(20)
        if len(header) >= 20 and header[18] == 2:  # WAL: a read-only reader would create -shm
            uri += "&immutable=1"
    except OSError:
        pass
    return uri


class Sandbox:
    """A read-only connection that runs one SELECT at a time under a deadline.

    >>> import sqlite3, tempfile, os
    >>> d = tempfile.mkdtemp(); p = os.path.join(d, "t.db")
    >>> con = sqlite3.connect(p); _ = con.execute("CREATE TABLE t (x)"); con.commit(); con.close()
    >>> sb = Sandbox(p)
    >>> sb.run("SELECT 1 + 1").rows
    [(2,)]
    >>> sb.run("DELETE FROM t").error
    'only a single SELECT statement is allowed'
    >>> sb.run("WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM c) SELECT max(i) FROM c").ok
    False
    >>> sb.close(); sorted(os.listdir(d))
    ['t.db']
    """

    def __init__(self, db_path: str | Path, timeout_ms: int = 200, max_rows: int = 1000,
                 max_value_len: int = 10_000, max_result_chars: int = 4_000_000):
        path = Path(db_path)
        if not path.is_file():
            raise FileNotFoundError(f"rewards sandbox: no database at {path}")
        self.path, self.timeout_ms, self.max_rows = path, timeout_ms, max_rows
        self.max_result_chars = max_result_chars
        self._lock = threading.Lock()
        self._deadline = 0.0
        self._reads: set[tuple[str, str]] = set()
        # cached_statements=0: a statement is prepared, and so authorized and its reads recorded, on every run
        con = sqlite3.connect(_db_uri(path), uri=True, check_same_thread=False, isolation_level=None,
                              cached_statements=0)
        con.execute("PRAGMA query_only=1")
        con.execute("PRAGMA temp_store=MEMORY")
        con.execute("PRAGMA trusted_schema=OFF")
        con.execute("PRAGMA cache_size=-16000")
        con.setlimit(sqlite3.SQLITE_LIMIT_LENGTH, max_value_len)
        for name, value in _LIMITS:
            if hasattr(sqlite3, name):
                con.setlimit(getattr(sqlite3, name), value)
        con.set_authorizer(self._authorize)
        con.set_progress_handler(self._progress, 500)
        self._con = con

    def _authorize(self, action: int, arg1, arg2, dbname, source) -> int:
        if action == sqlite3.SQLITE_SELECT:
            return sqlite3.SQLITE_OK
        if action == sqlite3.SQLITE_READ:
            if dbname not in ("main", None):
                return sqlite3.SQLITE_DENY
            if arg1:  # a table of the database (also when read inside a CTE or view; COUNT(*) reads one as a whole)
                self._reads.add((str(arg1), str(arg2 or "")))
            return sqlite3.SQLITE_OK
        if action == sqlite3.SQLITE_FUNCTION:
            return sqlite3.SQLITE_OK if (arg2 or "").lower() in ALLOWED_FUNCTIONS else sqlite3.SQLITE_DENY
        return sqlite3.SQLITE_DENY

    def _progress(self) -> int:
        return 1 if time.perf_counter() > self._deadline else 0

    def run(self, sql: str, timeout_ms: int | None = None) -> SqlResult:
        """Run one SELECT; never raises. ``timeout_ms`` overrides the deadline for this call."""
        t0 = time.perf_counter()
        try:
            if not isinstance(sql, str) or not sql.strip():
                return SqlResult(False, error="empty statement")
            if len(sql) > 20000:
                return SqlResult(False, error="statement too long")
            stmts = split_statements(sql)
            if len(stmts) != 1:
                return SqlResult(False, error="exactly one statement is allowed" if stmts else "empty statement")
            m = _FIRST_WORD.search(stmts[0])
            if m is None or m.group().upper() not in ("SELECT", "WITH", "VALUES") or \
                    stmts[0][:m.start()].strip("( \t\r\n"):
                return SqlResult(False, error="only a single SELECT statement is allowed")
            with self._lock:
                return self._execute(stmts[0], t0, self.timeout_ms if timeout_ms is None else timeout_ms)
        except Exception as e:  # noqa: BLE001
            return SqlResult(False, error=f"{type(e).__name__}: {e}", ms=(time.perf_counter() - t0) * 1e3)

    def _execute(self, sql: str, t0: float, timeout_ms: int) -> SqlResult:
        self._deadline = t0 + timeout_ms / 1000.0
        self._reads = set()
        rows: list[tuple] = []
        size, truncated = 0, False
        cur = None
        try:
            cur = self._con.execute(sql)
            columns = tuple(d[0] for d in (cur.description or ()))
            while len(rows) < self.max_rows:
                batch = cur.fetchmany(min(256, self.max_rows - len(rows)))
                if not batch:
                    break
                for r in batch:
                    size += sum(len(v) if isinstance(v, (str, bytes)) else 8 for v in r)
                rows.extend(batch)
                if size > self.max_result_chars:
                    truncated = True
                    break
            else:
                truncated = cur.fetchone() is not None
            return SqlResult(True, rows, columns, None, truncated, (time.perf_counter() - t0) * 1e3,
                             frozenset(self._reads))
        except Exception as e:  # noqa: BLE001
            msg = str(e).splitlines()[0] if str(e) else type(e).__name__
            if msg == "interrupted":
                msg = f"deadline of {timeout_ms} ms exceeded"
            return SqlResult(False, error=msg, ms=(time.perf_counter() - t0) * 1e3)
        finally:
            if cur is not None:
                try:
                    cur.close()
                except Exception:  # noqa: BLE001
                    pass
            self._deadline = 0.0

    def close(self) -> None:
        try:
            self._con.close()
        except Exception:  # noqa: BLE001
            pass
