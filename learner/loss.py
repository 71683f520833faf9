"""GRPO advantages and the clipped policy loss (Dr. GRPO by default). Torch only: no vLLM, no DeepSpeed.

What runs (``loss_type="dr_grpo"``, ``scale_rewards="none"``, ``beta=0``, the handoff's V4 recipe):

* advantage of completion i in group g: ``A_i = r_i - mean_g(r)`` (no division by the group std);
* per token: ``ratio = exp(logp_learner - logp_behaviour)``,
  loss ``-min(ratio * A, clip(ratio, 1-eps, 1+eps) * A)``;
* aggregation: the masked token sum divided by the constant
  ``completions in the batch x max_completion_length``.

Where this departs from the Dr. GRPO paper (Liu et al., 2025, "Understanding R1-Zero-Like Training"):

* The paper's objective takes the ratio against ``pi_old``, the policy that sampled, computed by the same
  network. Here the behaviour logprobs come from the *actor* (vLLM, the sampled distribution after
  temperature/top-p: ``processed_logprobs``), so the ratio also absorbs the small numeric gap between the
  two engines. This is what TRL does with vLLM (``sampling_per_token_logps``) but TRL then multiplies by a
  separate, detached importance weight; we take the ratio directly against the actor logprobs because our
  rollouts can be up to ``max_staleness`` versions old and there is no learner-side ``pi_old`` to compute
  without a second forward pass of an older adapter.
* Every row uses truncated importance sampling: in the unclipped branch the ratio ``r = pi/mu`` is replaced
  by ``r * sg(min(1, cap / r))``, whose value is ``min(r, cap)`` and whose gradient is ``min(r, cap) * grad log
  pi`` (the classic truncated-IS policy gradient; the cap is ``learner.tis_cap``). Without it a
  negative-advantage token the learner likes far more than the sampler did has an unbounded weight (the PPO
  clip only bounds the other side): on a stale row that is policy drift, on a fresh row the engines' numeric
  gap, which a bf16 engine or a wrong sampler can make large. (Until #34 fresh rows had no cap.) TRL without
  vLLM recomputes ``pi_old`` itself, so its fresh ratio is exactly 1 and needs no cap; with vLLM it caps the
  engine gap in a separate weight. ``delta`` (TRL's two-sided clip: ``min(r, delta)``, no gradient past it)
  replaces the truncation on every row when set.
* The log-ratio is clamped to +-20 and is 0 at padding (:data:`LOG_RATIO_MAX`), so one token the actor found
  near-impossible cannot overflow ``exp`` and turn the step into NaN; such tokens get no gradient.
* The constant denominator counts the completions of the whole optimizer step (all micro-batches and all
  ranks), not of one micro-batch. TRL divides by the micro-batch size and then by the number of
  accumulation steps, which is the same number when micro-batches are equal; ours stays exact when the
  last micro-batch is short or when refused rollouts make the step smaller.
* ``loss_type="grpo"`` averages each completion's tokens, then completions (the original GRPO), and
  ``"dapo"`` divides the token sum by the number of real tokens in the step; both are here for comparison.

TRL 1.16's objective options, with its names and meaning (each matches TRL's ``_compute_loss`` to 1e-5 on the
same tensors, ``tests/unit/test_loss_trl_parity.py``): ``epsilon_high`` (clip-higher), ``delta`` (two-sided
clip), ``importance_sampling_level: sequence`` (GSPO; our ratio carries the engine gap, which TRL's does not at
its first iteration: the gap's sequence-level size is logged every step, :mod:`learner.mismatch`, and the README
says what band is safe) and ``mask_truncated_completions`` (applied in :mod:`learner.rollouts`: a cut completion
gets advantage 0, is not forwarded, and leaves dapo's token count). ``learner.seq_ratio_band`` drops a row whose
geometric-mean ratio leaves a band (verl's Geo-RS, SkyRL's geo mask; TRL has no such option for its ratio).
Where it departs from TRL: no entropy masking/bonus, no off-policy-sequence mask, no KL term when beta is 0 (no
reference model is loaded), and the truncated IS above (``tis_cap: None`` is TRL's uncapped ratio).

With ``learner.share_prompt`` the group's prompt is forwarded once per micro-batch and its completions
packed after it under a block-causal mask (:func:`packed_completion_logps`); TRL forwards the prompt
again for every completion. The logprobs and gradients are the same (tested to 1e-5), and a group of G
costs ``P + G x C`` tokens instead of ``G x (P + C)`` (prompt P, completions C): 4.8x fewer at P=350,
C=64, G=16.

Logprobs are computed at the sampling temperature (``logits / temperature``) so they are comparable with
the actor's processed logprobs, as TRL does in its fused LM head. Top-p is not re-applied on the learner
side (nor by TRL): with ``actor.top_p < 1`` the ratio is taken against the renormalised nucleus
distribution the actor sampled from, a small bias; the handoff's recipe samples with top_p 1.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from learner.token_logps import token_logps

if TYPE_CHECKING:
    from learner.mismatch import StepMismatch

LOSS_TYPES = ("dr_grpo", "grpo", "dapo")
LOG_RATIO_MAX = 20.0
"""log(pi/mu) is clamped to +-20 (ratio 2e-9 .. 5e8): beyond, PPO's clip already holds the ratio for one
advantage sign; the clamp keeps exp() finite for the other."""
SCALE_REWARDS = ("none", "group", "batch")


def group_advantages(rewards: torch.Tensor, scale_rewards: str = "none", eps: float = 1e-4) -> torch.Tensor:
    """Advantages for a ``[groups, G]`` reward matrix, flattened to ``[groups * G]``.

    ``none``: reward minus the group mean (Dr. GRPO). ``group``: also divided by the group std (+eps),
    as the original GRPO. ``batch``: divided by the std over the whole batch (TRL's ``"batch"``).
    The std is the unbiased one, as TRL computes it.

    The mean is taken in float64 around the group's first reward, ``r0 + mean(r - r0)``, so a group whose
    rewards are all equal gets advantages of exactly 0 (a float32 mean of eight 0.1s is not 0.1: every
    completion got -7e-9, a gradient of pure rounding noise, and could not be skipped).

    >>> group_advantages(torch.tensor([[0.1] * 8])).tolist()
    [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]
    >>> group_advantages(torch.tensor([[0.0, 0.5, 1.0, 0.5]])).tolist()
    [-0.5, 0.0, 0.5, 0.0]
    """
    if scale_rewards not in SCALE_REWARDS:
        raise ValueError(f"scale_rewards must be one of {SCALE_REWARDS}, got {scale_rewards!r}")
    if rewards.dim() != 2 or rewards.size(1) < 2:
        raise ValueError(f"rewards must be [groups, G>=2], got {tuple(rewards.shape)}")
    r64 = rewards.to(torch.float64)
    first = r64[:, :1]
    adv = ((r64 - first) - (r64 - first).mean(dim=1, keepdim=True)).to(torch.float32)
    rewards = rewards.to(torch.float32)
    if scale_rewards == "group":
        adv = adv / (rewards.std(dim=1, keepdim=True) + eps)
    elif scale_rewards == "batch":
        adv = adv / (rewards.std() + eps)
    return adv.reshape(-1)


def selective_log_softmax(logits: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``log_softmax(logits).gather(-1, index)`` in fp32, keeping for backward only the logits and one log-sum-exp
    per position (:func:`learner.token_logps.token_logps`; memory matters at vocab 49k x 1024 tokens)."""
    return token_logps(logits, index)


def completion_logps(
    logits: torch.Tensor, input_ids: torch.Tensor, completion_start: int, temperature: float = 1.0
) -> torch.Tensor:
    """Logprobs of ``input_ids[:, completion_start:]`` under ``logits`` (``[B, T, V]`` for ``input_ids``
    ``[B, T]``), at ``temperature``. Returns ``[B, T - completion_start]``."""
    return token_logps(logits, input_ids[:, completion_start:], temperature, start=completion_start - 1)


def model_completion_logps(
    model,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    prompt_len: int,
    temperature: float = 1.0,
    position_ids: torch.Tensor | None = None,
) -> torch.Tensor:
    """Forward ``model`` (any HF causal LM, PEFT or DeepSpeed-wrapped) on prompt+completion rows whose
    completions start at column ``prompt_len``; return the completion tokens' logprobs at ``temperature``.
    Only the completion positions go through the LM head (``logits_to_keep``)."""
    keep = input_ids.size(1) - prompt_len + 1
    kwargs = {"position_ids": position_ids} if position_ids is not None else {}
    out = model(
        input_ids=input_ids, attention_mask=attention_mask, logits_to_keep=keep, use_cache=False, **kwargs
    )
    return token_logps(out.logits, input_ids[:, prompt_len:], temperature)  # the last position predicts nothing


def attn_implementation(model) -> str | None:
    """The attention implementation ``model`` runs (a DeepSpeed engine, a PEFT model or a transformers model; read
    from the model's config at each call, as ``set_attn_implementation`` may switch it); None when unknown."""
    for m in (model, getattr(model, "module", None)):
        impl = getattr(getattr(m, "config", None), "_attn_implementation", None)
        if impl:
            return impl
    return None


def packed_completion_logps(model, packed, temperature: float = 1.0, dtype: torch.dtype = torch.float32):
    """Completion logprobs ``[B, C]`` of a :class:`learner.rollouts.Packed` batch (prompts shared per row).

    A model under :data:`learner.attention.GROUPED` gets the rows' spans and computes each completion's attention
    on its own; it is given an all-ones 2D mask, so neither we nor transformers build an ``[R, 1, L, L]`` mask
    (with no mask at all, transformers would build one from the restarting ``position_ids``, as for packed
    sequences; with all ones its SDPA mask builder returns None). Any other implementation gets the block mask
    as an additive float mask of the model's ``dtype`` (what eager and SDPA attention both take; flash attention
    cannot take it) and ignores the spans. Only positions from the shortest prompt's end go through the LM
    head."""
    from learner.attention import GROUPED, SpanMasks

    width = packed.input_ids.size(1)
    keep = width - packed.min_prompt_len + 1
    if attn_implementation(model) == GROUPED:
        mask = torch.ones_like(packed.input_ids)
    else:
        block = packed.block_mask()
        mask = torch.zeros(block.shape, dtype=dtype, device=block.device)
        mask.masked_fill_(~block, torch.finfo(dtype).min)
    out = model(
        input_ids=packed.input_ids,
        attention_mask=mask,
        position_ids=packed.position_ids,
        logits_to_keep=keep,
        use_cache=False,
        packed_spans=packed.spans,
        span_masks=SpanMasks(),
    )
    return token_logps(out.logits, packed.completion_ids, temperature, rows=packed.row,
                       cols=packed.index - (width - keep))


@dataclass
class LossStats:
    """Detached statistics of one loss evaluation (sums, so micro-batches add up)."""

    tokens: float
    clipped_tokens: float
    low_clipped: float
    high_clipped: float
    ratio_sum: float
    truncated: float
    mismatch: StepMismatch | None = None
    """The actor-vs-learner mismatch over the trained tokens (:mod:`learner.mismatch`)."""


IS_LEVELS = ("token", "sequence")


def policy_loss(
    logps: torch.Tensor,
    behaviour_logps: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    epsilon: float = 0.2,
    epsilon_high: float | None = None,
    delta: float | None = None,
    importance_sampling_level: str = "token",
    loss_type: str = "dr_grpo",
    max_completion_length: int | None = None,
    num_completions: float | None = None,
    num_tokens: float | None = None,
    stale: torch.Tensor | None = None,
    tis_cap: float | None = 2.0,
    seq_ratio_band: tuple[float, float] | None = None,
) -> tuple[torch.Tensor, LossStats]:
    """The clipped surrogate loss of one micro-batch, scaled so micro-batch losses *add up* to the step's.

    ``logps``/``behaviour_logps``/``mask``: ``[B, T]``; ``advantages``: ``[B]``.
    ``epsilon``/``epsilon_high``: the clip range ``[1 - epsilon, 1 + epsilon_high]`` (TRL's names; ``epsilon_high``
    None is ``epsilon``). ``delta``: TRL's two-sided clip, ``min(r, delta)`` on the unclipped branch of every row
    (no gradient past it); when set it replaces the truncated IS below. ``importance_sampling_level``: ``token``, or
    ``sequence`` (GSPO: one ratio per row, ``exp`` of the masked mean log-ratio).
    ``num_completions``: completions of the whole step (dr_grpo, grpo; default B).
    ``num_tokens``: real tokens of the whole step (dapo; default ``mask.sum()``).
    ``max_completion_length``: dr_grpo's constant (default T).
    ``tis_cap``: truncated IS on the unclipped branch of every row, fresh or stale (value ``min(r, cap)``, gradient
    ``min(r, cap) * grad log pi``); None: no cap (TRL's ratio without vLLM). ``stale``: ``[B]`` bool, rows sampled
    by an older policy version (only splits the mismatch statistics).
    ``seq_ratio_band``: ``(low, high)``: a row whose geometric-mean ratio is outside is not trained (its mask is
    zeroed; the denominators are the caller's and do not change).
    """
    if loss_type not in LOSS_TYPES:
        raise ValueError(f"loss_type must be one of {LOSS_TYPES}, got {loss_type!r}")
    if importance_sampling_level not in IS_LEVELS:
        raise ValueError(f"importance_sampling_level must be one of {IS_LEVELS}, got {importance_sampling_level!r}")
    from learner.mismatch import measure

    eps_low, eps_high = epsilon, epsilon if epsilon_high is None else epsilon_high
    mask = mask.to(logps.dtype)
    adv = advantages.to(logps.dtype).unsqueeze(1)
    # Padding positions get log-ratio 0 and it stays within +-LOG_RATIO_MAX, so exp() cannot overflow and no
    # position can turn the loss or its gradient into inf/NaN (0 * inf).
    log_ratio = ((logps - behaviour_logps) * mask).clamp(-LOG_RATIO_MAX, LOG_RATIO_MAX)
    dropped = None
    if seq_ratio_band is not None:
        with torch.no_grad():
            geo = torch.exp((log_ratio * mask).sum(-1) / mask.sum(-1).clamp(min=1.0))
            dropped = (geo < seq_ratio_band[0]) | (geo > seq_ratio_band[1])
    mismatch = measure(log_ratio, mask, stale, dropped)  # over every trained token, before the band drops rows
    if dropped is not None:
        mask = mask * (~dropped).to(mask.dtype).unsqueeze(1)
        log_ratio = log_ratio * mask
    if importance_sampling_level == "sequence":
        log_ratio = ((log_ratio * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)).unsqueeze(-1)
    ratio = torch.exp(log_ratio)  # [B, T], or [B, 1] at the sequence level
    clipped = torch.clamp(ratio, 1 - eps_low, 1 + eps_high)
    truncated = torch.zeros_like(ratio, dtype=torch.bool)
    if delta is not None:  # TRL: coef_1 = clamp(coef_1, max=delta) on every row
        truncated = ratio.detach() > delta
        unclipped = torch.clamp(ratio, max=delta)
    elif tis_cap is not None:
        truncated = ratio.detach() > tis_cap
        # value min(r, cap), gradient min(r, cap) * grad log pi; the weight is finite everywhere (the division
        # only happens where r > cap >= 1), so an underflowed ratio cannot make 0 * inf.
        weight = torch.where(truncated, tis_cap / ratio.detach().clamp(min=tis_cap), torch.ones_like(ratio))
        unclipped = ratio * weight
    else:
        unclipped = ratio
    per_token = -torch.min(unclipped * adv, clipped * adv)
    b, t = logps.shape
    if loss_type == "dr_grpo":
        denom = (num_completions if num_completions is not None else b) * (max_completion_length or t)
        loss = (per_token * mask).sum() / denom
    elif loss_type == "grpo":
        per_seq = (per_token * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)
        loss = per_seq.sum() / (num_completions if num_completions is not None else b)
    else:  # dapo
        loss = (per_token * mask).sum() / max(
            float(num_tokens if num_tokens is not None else mask.sum()), 1.0
        )
    with torch.no_grad():
        low = ((ratio < 1 - eps_low) & (adv < 0)).to(mask.dtype) * mask
        high = ((ratio > 1 + eps_high) & (adv > 0)).to(mask.dtype) * mask
        stats = LossStats(
            tokens=float(mask.sum()),
            clipped_tokens=float((low + high).sum()),
            low_clipped=float(low.sum()),
            high_clipped=float(high.sum()),
            ratio_sum=float((ratio * mask).sum()),
            truncated=float((truncated.to(mask.dtype) * mask).sum()),
            mismatch=mismatch,
        )
    return loss, stats


def is_finite_group(rewards: list[float]) -> bool:
    return all(isinstance(r, (int, float)) and math.isfinite(r) for r in rewards)
