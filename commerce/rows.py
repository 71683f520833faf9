"""Pair rows as a user's own scripts write them: each line normalised, or refused with one line.

One reader for the learner (:func:`learner.data.load_items`, the SFT warm-up, the learner's
preflight) and for ``python -m commerce check``, so the check refuses exactly what a run refuses.
Stdlib only.

Accepted, one JSON object per line (blank lines are skipped):

- ours: ``prompt`` (a list of ``{"role", "content"}`` messages), ``task``, ``answer`` and the
  reference columns (``reference``, ``reference_sql``, ``facts``, ``context``);
- TRL's formats: ``prompt`` as a plain string (one user message); ``messages``, a full conversation:
  when it ends with an assistant turn, that turn is the answer and the turns before it the prompt,
  otherwise the whole conversation is the prompt (a prompt-only row); prompt-completion rows with a
  ``completion`` column (a string, or messages whose last assistant turn is the answer). An
  ``answer`` column, when present, wins over ``completion``;
- ``task`` may be missing, null or empty: the task is then :func:`commerce.classify.classify_task`
  of the prompt's user turns (the text the reward's own fallback classifies) and it is written into
  the row's ``task`` column, so the reward and the per-task eval both see it.

Refused (:class:`BadRow`, ``FILE:LINE: FIELD: reason``, nothing trained on it): a line that is not
UTF-8 or not JSON, not an object, no ``prompt``/``messages`` (or both), a prompt or conversation
that is not a string or a list of messages with string ``role`` and ``content``, no non-empty user
turn, an ``answer``/``completion`` of the wrong type, a ``task`` that is not one of the four (or of the
run's own tasks, ``rewards.custom``), a
reference column of the wrong type (``reference_sql`` a string; ``reference``, ``facts``,
``context`` an object or a JSON string).

A file is refused as a whole (:class:`PairsError`) when more than :data:`MAX_BAD_SHARE` of its rows
are malformed; below that, :func:`load_pairs` warns (:class:`BadRowsWarning`) with the count and
the first bad line.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .classify import classify_task, user_text
from .schema import PAIR_REQUIRED, TASKS, SchemaMismatch

MAX_BAD_SHARE = 0.01
"""Largest share of malformed rows a pair file may have: above it (strictly) the learner refuses to
start; at or below it the bad rows are skipped with one warning. 1%: a script bug that breaks a
whole class of rows shows up as far more than 1%, while a few stray lines of a big export do not
stop a run."""

REFERENCE_COLUMNS = {task: cols[0] for task, cols in PAIR_REQUIRED.items()}
"""The column each task's reward reads its reference from."""

_DICT_COLUMNS = ("reference", "facts", "context")
_STR_COLUMNS = ("reference_sql",)
_CONVERSATION_KEYS = ("prompt", "messages", "completion")


class PairsError(SchemaMismatch):
    """A pair file cannot be used (missing, unreadable, or too many malformed rows); one line."""


class BadRowsWarning(UserWarning):
    """Some rows of a pair file were malformed and are skipped."""


@dataclass(frozen=True)
class BadRow:
    """A refused line: ``str(bad)`` is ``FILE:LINE: FIELD: reason``."""

    path: str
    line: int
    field: str
    reason: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.field}: {self.reason}"


@dataclass
class PairRow:
    """An accepted line: the prompt messages, the answer (or None), the task and the reward columns.

    ``columns`` is the row without ``prompt``/``messages``/``completion``, with ``task`` set to the
    row's task (labelled or classified) and ``answer`` to the answer when there is one."""

    line: int
    messages: list[dict]
    answer: str | None
    task: str
    labelled: bool
    columns: dict


@dataclass
class PairFile:
    """Every line of one file, read: ``rows`` accepted, ``bad`` refused, ``total`` non-blank lines."""

    path: str
    rows: list[PairRow] = field(default_factory=list)
    bad: list[BadRow] = field(default_factory=list)
    total: int = 0

    def counts(self) -> dict[str, int]:
        """Accepted rows per task, the four tasks first in their order, then the user's own tasks."""
        out = {t: 0 for t in TASKS}
        for r in self.rows:
            out[r.task] = out.get(r.task, 0) + 1
        return {t: n for t, n in out.items() if n}

    def refusal(self, max_bad_share: float = MAX_BAD_SHARE) -> str | None:
        """Why the file cannot be used, as one line, or None."""
        if self.total == 0:
            return f"{self.path}: no pairs (the file has no non-blank line)"
        nb = len(self.bad)
        if nb / self.total > max_bad_share or not self.rows:
            return (f"{self.path}: {nb} of {self.total} rows are malformed ({percent(nb / self.total)}, "
                    f"above the {percent(max_bad_share)} limit); first: {self.bad[0]}")
        return None

    def warning(self) -> str | None:
        """One line about the skipped rows, or None when there are none."""
        if not self.bad:
            return None
        nb = len(self.bad)
        return (f"{self.path}: skipping {nb} malformed row{'s' if nb > 1 else ''} of {self.total} "
                f"({percent(nb / self.total)}); first: {self.bad[0]}")


