"""Pair files -> PromptItems, the fixed eval subset, and the reward function built from config.

Pair rows (``data/pairs/*.jsonl``): ``prompt`` (chat messages), ``task`` and reference columns. Every
column except ``prompt`` is passed to the reward function, repeated per completion (TRL's convention).
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from learner.rollouts import PromptItem


def load_items(path: Path, tasks: list[str] | None = None) -> list[PromptItem]:
    items = []
    with Path(path).open() as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            row = json.loads(line)
            task = row.get("task", "")
            if tasks and task not in tasks:
                continue
            cols = {k: v for k, v in row.items() if k != "prompt"}
            items.append(PromptItem(index=len(items), messages=row["prompt"], columns=cols, task=task))
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
