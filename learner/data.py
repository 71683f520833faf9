"""Pair files -> PromptItems, the fixed eval subset, and the reward function built from config.

Pair rows (``data/pairs/*.jsonl``) are read by :mod:`commerce.rows`, the reader that ``python -m
commerce check`` and the learner's preflight share: our format (``prompt`` messages, ``task``,
``answer``, reference columns) and TRL's (``prompt`` as a string, ``messages``, ``completion``). A row
without a ``task`` gets ``rewards.classify_task`` of its prompt, written into its ``task`` column,
so the reward scores it as that task and the eval reports it under ``eval/<task>``. Every column
except the conversation (``prompt``/``messages``/``completion``) is passed to the reward function,
repeated per completion (TRL's convention); ``answer`` holds the answer whichever format gave it.

Malformed rows are refused one line each (``FILE:LINE: FIELD: reason``) and never trained on; a
file with more than :data:`MAX_BAD_SHARE` of them is refused as a whole (:class:`PairsError`), below
that one :class:`BadRowsWarning` gives the count and the first bad line.
"""

from __future__ import annotations

import random
from pathlib import Path

from commerce.rows import MAX_BAD_SHARE, BadRowsWarning, PairsError, load_pairs
from learner.rollouts import PromptItem

__all__ = ["MAX_BAD_SHARE", "BadRowsWarning", "PairsError", "load_items", "stratified_subset", "make_reward_fn",
           "per_task_means", "ToyTokenReward"]


def load_items(path: Path, tasks: list[str] | None = None, max_bad_share: float = MAX_BAD_SHARE,
               custom_tasks: tuple[str, ...] = ()) -> list[PromptItem]:
    """The rows of ``path`` whose task (labelled or classified) is in ``tasks`` (all when None/empty);
    ``custom_tasks`` are the run's own task labels (``rewards.custom``).

    Raises :class:`PairsError` (a ``ValueError``, one line) for a missing file or more than
    ``max_bad_share`` malformed rows; warns :class:`BadRowsWarning` when it skips some.
    """
    pf = load_pairs(path, max_bad_share, tuple(custom_tasks))
    items = []
    for row in pf.rows:
        if tasks and row.task not in tasks:
            continue
        items.append(PromptItem(index=len(items), messages=row.messages, columns=row.columns, task=row.task))
    return items


def stratified_subset(items: list[PromptItem], size: int, seed: int) -> list[PromptItem]:
    """A fixed subset of ``size`` items taking tasks in turn (each task's order shuffled by ``seed``)."""
    by_task: dict[str, list[PromptItem]] = {}
    for it in items:
        by_task.setdefault(it.task, []).append(it)
    for task, lst in by_task.items():
        random.Random(f"{seed}-eval-{task}").shuffle(lst)
    out: list[PromptItem] = []
    queues = [by_task[t] for t in sorted(by_task)]
    while len(out) < size and any(queues):
        for q in queues:
            if q and len(out) < size:
                out.append(q.pop(0))
    return out


class ToyTokenReward:
    """Stand-in reward (not a task reward): the share of the completion's characters taken by
    occurrences of ``token``, in [0, 1]. Used when ``cfg.rewards.toy_token`` is set and the
    ``rewards`` package has no toy reward of its own."""

    def __init__(self, token: str):
        if not token:
            raise ValueError("toy_token must be a non-empty string")
        self.token = token
        self.__name__ = f"toy_token[{token}]"

    def __call__(self, completions, prompts=None, **columns) -> list[float]:
        out = []
        for c in completions:
            text = c if isinstance(c, str) else " ".join(m.get("content", "") for m in c)
            out.append(min(1.0, text.count(self.token) * len(self.token) / max(1, len(text))))
        return out


def make_reward_fn(cfg):
    """``rewards.toy_reward`` / :class:`ToyTokenReward` when ``rewards.toy_token`` is set, else
    ``rewards.make_reward(cfg.data.db_path, **cfg.rewards.reward_kwargs())``."""
    token = cfg.rewards.toy_token
    if token:
        try:
            from rewards import toy_reward  # type: ignore[attr-defined]
        except ImportError:
            return ToyTokenReward(token)
        return toy_reward(token)
    import rewards

    return rewards.make_reward(cfg.data.db_path, **cfg.rewards.reward_kwargs())


def per_task_means(rewards: list[float], tasks: list[str], prefix: str) -> dict[str, float]:
    """``{prefix/mean_reward: mean, prefix/<task>: mean of that task}``."""
    out: dict[str, float] = {}
    if not rewards:
        return out
    out[f"{prefix}/mean_reward"] = sum(rewards) / len(rewards)
    by: dict[str, list[float]] = {}
    for r, t in zip(rewards, tasks, strict=True):
        by.setdefault(t or "all", []).append(r)
    for t, v in sorted(by.items()):
        out[f"{prefix}/{t}"] = sum(v) / len(v)
    return out