def percent(x: float) -> str:
    return f"{100 * x:.2f}".rstrip("0").rstrip(".") + "%"


def _type(v: Any) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean", int: "a number",
            float: "a number", type(None): "null"}.get(type(v), type(v).__name__)


def _messages(value: Any, name: str) -> tuple[list[dict] | None, tuple[str, str] | None]:
    """A validated message list (shallow copies), or the (field, reason) it fails on."""
    if not isinstance(value, list):
        what = "a list" if name == "messages" else "a string or a list"
        return None, (name, f"must be {what} of {{role, content}} messages, got {_type(value)}")
    if not value:
        return None, (name, "empty list of messages")
    out = []
    for i, m in enumerate(value):
        if not isinstance(m, dict):
            return None, (f"{name}[{i}]", f"must be an object with string role and content, got {_type(m)}")
        for key in ("role", "content"):
            if key not in m:
                return None, (f"{name}[{i}].{key}", "missing")
            if not isinstance(m[key], str):
                return None, (f"{name}[{i}].{key}", f"must be a string, got {_type(m[key])}")
        if not m["role"]:
            return None, (f"{name}[{i}].role", "empty")
        out.append(dict(m))
    return out, None


def _last_assistant(msgs: list[dict]) -> str | None:
    return next((m["content"] for m in reversed(msgs) if m["role"] == "assistant"), None)


def parse_row(obj: Any, path: str, line: int, custom_tasks: tuple[str, ...] = ()) -> PairRow | BadRow:
    """One decoded JSON value -> :class:`PairRow`, or the :class:`BadRow` naming its first fault.

    ``custom_tasks``: task names the run declares with their own reward (``rewards.custom``), accepted as
    labels beside the four (a row of a custom task must say so: the classifier knows only the four)."""

    def bad(fld: str, reason: str) -> BadRow:
        return BadRow(path, line, fld, reason)

    if not isinstance(obj, dict):
        return bad("row", f"must be a JSON object, got {_type(obj)}")
    has_prompt, has_conv = obj.get("prompt") is not None, obj.get("messages") is not None
    if has_prompt and has_conv:
        return bad("messages", "both prompt and messages are given (use one)")
    if not has_prompt and not has_conv:
        return bad("prompt", "missing (a row needs prompt or messages)")
    answer: str | None = None
    if has_conv:
        if obj.get("completion") is not None:
            return bad("completion", "given with messages (messages already holds the answer)")
        conv, why = _messages(obj["messages"], "messages")
        if why:
            return bad(*why)
        if conv[-1]["role"] == "assistant":
            answer, prompt = conv[-1]["content"], conv[:-1]
            if not prompt:
                return bad("messages", "only an assistant turn, no prompt before it")
        else:
            prompt = conv
        pname = "messages"
    else:
        p = obj["prompt"]
        if isinstance(p, str):
            if not p.strip():
                return bad("prompt", "empty")
            prompt = [{"role": "user", "content": p}]
        else:
            prompt, why = _messages(p, "prompt")
            if why:
                return bad(*why)
        pname = "prompt"
        c = obj.get("completion")
        if isinstance(c, str):
            answer = c
        elif c is not None:
            comp, why = _messages(c, "completion")
            if why:
                return bad(*why)
            answer = _last_assistant(comp)
            if answer is None:
                return bad("completion", "no assistant turn")
    if not any(m["role"] == "user" and m["content"].strip() for m in prompt):
        return bad(pname, "no non-empty user turn")
    a = obj.get("answer")
    if a is not None:
        if not isinstance(a, str):
            return bad("answer", f"must be a string, got {_type(a)}")
        answer = a
    task = obj.get("task")
    labelled = task not in (None, "")
    if labelled:
        if not isinstance(task, str):
            return bad("task", f"must be a string, got {_type(task)}")
        if task not in TASKS and task not in custom_tasks:
            known = ", ".join((*TASKS, *custom_tasks))
            return bad("task", f"unknown task {task!r} (one of {known}, or empty to classify)")
    else:
        task = classify_task(user_text(prompt))
    for col in _STR_COLUMNS:
        v = obj.get(col)
        if v is not None and not isinstance(v, str):
            return bad(col, f"must be a string, got {_type(v)}")
    for col in _DICT_COLUMNS:
        v = obj.get(col)
        if v is not None and not isinstance(v, (dict, str)):
            return bad(col, f"must be an object or a JSON string, got {_type(v)}")
    columns = {k: v for k, v in obj.items() if k not in _CONVERSATION_KEYS}
    columns["task"] = task
    if answer is not None:
        columns["answer"] = answer
    return PairRow(line, prompt, answer, task, labelled, columns)


