"""Tools in the rollout: a run's tools (``tools`` in the run config), their calls, and the pool they run in.

A tool is the built-in ``sql`` (one read-only SELECT on the run's ``commerce.db`` through the reward's own
:class:`rewards.sandbox.Sandbox`: the rows or the error come back) or a function of the user's own, named
``package.module:function`` as in ``rewards.custom``. :func:`load_tools` imports every function and checks it before
anything starts: it must have a docstring (its first paragraph describes the tool in the system prompt) and a type
hint on every parameter, each one of ``str, int, float, bool, list, dict``; otherwise one line naming the field,
``tools.faq[0]: ...``. The model calls a tool as ``<name>argument</name>`` (``commerce.episode``): a tool of one
parameter takes the argument as that parameter (converted to its type); a tool of several takes a JSON object of
them. A call whose argument does not fit the signature gets an error observation (the model may fix it).

:class:`ToolPool` runs the calls on worker threads (``episode.workers``, a sandbox each) while the engine steps the
other sequences. A call's result is text cut to the tool's ``max_observation_rows`` lines and
``max_observation_chars`` characters. Containment: a tool that raises, or that has not answered ``timeout_s``
after it was queued, gives no observation; the episode ends (finish reason ``tool_error``) with one log line
naming the call (once per tool and cause), and the run goes on. A Python thread cannot be killed: a call past its
deadline keeps its worker until it returns, so the pool has a worker more than it needs for every call that
overran (up to ``2 x workers``; beyond, calls wait in the queue and time out). The SQL sandbox has its own deadline
(``rewards.sql_timeout_ms``, interrupting SQLite) and answers a slow query with an error, which is an observation.

Pure Python: stdlib and ``commerce`` (the actor, which runs the calls, and the learner, which checks the config,
both import it).
"""

from __future__ import annotations

import importlib
import inspect
import json
import logging
import threading
import time
import typing
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

from commerce.episode import call_text, clip, find_call, observation, rows_text, tools_prompt, with_tools

__all__ = ["Tool", "ToolPool", "ToolResult", "builtin_sql", "call_text", "find_call", "load_tool", "load_tools",
           "log_timeout", "observation", "system_text", "with_tools"]

log = logging.getLogger("rewards.tools")

TYPES = (str, int, float, bool, list, dict)
SQL_DESCRIPTION = ("Executa uma consulta SQLite somente leitura (um único SELECT) no banco do e-commerce e devolve as "
                   "linhas do resultado ou o erro.")
_LOGGED: set = set()


@dataclass
class Tool:
    """One loaded tool: its tag, function, parameters (name -> type, in order) and limits (a ``ToolSpec``)."""

    name: str
    fn: typing.Callable | None
    """None for the built-in ``sql`` (run on the worker's sandbox)."""
    params: dict
    description: str
    spec: object

    @property
    def signature(self) -> str:
        return f"{self.name}({', '.join(f'{p}: {t.__name__}' for p, t in self.params.items())})"

    def arguments(self, text: str) -> dict:
        """The keyword arguments of a call written ``<name>text</name>``; ValueError (one line) if they do not fit.

        >>> t = Tool("stock", None, {"sku": str, "n": int}, "", None)
        >>> t.arguments('{"sku": "A1", "n": 2}'), Tool("sq", None, {"x": int}, "", None).arguments(" 7 ")
        ({'sku': 'A1', 'n': 2}, {'x': 7})
        >>> t.arguments('{"sku": 3, "n": 2}')
        Traceback (most recent call last):
        ...
        ValueError: sku must be str, got int
        """
        if len(self.params) == 1:
            (p, tp), = self.params.items()
            if tp is str:
                return {p: text}
            try:
                v = json.loads(text)
            except ValueError:
                raise ValueError(f"{p} must be {tp.__name__}: {text[:40]!r} is not") from None
            return {p: _typed(p, v, tp)}
        try:
            args = json.loads(text) if text else {}
        except ValueError:
            raise ValueError(f"the argument must be a JSON object with {', '.join(self.params)}") from None
        if not isinstance(args, dict) or set(args) != set(self.params):
            raise ValueError(f"the argument must be a JSON object with exactly {', '.join(self.params)}")
        return {p: _typed(p, args[p], tp) for p, tp in self.params.items()}


def _typed(name: str, v, tp):
    if tp is float and type(v) is int:
        return float(v)
    if type(v) is not tp:
        raise ValueError(f"{name} must be {tp.__name__}, got {type(v).__name__}")
    return v


def builtin_sql(spec) -> Tool:
    return Tool("sql", None, {"query": str}, SQL_DESCRIPTION, spec)


def load_tool(where: str, spec) -> Tool:
    """Import and check one ``ToolSpec`` (``where``: its field, for the one-line refusal, a ValueError)."""
    if spec.fn == "sql":
        return builtin_sql(spec)
    mod_name, fn_name = spec.fn.split(":")
    try:
        mod = importlib.import_module(mod_name)
    except Exception as e:  # noqa: BLE001 - any failure of the user's import is the same one-line refusal
        raise ValueError(f"{where}: cannot import {mod_name} ({type(e).__name__}: {e})") from None
    fn = getattr(mod, fn_name, None)
    if not inspect.isfunction(fn):
        raise ValueError(f"{where}: {mod_name} has no function {fn_name}")
    doc = inspect.getdoc(fn)
    if not doc or not doc.strip():
        raise ValueError(f"{where}: {spec.fn} has no docstring (its first paragraph describes the tool to the model)")
    try:
        hints = typing.get_type_hints(fn)
    except Exception as e:  # noqa: BLE001
        raise ValueError(f"{where}: cannot read the type hints of {spec.fn} ({type(e).__name__}: {e})") from None
    params = {}
    for p in inspect.signature(fn).parameters.values():
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            raise ValueError(f"{where}: {spec.fn} takes *{p.name}: a tool's parameters must be named and typed")
        tp = hints.get(p.name)
        if tp is None:
            raise ValueError(f"{where}: {spec.fn}: parameter {p.name} has no type hint")
        if tp not in TYPES:
            raise ValueError(f"{where}: {spec.fn}: parameter {p.name}: type {tp} is not one of "
                             f"{', '.join(t.__name__ for t in TYPES)}")
        params[p.name] = tp
    if not params:
        raise ValueError(f"{where}: {spec.fn} takes no parameter: a call has an argument")
    return Tool(fn_name, fn, params, " ".join(doc.split("\n\n")[0].split()), spec)


