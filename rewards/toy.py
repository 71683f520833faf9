"""Toy reward for the end-to-end learning proof: does the policy learn to emit a token?

``toy_reward(token, k=4)`` scores a completion ``min(1, occurrences(token) / k)``: 0 without the
token, 1 from ``k`` occurrences on. It ignores the task and every column, so a tiny model can move
it within a few GRPO steps; ``make_reward(db_path, toy_token="x")`` routes to it (the config's
``rewards.toy_token``). Same signature as the real reward, ``.components`` included.
"""

from __future__ import annotations

from typing import Any

from .common import completion_text


def toy_reward(token: str, k: int = 4):
    """A TRL-style reward ``fn(completions, prompts=None, **columns) -> list[float]``.

    >>> fn = toy_reward("ola")
    >>> fn(["ola ola", "nada", [{"role": "assistant", "content": "ola " * 9}]])
    [0.5, 0.0, 1.0]
    >>> fn.components(["ola"])
    [{'toy/token': 0.25}]
    """
    if not isinstance(token, str) or not token:
        raise ValueError("rewards: toy_token must be a non-empty string")
    if not isinstance(k, int) or k < 1:
        raise ValueError("rewards: toy reward k must be a positive integer")

    def score(c: Any) -> float:
        try:
            return min(1.0, completion_text(c)[:100000].count(token) / k)
        except Exception:  # noqa: BLE001
            return 0.0

    def toy(completions, prompts=None, **columns) -> list[float]:
        return [score(c) for c in (completions or [])]

    def components(completions, prompts=None, **columns) -> list[dict[str, float]]:
        return [{"toy/token": s} for s in toy(completions)]

    def tasks(completions, prompts=None, **columns) -> list[str]:
        return ["toy"] * len(completions or [])

    toy.components = components
    toy.tasks = tasks
    toy.__name__ = "toy_reward"
    return toy
