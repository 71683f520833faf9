"""``classify_task``: the handoff's ``_classify_task_type`` -- which of the four tasks a prompt asks for.

The rewards prefer the pairs' ``task`` column; this is the fallback when a prompt comes without
it (and what the handoff's eval callback used). Cues are weighted keywords in PT-BR and English;
ties go push > sql_qa > insights > extraction, and a prompt with no cue is ``extraction`` (the
largest task).
"""

from __future__ import annotations

import re
from typing import Any

from .common import completion_text, fold

TASKS = ("extraction", "sql_qa", "insights", "push")

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
