"""Tool episodes on the learner's side: what of a completion was sampled, and the ``tools/*`` metrics.

A tool episode (``actor.episodes``) reaches the learner as one completion with a ``loss_mask`` (1 on the tokens
the policy sampled, 0 on the observations the actor appended) and its account (``sync.wire.Episode``).
:mod:`learner.rollouts` keeps the observations in the forwarded sequence and out of everything trained or
measured per token (see its docstring); this module has the pieces it uses and the metrics:

* per episode, over the completions scored this step: ``tools/turns``, ``tools/tool_calls``, ``tools/tool_errors``,
  ``tools/tool_timeouts``, ``tools/truncated_observations`` (means), ``tools/finish/<reason>`` (shares: stop,
  length, max_turns, budget, tool_error), ``tools/reward_by_turns/<n>`` (the mean reward of the episodes of n turns);
* the time split, summed over the step's groups as the actors timed them: ``tools/generate_s`` (each group's wall
  time in its engine), ``tools/tool_s`` (its calls, queued to answered) and ``tools/tool_idle_s`` (the engine had
  nothing to step but waited on a call: the overlap that failed);
* ``tools/logprob_gap/turn<k>``: the mean |learner - actor| logprob of the sampled tokens of each turn index over the
  step's forwarded completions (:class:`TurnGap`, summed over ranks). It includes the policy's move for stale rows,
  like ``sampling/*``; a turn whose gap stands out from the first turn's says that turn was scored on other ids or
  another context than it was sampled on.
"""

from __future__ import annotations

import torch

FINISHES = ("stop", "length", "max_turns", "budget", "tool_error")


def answer(c) -> str:
    """What the reward scores of a completion: a tool episode's final answer, else its text."""
    return getattr(c, "answer", c.text)


def sampled_runs(runs: list[tuple[int, int, int]], bits: list[int]) -> list[tuple[int, int, int]]:
    """``(start, end, version)`` runs cut to the sampled tokens (``bits`` 1): an observation's tokens carry no version
    of their own and count in no staleness.

    >>> sampled_runs([(0, 6, 3)], [1, 1, 0, 0, 1, 1])
    [(0, 2, 3), (4, 6, 3)]
    """
    if 0 not in bits:
        return runs
    out = []
    for s, e, v in runs:
        i = s
        while i < e:
            while i < e and not bits[i]:
                i += 1
            j = i
            while j < e and bits[j]:
                j += 1
            if j > i:
                out.append((i, j, v))
            i = j
    return out


def turn_index(mask: list[int] | None, n: int) -> list[int]:
    """Per token, the turn it was sampled in (0, 1, ...), -1 inside an observation.

    >>> turn_index([1, 1, 0, 0, 1, 0, 1], 7), turn_index(None, 3)
    ([0, 0, -1, -1, 1, -1, 2], [0, 0, 0])
    """
    if mask is None:
        return [0] * n
    out, turn, prev = [], -1, 0
    for m in mask:
        if m and not prev:
            turn += 1
        out.append(turn if m else -1)
        prev = m
    return out


class TurnGap:
    """Sums of |learner - actor| logprob and token counts per turn index, over one rank's forwarded micro-batches."""

    def __init__(self, turns: int):
        self.turns = turns
        self.sums = [0.0] * turns
        self.counts = [0.0] * turns

    def add(self, logps: torch.Tensor, behaviour: torch.Tensor, mask: torch.Tensor, samples: list) -> None:
        """One micro-batch: ``logps``/``behaviour``/``mask`` ``[B, C]`` (completion token j of sample i at [i, j])."""
        if all(getattr(s, "episode", None) is None for s in samples):
            return
        idx = torch.full(mask.shape, -1, dtype=torch.long)
        for i, s in enumerate(samples):
            t = turn_index(s.loss_mask, len(s.completion_ids))
            idx[i, :len(t)] = torch.tensor(t)
        gap = ((logps.detach().float() - behaviour.float()).abs() * mask).cpu()
        on = (mask > 0).cpu()
        for k in range(self.turns):
            sel = on & (idx == k)
            self.sums[k] += float(gap[sel].sum())
            self.counts[k] += float(sel.sum())

    def vector(self) -> list[float]:
        return [*self.sums, *self.counts]

    @staticmethod
    def metrics(vec: list[float]) -> dict[str, float]:
        """``tools/logprob_gap/turn<k>`` (k from 1) of a summed :meth:`vector`, for the turns that had tokens."""
        n = len(vec) // 2
        return {f"tools/logprob_gap/turn{k + 1}": vec[k] / vec[n + k] for k in range(n) if vec[n + k] > 0}


def episode_metrics(samples: list) -> dict[str, float]:
    """The per-episode ``tools/*`` metrics over ``samples`` (those that are tool episodes; {} when none is)."""
    eps = [(s.episode, s.reward) for s in samples if getattr(s, "episode", None) is not None]
    if not eps:
        return {}
    n = len(eps)
    m = {f"tools/{k}": sum(getattr(e, k) for e, _ in eps) / n
         for k in ("turns", "tool_calls", "tool_errors", "tool_timeouts", "truncated_observations")}
    for f in FINISHES:
        m[f"tools/finish/{f}"] = sum(e.finish == f for e, _ in eps) / n
    by: dict[int, list[float]] = {}
    for e, r in eps:
        by.setdefault(e.turns, []).append(r)
    m.update({f"tools/reward_by_turns/{t}": sum(v) / len(v) for t, v in sorted(by.items())})
    return m


def timing_metrics(groups, into: dict | None = None) -> dict[str, float]:
    """``tools/generate_s``, ``tools/tool_s``, ``tools/tool_idle_s`` summed over ``groups`` (``(group, items)``) that
    ran tool episodes, added to ``into``."""
    out = dict(into or {})
    for g, _ in groups:
        if "tool_s" not in g.timings:
            continue
        for k in ("generate_s", "tool_s", "tool_idle_s"):
            out[f"tools/{k}"] = out.get(f"tools/{k}", 0.0) + float(g.timings.get(k, 0.0))
    return out
