"""One optimizer step's work on one rank: micro-batched forward, loss and backward of the step's samples.

Shared by the trainer and ``learner.bench``, so the bench measures the trainer's own loop.

Completions whose advantage is exactly zero are not forwarded at all. With ``beta: 0`` such a completion
adds ``-min(r * 0, clip(r) * 0) = 0`` to the loss and exactly nothing to the gradient, whatever its ratio:
every completion of a zero-variance group (``train/frac_reward_zero_std``) and any completion whose reward
equals its group mean. The normaliser stays the step's constant (all completions, ``loss_type`` as
configured), so the gradient is the full computation's (tested to 1e-6, with and without
``learner.share_prompt``, on one and two ranks) while the step costs only the informative completions.
What changes is what the step statistics average over: ``train/clip_ratio``, ``train/ratio_mean`` and
``train/tis_truncated_ratio`` count the forwarded tokens, and so does the mismatch (``sampling/*``,
:mod:`learner.mismatch`). TRL forwards every completion.

A step with no informative completion on any rank (every advantage 0: every group without spread, or every
completion masked) is not forwarded and makes no optimizer step (:attr:`ForwardBackward.empty`): AdamW would
otherwise apply a momentum-only update and the version would move on without any signal.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from learner.episodes import TurnGap
from learner.loss import policy_loss
from learner.mismatch import StepMismatch
from learner.rollouts import collate, pack_shared, shard


@dataclass
class ForwardBackward:
    """Sums over one rank's micro-batches of a step."""

    loss: float = 0.0
    clipped: float = 0.0
    tokens: float = 0.0
    truncated: float = 0.0
    ratio_sum: float = 0.0
    learner_tokens: int = 0
    """Tokens forwarded (padding excluded; a shared prompt counts once)."""
    skipped: int = 0
    """Completions of the step not forwarded because their advantage is 0 (the same on every rank)."""
    mismatch: StepMismatch | None = None
    """The actor-vs-learner mismatch over this rank's forwarded tokens."""
    empty: bool = False
    """Nothing informative in the step: nothing was forwarded and the optimizer must not step."""
    turn_gap: TurnGap | None = None
    """Tool episodes: the |learner - actor| logprob per turn index over this rank's forwarded tokens."""


def informative(samples: list) -> list:
    """The samples whose advantage is not exactly zero: the only ones that move the gradient (beta 0). A masked
    one (``mask_truncated_completions``) has advantage 0."""
    return [s for s in samples if s.advantage != 0.0]


def trained_tokens(samples: list) -> float:
    """The step's completion tokens that count in ``dapo``'s denominator (masked completions do not)."""
    return float(sum(s.sampled for s in samples if not getattr(s, "masked", False)))  # a tool's observation: no


def forward_backward(policy, cfg, samples, num_tokens: float | None, skip_zero_advantage: bool = True
                     ) -> ForwardBackward:
    """This rank's micro-batches of the step's ``samples``: forward, loss, backward (gradients accumulate
    until the last micro-batch; the caller steps the optimizer). ``num_tokens``: the step's real completion
    tokens (``dapo``'s denominator; None counts them here)."""
    world = policy.world
    work = informative(samples) if skip_zero_advantage else list(samples)
    out = ForwardBackward(skipped=len(samples) - len(work), mismatch=StepMismatch(),
                          turn_gap=TurnGap(cfg.episode.max_turns))
    if not informative(samples):  # every rank holds the same samples: every rank skips, no collective is missed
        out.empty = True
        return out
    mbs, mws = shard(work, policy.rank, world, cfg.learner.micro_batch_size)
    if num_tokens is None:
        num_tokens = trained_tokens(samples)
    pad = policy.tokenizer.pad_token_id if policy.tokenizer is not None else 0
    for k, (mb, mw) in enumerate(zip(mbs, mws, strict=True)):
        if cfg.learner.share_prompt:
            batch = pack_shared(mb, pad, policy.device, weights=mw)
            out.learner_tokens += batch.tokens
        else:
            batch = collate(mb, pad, policy.device, weights=mw)
            out.learner_tokens += int(batch.attention_mask[torch.tensor(mw, dtype=torch.bool)].sum())
        logps = policy.completion_logps(batch, cfg.temperature)
        out.turn_gap.add(logps, batch.behaviour_logps, batch.completion_mask, mb)
        loss, st = policy_loss(
            logps.float(),
            batch.behaviour_logps,
            batch.advantages,
            batch.completion_mask,
            epsilon=cfg.epsilon,
            epsilon_high=cfg.epsilon_high,
            delta=cfg.delta,
            importance_sampling_level=cfg.importance_sampling_level,
            loss_type=cfg.loss_type,
            max_completion_length=cfg.max_completion_length,
            num_completions=len(samples) / world,
            num_tokens=num_tokens / world,
            stale=batch.stale,
            tis_cap=cfg.learner.tis_cap,
            seq_ratio_band=cfg.learner.seq_ratio_band,
        )
        policy.backward(loss, boundary=k == len(mbs) - 1)
        out.loss += float(loss.detach())
        out.clipped += st.clipped_tokens
        out.tokens += st.tokens
        out.truncated += st.truncated
        out.ratio_sum += st.ratio_sum
        out.mismatch.merge(st.mismatch)
    return out
