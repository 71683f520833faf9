"""``classify_task``: which of the four tasks a prompt asks for (the handoff's ``_classify_task_type``).

The implementation lives in :mod:`commerce.classify` so that the pair reader (``commerce.rows``,
used by the learner and by ``python -m commerce check``) and the rewards classify with the same
function without an import cycle (``rewards`` may import ``commerce``, not the reverse).

>>> import commerce.classify
>>> classify_task is commerce.classify.classify_task
True
>>> classify_task([{"role": "user", "content": "Escreva uma notificação push curta"}])
'push'
"""

from __future__ import annotations

from commerce.classify import TASKS, classify_task, user_text

__all__ = ["TASKS", "classify_task", "user_text"]
