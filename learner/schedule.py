"""Learning-rate schedules as multipliers of the peak rate, matching transformers' definitions.

``constant``, ``constant_with_warmup``, ``linear`` and ``cosine`` (half a cosine to 0) with
``num_warmup_steps = ceil(warmup_ratio * max_steps)`` as transformers computes it
(``TrainingArguments.get_warmup_steps``). V4 (cosine, warmup 0.1, 200 steps) and V4.1
(constant_with_warmup, 0.05, 600 steps) are reproduced step for step (checked against
``transformers.get_scheduler`` in the tests).
"""

from __future__ import annotations

import math

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR


def warmup_steps(warmup_ratio: float, max_steps: int) -> int:
    return math.ceil(warmup_ratio * max_steps)


def lr_lambda(name: str, warmup: int, max_steps: int):
    """The multiplier at step ``s`` (0-based optimizer step about to be taken)."""

    def constant(s: int) -> float:
        return 1.0

    def constant_with_warmup(s: int) -> float:
        return s / max(1, warmup) if s < warmup else 1.0

    def linear(s: int) -> float:
        if s < warmup:
            return s / max(1, warmup)
        return max(0.0, (max_steps - s) / max(1, max_steps - warmup))

    def cosine(s: int) -> float:
        if s < warmup:
            return s / max(1, warmup)
        progress = (s - warmup) / max(1, max_steps - warmup)
        return max(0.0, 0.5 * (1.0 + math.cos(math.pi * 0.5 * 2.0 * progress)))

    table = {
        "constant": constant,
        "constant_with_warmup": constant_with_warmup,
        "linear": linear,
        "cosine": cosine,
    }
    if name not in table:
        raise ValueError(f"unknown scheduler {name!r}; known: {', '.join(table)}")
    return table[name]


def make_scheduler(optimizer: Optimizer, name: str, warmup_ratio: float, max_steps: int) -> LambdaLR:
    return LambdaLR(optimizer, lr_lambda(name, warmup_steps(warmup_ratio, max_steps), max_steps))