def read_pairs(path: str | Path, custom_tasks: tuple[str, ...] = ()) -> PairFile:
    """Read every line of a pair file (nothing is dropped silently: each line is a row or a BadRow), or every row of
    a parquet, JSON or CSV file, a dataset saved with ``save_to_disk`` or a Hub dataset's split
    (:mod:`commerce.sources`, through ``datasets``).

    Raises :class:`PairsError` only when the source itself cannot be read.
    """
    from .sources import SourceError, dataset_rows, parse

    name = str(path)
    try:
        src = parse(path)
        if src.kind != "jsonl":
            out = PairFile(name)
            for n, obj in enumerate(dataset_rows(src), 1):
                out.total += 1
                r = parse_row(obj, name, n, tuple(custom_tasks))
                (out.bad if isinstance(r, BadRow) else out.rows).append(r)
            return out
    except SourceError as e:
        raise PairsError(str(e)) from None
    p = Path(path)
    out = PairFile(name)
    try:
        with p.open("rb") as f:
            for n, raw in enumerate(f, 1):
                try:
                    text = raw.decode("utf-8")
                except UnicodeDecodeError as e:
                    out.total += 1
                    out.bad.append(BadRow(name, n, "json", f"not UTF-8 text (byte {e.start + 1})"))
                    continue
                if n == 1:
                    text = text.lstrip("\ufeff")
                if not text.strip():
                    continue
                out.total += 1
                try:
                    obj = json.loads(text.rstrip())  # one line: the column is the position in the line
                except ValueError as e:
                    msg = f"{e.msg} at column {e.colno}" if isinstance(e, json.JSONDecodeError) else str(e)
                    out.bad.append(BadRow(name, n, "json", f"not valid JSON ({msg})"))
                    continue
                r = parse_row(obj, name, n, tuple(custom_tasks))
                (out.bad if isinstance(r, BadRow) else out.rows).append(r)
    except OSError as e:
        raise PairsError(f"{name}: cannot read ({e.strerror or e})") from None
    return out


def load_pairs(path: str | Path, max_bad_share: float = MAX_BAD_SHARE, custom_tasks: tuple[str, ...] = ()
               ) -> PairFile:
    """:func:`read_pairs`, then refuse the file (:class:`PairsError`, one line) above ``max_bad_share``
    malformed rows, else warn (:class:`BadRowsWarning`) about the ones skipped."""
    pf = read_pairs(path, custom_tasks)
    why = pf.refusal(max_bad_share)
    if why:
        raise PairsError(why)
    msg = pf.warning()
    if msg:
        warnings.warn(msg, BadRowsWarning, stacklevel=1)  # one location: shown once per run, not per caller
    return pf


def check_pairs(path: str | Path) -> dict[str, int]:
    """Rows per task (after classification) of a pair file; :class:`PairsError` (a ``SchemaMismatch``)
    naming the first malformed row and the count when any row is malformed, or when none is usable.

    ``python -m commerce check`` gives the full report (references, database, every bad row).
    """
    pf = read_pairs(path)
    if pf.bad:
        nb = len(pf.bad)
        raise PairsError(f"{pf.path}: {nb} malformed row{'s' if nb > 1 else ''} of {pf.total}; "
                         f"first: {pf.bad[0]}")
    if not pf.rows:
        raise PairsError(f"{pf.path}: no pairs (the file has no non-blank line)")
    return pf.counts()


def as_mapping(v: Any) -> dict | None:
    """A reference value as the rewards read it when it is strict JSON: an object, a JSON-object
    string, else None (the rewards' tolerant parser may still salvage a near-JSON string)."""
    if isinstance(v, Mapping):
        return dict(v)
    if isinstance(v, str) and v.strip():
        try:
            out = json.loads(v)
        except ValueError:
            return None
        return out if isinstance(out, dict) else None
    return None
