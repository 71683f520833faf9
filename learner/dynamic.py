"""Dynamic sampling: a step trains on groups that teach something (DAPO's dynamic sampling, verl's
``filter_groups``), within a budget (``dynamic_sampling.*`` in the run config).

A group is *degenerate* when the max - min of its task reward over the completions that would be trained is at most
``tol`` (:func:`learner.rollouts.score_groups`, before the overlong punishment, as NeMo-RL judges it): every
advantage of it is 0, or near it. What the trainer does with ``enabled: true`` (:mod:`learner.collect`):

1. **Ahead.** The batch of a future step asks for ``ceil(P / (1 - share))`` groups (``P`` = ``prompts_per_step``
   x ``grad_accum``, ``share`` the degenerate share of the last ``window`` steps), less the banked groups still
   usable then, and never more than ``max_factor x P`` (:meth:`DynamicSampler.ahead`).
2. **Filter.** When the step's groups are in, the banked ones go first (oldest first), then the new informative ones;
   degenerate groups are dropped and counted (``dynamic/groups_dropped``).
3. **Top up.** Short of ``P``, the step asks for ``ceil(missing / (1 - share))`` new prompts at the current
   version through the re-request path that already replaces stale groups, up to ``max_rounds`` rounds and the
   ``max_factor`` cap (:meth:`DynamicSampler.topup`).
4. **Bank.** Informative groups beyond ``P`` are kept for the next steps (at most ``max_factor x P``) and used there
   while within ``sync.max_staleness`` of the learner's version; the others expire, counted
   (``dynamic/bank_expired``). With ``max_staleness: 1`` a group requested ahead is a version old when trained, so
   its spare is mostly too old a step later: top-ups, asked at the current version, are what the bank keeps.
5. **Budget out.** The step trains on what it has (``dynamic/underfilled``); its denominator counts what it trains
   (Dr. GRPO's ``completions x max_completion_length`` over the trained completions). A step with nothing to train
   makes no optimizer step and the version stays (:mod:`learner.step`).

**Slots.** The pipeline holds requests per step, not a count of groups in flight: every request is waited for once,
by the step it was made for, and every group that comes back is trained, banked or dropped and counted there. A
dropped group holds nothing: no request is left waiting for it and no later batch waits on it (SkyRL's async
pipeline deadlocked when a filtered group kept its place in the capacity count).

``train/frac_reward_zero_std`` stays the share of the step's scored groups whose reward has no spread, *before*
filtering (the handoff's watchdog reads it). The bank is not checkpointed: a resumed run starts with an empty one.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass


@dataclass
class Banked:
    """A spare informative group: its source ``(group, items)`` (task rewards filled in, :class:`StepBatch`'s
    ``sources``) and the oldest version of its tokens."""

    source: tuple
    oldest: int


class DynamicSampler:
    """The sizing, the degenerate share and the bank (rank 0). ``cfg``: the ``dynamic_sampling`` section; ``need``:
    groups one step trains (``prompts_per_step x grad_accum``)."""

    def __init__(self, cfg, need: int, max_staleness: int):
        self.cfg = cfg
        self.need = need
        self.max_staleness = max_staleness
        self.cap = max(need, math.floor(need * cfg.max_factor))
        """Groups one step may request at most (ahead and top-ups)."""
        self.history: deque[tuple[int, int]] = deque(maxlen=cfg.window)
        self.bank: list[Banked] = []

    def share(self) -> float:
        """The degenerate share of the groups scored over the last ``window`` steps (0 before any)."""
        scored = sum(s for s, _ in self.history)
        return sum(d for _, d in self.history) / scored if scored else 0.0

    def _inflate(self, k: int) -> int:
        if k <= 0:
            return 0
        keep = 1.0 - self.share()
        return math.ceil(k / keep - 1e-9) if keep > 0 else self.cap

    def ahead(self, future_version: int | None = None) -> int:
        """Groups to request for a future step trained at about ``future_version``: enough for ``need`` informative
        ones at the recent share, less the banked groups still within ``max_staleness`` then, capped.

        >>> from types import SimpleNamespace as N
        >>> ds = DynamicSampler(N(max_factor=3.0, window=4), need=4, max_staleness=1)
        >>> ds.ahead()
        4
        >>> ds.observe(scored=8, degenerate=4); ds.ahead()
        8
        >>> ds.observe(scored=8, degenerate=8); ds.ahead()   # share 0.75: 16 asked, capped at 3 x 4
        12
        """
        usable = 0 if future_version is None else sum(
            1 for b in self.bank if future_version - b.oldest <= self.max_staleness)
        return min(self.cap, self._inflate(self.need - usable))

    def topup(self, missing: int, requested: int) -> int:
        """Groups to request now for a step ``missing`` informative groups short that requested ``requested``.

        >>> from types import SimpleNamespace as N
        >>> ds = DynamicSampler(N(max_factor=2.0, window=4), need=4, max_staleness=1)
        >>> ds.observe(scored=4, degenerate=2); ds.topup(missing=1, requested=4)
        2
        >>> ds.topup(missing=3, requested=6)   # the cap (8) leaves 2
        2
        """
        return max(0, min(self._inflate(missing), self.cap - requested))

    def observe(self, scored: int, degenerate: int) -> None:
        """One step's newly scored groups and how many of them were degenerate."""
        if scored:
            self.history.append((scored, degenerate))

    def unbank(self, current_version: int) -> tuple[list[tuple], int]:
        """The banked sources still within ``max_staleness`` of ``current_version`` (oldest first; the bank is
        emptied) and how many expired."""
        ok = [b.source for b in self.bank if current_version - b.oldest <= self.max_staleness]
        expired = len(self.bank) - len(ok)
        self.bank = []
        return ok, expired

    def deposit(self, items: list[Banked]) -> int:
        """Keep spare groups (oldest first, at most ``cap``); how many were turned away for room."""
        self.bank.extend(items)
        self.bank.sort(key=lambda b: b.oldest)
        over = max(0, len(self.bank) - self.cap)
        if over:
            self.bank = self.bank[over:]  # the oldest go: they would expire first
        return over
