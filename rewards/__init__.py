"""Rewards of the four tasks, the tolerant JSON parser, the task classifier and the SQL sandbox.

Pure Python: ``import rewards`` imports only the stdlib and ``commerce`` -- never torch, vLLM,
DeepSpeed, transformers or numpy (reward workers stay cheap). Public API:

- :func:`extract_json` (``rewards.jsonx``): the handoff's Change 1, done right;
- :func:`classify_task` (``rewards.classify``): the handoff's ``_classify_task_type``;
- :func:`make_reward` (``rewards.core``): TRL-signature reward over the four tasks, with
  ``.score``/``.components``/``.tasks``; :func:`toy_reward` (``rewards.toy``);
- :func:`per_task_breakdown`: ``eval/<task>`` and ``eval/mean_reward`` for the eval callback;
- :class:`Sandbox` (``rewards.sandbox``): one read-only SELECT under a deadline;
- ``python -m rewards.audit PAIRS.jsonl`` (old vs new parser) and ``python -m rewards.bench``;
- ``python -m rewards.redteam [--task T] [--config C]``: the best prompt-agnostic template per task against the
  run's reward (:mod:`rewards.attack`: slots, parts, the search).
"""

from __future__ import annotations

from .classify import TASKS, classify_task
from .core import DEFAULT_WEIGHTS, ScoredItem, make_reward, per_task_breakdown
from .jsonx import extract_json
from .sandbox import Sandbox, SqlResult
from .toy import toy_reward

__all__ = ["extract_json", "classify_task", "make_reward", "toy_reward", "per_task_breakdown", "Sandbox",
           "SqlResult", "ScoredItem", "TASKS", "DEFAULT_WEIGHTS"]