def load_tools(tools: dict) -> dict[str, list[Tool]]:
    """Every task's tools (``RunConfig.tools``), imported and checked; ValueError naming the field on the first bad
    one."""
    return {task: [load_tool(f"tools.{task}[{i}]", s) for i, s in enumerate(specs)] for task, specs in tools.items()}


def system_text(tools: list[Tool], max_turns: int) -> str:
    """The paragraph of the system prompt that describes ``tools`` (``commerce.episode.tools_prompt``)."""
    sigs = []
    for t in tools:
        desc = t.description
        if len(t.params) > 1:
            desc += f" (argumento: um objeto JSON com {', '.join(t.params)})"
        sigs.append((t.name, t.signature, desc))
    return tools_prompt(sigs, max_turns)


@dataclass
class ToolResult:
    """What one call gave: ``text`` for the observation, or ``failed`` (raised / timed out: no observation)."""

    text: str
    error: bool = False
    """The result is an error the model reads (a SQL error, arguments that do not fit, a call over ``max_calls``)."""
    failed: str = ""
    """``raised`` or ``timeout``: the tool gave nothing; the episode ends (``tool_error``)."""
    truncated: bool = False
    seconds: float = 0.0


class ToolPool:
    """Worker threads that run tool calls beside generation (see the module docstring)."""

    def __init__(self, workers: int, db_path=None, sql_timeout_ms: int = 200, sql_max_rows: int = 1000):
        self.workers = workers
        self.db_path = db_path
        self.sql_timeout_ms, self.sql_max_rows = sql_timeout_ms, sql_max_rows
        self._local = threading.local()
        self._sandboxes: list = []
        self._lock = threading.Lock()
        self._overran = 0
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="tool")

    def submit(self, tool: Tool, argument: str) -> Future:
        """Queue one call; the future's result is a :class:`ToolResult` (it never raises)."""
        return self._pool.submit(self._run, tool, argument)

    def overran(self) -> None:
        """A call is past its deadline and still holds its worker: add a worker for it (up to twice the pool)."""
        with self._lock:
            if self._overran < self.workers:
                self._overran += 1
                self._pool._max_workers += 1  # noqa: SLF001 - ThreadPoolExecutor starts threads up to this

    def _sandbox(self):
        sb = getattr(self._local, "sandbox", None)
        if sb is None:
            from .sandbox import Sandbox

            if self.db_path is None:
                raise RuntimeError("the sql tool needs data.db_path")
            sb = self._local.sandbox = Sandbox(self.db_path, timeout_ms=self.sql_timeout_ms,
                                               max_rows=self.sql_max_rows)
            with self._lock:
                self._sandboxes.append(sb)
        return sb

    def _run(self, tool: Tool, argument: str) -> ToolResult:
        spec = tool.spec
        t0 = time.perf_counter()
        try:
            if tool.fn is None:
                if not argument:
                    return ToolResult("erro: consulta vazia", error=True, seconds=time.perf_counter() - t0)
                res = self._sandbox().run(argument)
                if not res.ok:
                    return ToolResult(f"erro: {res.error}", error=True, seconds=time.perf_counter() - t0)
                text, cut = rows_text(res.columns, res.rows, spec.max_observation_rows, spec.max_observation_chars,
                                      more=res.truncated)
                return ToolResult(text, truncated=cut, seconds=time.perf_counter() - t0)
            try:
                kwargs = tool.arguments(argument)
            except ValueError as e:
                return ToolResult(f"erro: {e}", error=True, seconds=time.perf_counter() - t0)
            out = tool.fn(**kwargs)
            text = out if isinstance(out, str) else json.dumps(out, ensure_ascii=False, default=str)
            text, cut = clip(text, spec.max_observation_rows, spec.max_observation_chars)
            return ToolResult(text, truncated=cut, seconds=time.perf_counter() - t0)
        except Exception as e:  # noqa: BLE001 - a tool never stops the run
            why = f"{type(e).__name__}: {e}".splitlines()[0][:200] if str(e) else type(e).__name__
            key = (tool.name, type(e).__name__)
            if key not in _LOGGED:
                _LOGGED.add(key)
                log.warning("tool call %s(%r) raised %s; the episode ends (tool_error)", tool.name, argument[:80],
                            why)
            return ToolResult(why, failed="raised", seconds=time.perf_counter() - t0)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        with self._lock:
            for sb in self._sandboxes:
                sb.close()
            self._sandboxes.clear()


def log_timeout(tool: Tool, argument: str) -> None:
    """One line (once per tool) for a call that did not answer within its ``timeout_s``."""
    key = (tool.name, "timeout")
    if key not in _LOGGED:
        _LOGGED.add(key)
        log.warning("tool call %s(%r) did not answer within %.1f s; the episode ends (tool_error)", tool.name,
                    argument[:80], tool.spec.timeout_s)
