"""``classify_task``: the handoff's ``_classify_task_type`` -- which of the four tasks a prompt asks for.

The rewards prefer the pairs' ``task`` column; this is the fallback when a prompt comes without
it (and what the handoff's eval callback used). Cues are weighted keywords in PT-BR and English;
ties go push > sql_qa > insights > extraction, and a prompt with no cue is ``extraction`` (the
largest task).

It lives in ``commerce`` (stdlib only) rather than in ``rewards`` because two sides need the same
function: the pair reader (:mod:`commerce.rows`, used by the learner and by ``python -m commerce
check``) and the rewards' fallback. ``rewards`` may import ``commerce`` but not the other way round,
so ``rewards.classify_task`` is this very function, re-exported.
"""

from __future__ import annotations

import re
from typing import Any

import unicodedata
from collections.abc import Mapping

from .schema import TASKS

__all__ = ["TASKS", "classify_task", "completion_text", "fold", "user_text"]


def _fold_table() -> dict[int, str]:
    table: dict[int, str] = {}
    for cp in range(0xC0, 0x250):
        base = "".join(c for c in unicodedata.normalize("NFD", chr(cp)) if unicodedata.category(c) != "Mn")
        if base != chr(cp) and base:
            table[cp] = base
    for cp in range(0x300, 0x370):
        table[cp] = ""
    return table


_FOLD = _fold_table()


def fold(text: str) -> str:
    """Lowercase without accents: 'Não É' -> 'nao e' (the rewards' and the classifier's matching form).

    >>> fold("Não É Açúcar")
    'nao e acucar'
    """
    low = text.lower()
    return low if low.isascii() else low.translate(_FOLD)


def completion_text(c: Any) -> str:
    """The assistant text of a completion given as a string or as TRL's list of messages.

    >>> completion_text([{"role": "assistant", "content": "Oi!"}])
    'Oi!'
    >>> completion_text(None)
    ''
    """
    if c is None:
        return ""
    if isinstance(c, str):
        return c
    if isinstance(c, Mapping):
        return completion_text(c.get("content"))
    if isinstance(c, (list, tuple)):
        msgs = [m for m in c if isinstance(m, Mapping)]
        if msgs:
            chosen = [m for m in msgs if m.get("role") == "assistant"] or msgs
            return "\n".join(completion_text(m.get("content")) for m in chosen)
        return "".join(x for x in c if isinstance(x, str))
    if isinstance(c, (bytes, bytearray)):
        return bytes(c).decode("utf-8", "replace")
    return str(c)


def user_text(messages: Any) -> str:
    """The user turns of a prompt, joined (what the reward classifies when a row has no task).

    >>> user_text([{"role": "system", "content": "Responda em JSON."}, {"role": "user", "content": "Oi"}])
    'Oi'
    >>> user_text("Escreva uma consulta SQL")
    'Escreva uma consulta SQL'
    """
    if isinstance(messages, (list, tuple)) and any(isinstance(m, Mapping) for m in messages):
        return "\n".join(completion_text(m.get("content")) for m in messages
                         if isinstance(m, Mapping) and m.get("role") == "user")
    return completion_text(messages)

_CUES = {
    "push": ((r"\bpush\b", 3), (r"notifica", 2), (r"120 caracteres", 2)),
    "sql_qa": ((r"\bsql(ite)?\b", 3), (r"\bconsulta", 1), (r"\bquery\b", 2), (r"orders_enriched", 1)),
    "insights": ((r"\binsights?\b", 3), (r"estrateg", 1), (r"\btopicos\b", 1), (r"\bfatos\b", 1)),
    "extraction": ((r"\bjson\b", 3), (r"\bextrai", 2), (r"sentiment", 1), (r"churn", 1)),
}
_COMPILED = {t: [(re.compile(p), w) for p, w in cues] for t, cues in _CUES.items()}
_PRIORITY = ("push", "sql_qa", "insights", "extraction")


def classify_task(text: Any) -> str:
    """The task a prompt asks for: "extraction", "sql_qa", "insights" or "push". Never raises.

    >>> classify_task("Escreva uma notificação push de no máximo 120 caracteres")
    'push'
    >>> classify_task("Escreva uma consulta SQL que responda: quantos pedidos de SP?")
    'sql_qa'
    >>> classify_task("Com base nos fatos, escreva de 3 a 5 insights estratégicos")
    'insights'
    >>> classify_task("Extraia da avaliação um objeto JSON com sentiment e churn_risk")
    'extraction'
    >>> classify_task(None)
    'extraction'
    """
    try:
        t = fold(completion_text(text)[:20000])
        scores = {task: sum(w for rx, w in cues if rx.search(t)) for task, cues in _COMPILED.items()}
        best = max(scores.values())
        if best == 0:
            return "extraction"
        return next(task for task in _PRIORITY if scores[task] == best)
    except Exception:  # noqa: BLE001
        return "extraction"
