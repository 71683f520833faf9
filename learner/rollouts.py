"""From RolloutGroups to a training batch: refusals, staleness, rewards, advantages, tensors.

Versions are per token. An actor that loads a version while a sequence runs (``actor.load_mode: inflight``,
merged serving) sends each completion's ``version_runs``: the version that sampled each token. A completion is
as stale as its oldest token, and a group as its oldest completion (:func:`group_versions`; a group without runs
is all of its ``version``). The per-token behaviour logprobs are those of the version that sampled each token,
so the loss's importance ratio ``pi_learner / mu`` is per token as it always was; its truncation (TIS) applies
to every token of a completion whose oldest token is stale (``Sample.stale``), which for the newer tokens of a
mixed completion, closer to the learner's policy, caps a ratio near 1 that rarely reaches the cap. PipelineRL
departs the same way from one-version-per-sequence GRPO; the KV cache under the newer tokens was computed by
the older weights, a gap the per-token logprobs carry into the ratio.

Checks made on every group before anything reaches the model (each failure is counted, never raised):

* a token of a version newer than the learner's (``> current``), or older than the version the request was
  admitted under (``group.version``): the whole group is refused (``refused_version``) — an actor claiming
  weights that were never published is a sync bug, not data;
* its oldest token older than ``current - max_staleness``: the group is dropped (``dropped_stale``);
* a completion with no tokens (``refused_empty``), a token id outside the model's vocabulary in the
  prompt or completion (``refused_vocab``), a tool episode's ``loss_mask`` that does not describe its tokens
  (``refused_mask``), or logprobs that are missing, of the wrong length or not finite on a sampled token
  (``refused_logprobs``): that completion is dropped;
* rewards that are NaN or infinite: the whole group is skipped (``skipped_nan_reward``) — its mean, and
  so every advantage in it, would be NaN;
* a group left with fewer than 2 completions is skipped (``skipped_small_group``): no baseline.

Advantages are computed per group over the completions that survived, from the task reward plus DAPO's soft
overlong punishment when ``rewards.overlong_buffer`` is set (:mod:`rewards.overlong`). A completion the engine cut
at ``max_completion_length`` (finish reason ``length``; without one, its length) is ``truncated``; with
``mask_truncated_completions`` it is not trained (advantage 0, ``masked``), while its group's mean still counts
it, as TRL. Each group also says whether it is ``degenerate`` for dynamic sampling: the max - min of its *task*
reward (before the overlong punishment) over the completions that would be trained is at most ``tol``.
:func:`score_groups` builds one :class:`StepBatch` per group (with the group it came from, for the dynamic
sampler's bank) and :func:`merge_batches` joins them; :func:`build_batch` does both. Token ids are used as sent
(no re-tokenisation): the prompt ids the actor actually conditioned on and the completion ids it sampled.

Tool episodes (``actor.episodes``): a completion holds every turn's sampled ids and every observation's ids, with a
``loss_mask`` 0 on the observations. They stay in the sequence the learner forwards (each turn conditions on them)
but are out of everything trained or measured on sampled tokens: the loss, the importance ratio and its truncation,
the clip and mismatch statistics (their ``completion_mask`` is 0), the staleness counts and the lengths
(``completion_lengths`` are sampled tokens); their behaviour logprobs are set to 0. The reward scores the final
answer (``Completion.answer``) with the episode's ``turns``, ``tool_calls``, ``tool_errors`` and ``finish_reason``
as extra columns. Dr. GRPO's constant denominator stays ``completions x max_completion_length``: an episode's
sampled and observed tokens together fit in ``max_completion_length``, and only its sampled ones add to the sum.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field

import torch

from learner.episodes import answer, sampled_runs
from learner.loss import group_advantages
from sync.runs import expand


@dataclass
class PromptItem:
    """One training/eval prompt: its index in the pair file, chat messages, reward columns, task."""

    index: int
    messages: list[dict]
    columns: dict
    task: str = ""


@dataclass
class Sample:
    """One completion ready for the loss."""

    prompt_ids: list[int]
    completion_ids: list[int]
    behaviour_logps: list[float]
    advantage: float
    reward: float
    version: int
    """The version of its oldest token."""
    stale: bool
    """Its oldest token was sampled by an older version than the learner's (truncated IS applies)."""
    task: str = ""
    truncated: bool = False
    """The engine cut it at ``max_completion_length``."""
    masked: bool = False
    """Not trained (``mask_truncated_completions``): its advantage is 0 and it is out of ``dapo``'s token count."""
    loss_mask: list[int] | None = None
    """Per completion token, 1 where the policy sampled it, 0 inside a tool's observation (forwarded, never trained:
    out of the loss, the ratio and its truncation, the clip and mismatch statistics); None: every token sampled."""
    episode: object = None
    """The tool episode's account (``sync.wire.Episode``), None for a single-turn completion."""

    @property
    def sampled(self) -> int:
        """Completion tokens the policy sampled."""
        return len(self.completion_ids) if self.loss_mask is None else sum(self.loss_mask)


@dataclass
class StepBatch:
    samples: list[Sample] = field(default_factory=list)
    rewards: list[list[float]] = field(default_factory=list)
    """Per kept group, the rewards of its kept completions."""
    tasks: list[str] = field(default_factory=list)
    completion_lengths: list[int] = field(default_factory=list)
    counts: Counter = field(default_factory=Counter)
    staleness: list[int] = field(default_factory=list)
    """Per kept group, versions between the learner and the group's oldest token."""
    mixed_completions: int = 0
    """Kept completions whose tokens span more than one version."""
    token_count: int = 0
    token_staleness_sum: int = 0
    token_staleness_max: int = 0
    """Per-token staleness (the learner's version minus the token's) over the kept completions."""
    components: dict[str, list[float]] = field(default_factory=dict)
    """Reward components (``rewards``' ``task/component`` names) over the kept completions."""
    task_rewards: list[list[float]] = field(default_factory=list)
    """Per kept group, its task rewards (``rewards`` before the overlong punishment)."""
    degenerate: list[bool] = field(default_factory=list)
    """Per kept group: no spread in its task reward over the completions that would be trained (``tol``)."""
    sources: list = field(default_factory=list)
    """Per kept group, ``(group, items)`` of its prompt alone with its task rewards filled in: what the dynamic
    sampler banks and builds again at a later version without scoring again."""


def group_versions(group) -> tuple[int, int]:
    """(oldest, newest) version of any token of ``group`` (its ``version`` where a completion sent no runs)."""
    lo = hi = None
    for r in group.results:
        for c in r.completions:
            vs = c.version_runs[1::2] or (group.version,)
            a, b = min(vs), max(vs)
            lo = a if lo is None or a < lo else lo
            hi = b if hi is None or b > hi else hi
    return (group.version, group.version) if lo is None else (lo, hi)


def out_of_bounds(group, current: int, max_staleness: int) -> bool:
    """Whether ``group`` is refused or dropped for its versions (:func:`build_batch`'s first two checks)."""
    lo, hi = group_versions(group)
    return hi > current or lo < group.version or current - lo > max_staleness


def version_metrics(batch: StepBatch) -> dict[str, float]:
    """``train/mixed_version_frac`` (share of kept completions that span versions) and ``train/token_staleness``
    (mean, and ``_max``: the learner's version minus each token's, over kept tokens)."""
    n = len(batch.samples)
    return {
        "train/mixed_version_frac": batch.mixed_completions / n if n else 0.0,
        "train/token_staleness": batch.token_staleness_sum / batch.token_count if batch.token_count else 0.0,
        "train/token_staleness_max": float(batch.token_staleness_max),
    }


def check_completion(c, vocab_size: int) -> str | None:
    """Why a completion is refused, or None. A tool episode's ``loss_mask`` must describe its tokens with the first
    one sampled (``refused_mask``); logprobs are checked on the sampled tokens only (an observation's are
    placeholders, never used)."""
    from sync.runs import expand, mask_problem

    ids = c.token_ids
    if not ids:
        return "refused_empty"
    if any(t < 0 or t >= vocab_size for t in ids):
        return "refused_vocab"
    mask = getattr(c, "loss_mask", None) or []
    if mask_problem(mask, len(ids)) is not None:
        return "refused_mask"
    lp = c.logprobs
    if lp is None or len(lp) != len(ids):
        return "refused_logprobs"
    bits = expand(mask, len(ids), 1)
    if not all(math.isfinite(x) for x, m in zip(lp, bits, strict=True) if m):
        return "refused_logprobs"
    return None


def merge_batches(parts: list[StepBatch]) -> StepBatch:
    """One :class:`StepBatch` of ``parts``, in order (lists joined, counts and sums added)."""
    out = StepBatch()
    for p in parts:
        for name in ("samples", "rewards", "tasks", "completion_lengths", "staleness", "task_rewards", "degenerate",
                     "sources"):
            getattr(out, name).extend(getattr(p, name))
        out.counts.update(p.counts)
        out.mixed_completions += p.mixed_completions
        out.token_count += p.token_count
        out.token_staleness_sum += p.token_staleness_sum
        out.token_staleness_max = max(out.token_staleness_max, p.token_staleness_max)
        for k, v in p.components.items():
            out.components.setdefault(k, []).extend(v)
    return out


def build_batch(entries, reward_fn, *, batch: StepBatch | None = None, **kw) -> StepBatch:
    """``entries``: ``(group, items)`` pairs, ``items[j]`` the PromptItem of ``group.results[j]``.

    ``reward_fn(completions, prompts=..., **columns) -> list[float]`` (TRL signature) scores groups that
    arrive without rewards. Returns the accumulated :class:`StepBatch` (counts of every refusal in
    ``batch.counts``); keywords as :func:`score_groups`.
    """
    parts, counts = score_groups(entries, reward_fn, **kw)
    out = merge_batches(([batch] if batch is not None else []) + parts)
    out.counts.update(counts)
    return out


def is_truncated(c, max_completion_length: int) -> bool:
    """Whether the engine cut ``c`` at the length limit: its finish reason, or without one its length."""
    return c.finish_reason == "length" if c.finish_reason else len(c.token_ids) >= max_completion_length


def score_groups(
    entries,
    reward_fn,
    *,
    current_version: int,
    max_staleness: int,
    vocab_size: int,
    scale_rewards: str,
    max_completion_length: int,
    mask_truncated: bool = False,
    overlong: tuple[int, float] | None = None,
    tol: float = 0.0,
) -> tuple[list[StepBatch], Counter]:
    """One :class:`StepBatch` per group that survives the checks (see the module docstring), and the counts of
    what was refused. ``overlong``: ``(buffer, penalty)`` of the soft overlong punishment; ``tol``: the
    degenerate test's."""
    from dataclasses import replace

    from rewards.overlong import overlong_punishment

    parts: list[StepBatch] = []
    counts: Counter = Counter()
    for group, items in entries:
        n_comp = sum(len(r.completions) for r in group.results)
        oldest, newest = group_versions(group)
        if newest > current_version or oldest < group.version:
            counts["refused_version"] += n_comp
            continue
        staleness = current_version - oldest
        if staleness > max_staleness:
            counts["dropped_stale"] += n_comp
            continue
        if len(items) != len(group.results):
            counts["refused_shape"] += n_comp
            continue
        for j, (result, item) in enumerate(zip(group.results, items, strict=True)):
            if any(t < 0 or t >= vocab_size for t in result.prompt_token_ids) or not result.prompt_token_ids:
                counts["refused_vocab"] += len(result.completions)
                continue
            kept, kept_idx, comps = [], [], {}
            for k, c in enumerate(result.completions):
                why = check_completion(c, vocab_size)
                if why:
                    counts[why] += 1
                else:
                    kept.append(c)
                    kept_idx.append(k)
            if len(kept) < 2:
                counts["skipped_small_group"] += 1
                continue
            if (
                group.rewards is not None
                and j < len(group.rewards)
                and len(group.rewards[j]) == len(result.completions)
            ):
                rewards = [float(group.rewards[j][k]) for k in kept_idx]
            else:
                cols = {key: [val] * len(kept) for key, val in item.columns.items()}
                for key in kept[0].columns() if hasattr(kept[0], "columns") else ():  # a tool episode's columns
                    cols[key] = [c.columns().get(key) for c in kept]
                rewards = [  # a tool episode's final answer (sync.wire.Completion.answer)
                    float(r) if r is not None else math.nan
                    for r in reward_fn([answer(c) for c in kept], prompts=[item.messages] * len(kept), **cols)
                ]
                scored = getattr(reward_fn, "last_scored", None)
                if isinstance(scored, list) and len(scored) == len(kept):
                    for sc in scored:
                        for name, v in getattr(sc, "components", {}).items():
                            comps.setdefault(name, []).append(float(v))
            if len(rewards) != len(kept) or not all(math.isfinite(r) for r in rewards):
                counts["skipped_nan_reward"] += 1
                continue
            cut = [is_truncated(c, max_completion_length) for c in kept]
            task_rewards = rewards
            if overlong is not None:
                rewards = [r + overlong_punishment(len(c.token_ids), max_completion_length, *overlong)
                           for r, c in zip(rewards, kept, strict=True)]
            adv = group_advantages(torch.tensor([rewards]), scale_rewards).tolist()
            trained = [r for r, t in zip(task_rewards, cut, strict=True) if not (mask_truncated and t)]
            full = [math.nan] * len(result.completions)
            for k, r in zip(kept_idx, task_rewards, strict=True):
                full[k] = r
            batch = StepBatch(components=comps)
            parts.append(batch)
            batch.rewards.append(rewards)
            batch.task_rewards.append(task_rewards)
            batch.degenerate.append(not trained or max(trained) - min(trained) <= tol)
            batch.sources.append((replace(group, results=[result], rewards=[full]), [item]))
            batch.tasks.append(item.task)
            batch.staleness.append(staleness)
            for c, a, r, hit in zip(kept, adv, rewards, cut, strict=True):
                masked = mask_truncated and hit
                bits = expand(getattr(c, "loss_mask", None) or [], len(c.token_ids), 1)
                runs = [(s, e, v) for s, e, v in sampled_runs(c.runs(group.version), bits)]
                first = min(v for _, _, v in runs)
                batch.samples.append(
                    Sample(
                        list(result.prompt_token_ids),
                        list(c.token_ids),
                        [float(x) if m else 0.0 for x, m in zip(c.logprobs, bits, strict=True)],
                        0.0 if masked else float(a),
                        r,
                        first,
                        first < current_version,
                        item.task,
                        hit,
                        masked,
                        bits if 0 in bits else None,
                        getattr(c, "episode", None),
                    )
                )
                batch.completion_lengths.append(sum(bits))
                batch.mixed_completions += len({v for _, _, v in runs}) > 1
                for start, end, v in runs:
                    batch.token_count += end - start
                    batch.token_staleness_sum += (end - start) * (current_version - v)
                    if end > start:
                        batch.token_staleness_max = max(batch.token_staleness_max, current_version - v)
    return parts, counts


@dataclass
class Collated:
    """Padded tensors of a list of samples: prompts left-padded, completions right-padded."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    position_ids: torch.Tensor
    completion_mask: torch.Tensor
    behaviour_logps: torch.Tensor
    advantages: torch.Tensor
    stale: torch.Tensor
    prompt_len: int

    @property
    def completion_start(self) -> int:
        return self.prompt_len


def collate(
    samples: list[Sample], pad_id: int, device: torch.device | str = "cpu", weights: list[float] | None = None
) -> Collated:
    """Pad ``samples`` into tensors. ``weights`` (0/1 per sample) zero the mask of padding samples."""
    p = max(len(s.prompt_ids) for s in samples)
    c = max(len(s.completion_ids) for s in samples)
    b = len(samples)
    ids = torch.full((b, p + c), pad_id, dtype=torch.long)
    att = torch.zeros((b, p + c), dtype=torch.long)
    cmask = torch.zeros((b, c), dtype=torch.float32)
    blogp = torch.zeros((b, c), dtype=torch.float32)
    for i, s in enumerate(samples):
        lp, lc = len(s.prompt_ids), len(s.completion_ids)
        ids[i, p - lp : p] = torch.tensor(s.prompt_ids)
        ids[i, p : p + lc] = torch.tensor(s.completion_ids)
        att[i, p - lp : p + lc] = 1
        cmask[i, :lc] = 1.0 if weights is None else float(weights[i])
        if s.loss_mask is not None:  # a tool's observation: forwarded, never trained
            cmask[i, :lc] *= torch.tensor(s.loss_mask, dtype=torch.float32)
        blogp[i, :lc] = torch.tensor(s.behaviour_logps)
    pos = (att.cumsum(-1) - 1).clamp(min=0)
    adv = torch.tensor([s.advantage for s in samples], dtype=torch.float32)
    stale = torch.tensor([s.stale for s in samples], dtype=torch.bool)
    return Collated(
        ids.to(device),
        att.to(device),
        pos.to(device),
        cmask.to(device),
        blogp.to(device),
        adv.to(device),
        stale.to(device),
        p,
    )


def shard(
    samples: list[Sample], rank: int, world: int, micro_batch: int
) -> tuple[list[list[Sample]], list[list[float]]]:
    """This rank's micro-batches of ``samples`` and their 0/1 weights.

    Every rank gets the same number of micro-batches of the same sizes (ZeRO reduces gradients in
    each backward, so ranks must run the same number of them): the sample list is padded with
    zero-weight copies of its first sample up to a multiple of ``world``.
    """
    n = len(samples)
    per_rank = math.ceil(n / world)
    padded = list(samples) + [samples[0]] * (per_rank * world - n)
    weights = [1.0] * n + [0.0] * (per_rank * world - n)
    mine = padded[rank::world]
    mine_w = weights[rank::world]
    mbs = [mine[i : i + micro_batch] for i in range(0, per_rank, micro_batch)]
    mws = [mine_w[i : i + micro_batch] for i in range(0, per_rank, micro_batch)]
    return mbs, mws


@dataclass
class Packed:
    """Samples that share a prompt, one row per prompt: ``prompt, completion 1, completion 2, ...``.

    The attention mask (:meth:`block_mask`, built from ``segments`` on demand) is block-causal (``[R, 1, L, L]``
    bool, True = may attend): each completion sees the whole prompt and its own past, never another completion;
    positions restart at the prompt length for every completion. So every completion's logprobs are what a row of
    its own would give, while the prompt is forwarded once per row instead of once per completion.
    ``row``/``index`` say where the logits that predict completion token ``j`` of sample ``i`` sit (``index[i, 0]``
    is the prompt's last position). The per-sample tensors are ``[B, C]`` as in :class:`Collated`.
    """

    input_ids: torch.Tensor
    segments: torch.Tensor
    """``[R, L]``: 0 for the prompt, ``k`` for the row's ``k``-th completion, -1 for padding."""
    position_ids: torch.Tensor
    row: torch.Tensor
    index: torch.Tensor
    completion_ids: torch.Tensor
    completion_mask: torch.Tensor
    behaviour_logps: torch.Tensor
    advantages: torch.Tensor
    stale: torch.Tensor
    min_prompt_len: int
    tokens: int
    """Tokens forwarded for weighted samples (each row's prompt once, plus their completions)."""
    spans: list[tuple[int, list[tuple[int, int]]]]
    """Per row: the prompt's length and each completion's ``(start, length)`` (:mod:`learner.attention`)."""

    def block_mask(self) -> torch.Tensor:
        """The ``[R, 1, L, L]`` bool block-causal mask (``L**2`` a row: built only for a model that reads it)."""
        seg = self.segments
        q = torch.arange(seg.size(1), device=seg.device)
        causal = q.unsqueeze(1) >= q.unsqueeze(0)  # [query, key]
        return (causal & ((seg.unsqueeze(1) == 0) | (seg.unsqueeze(2) == seg.unsqueeze(1)))).unsqueeze(1)


def pack_shared(
    samples: list[Sample], pad_id: int, device: torch.device | str = "cpu", weights: list[float] | None = None
) -> Packed:
    """Pack ``samples`` into one row per distinct prompt (see :class:`Packed`); sample order is kept."""
    weights = [1.0] * len(samples) if weights is None else weights
    rows: dict[tuple, list[int]] = {}
    for i, s in enumerate(samples):
        rows.setdefault(tuple(s.prompt_ids), []).append(i)
    lengths = [len(p) + sum(len(samples[i].completion_ids) for i in idx) for p, idx in rows.items()]
    n_rows, width = len(rows), max(lengths)
    c = max(len(s.completion_ids) for s in samples)
    ids = torch.full((n_rows, width), pad_id, dtype=torch.long)
    pos = torch.zeros((n_rows, width), dtype=torch.long)
    seg = torch.full((n_rows, width), -1, dtype=torch.long)  # 0 prompt, k>0 completion k, -1 padding
    row = torch.zeros(len(samples), dtype=torch.long)
    index = torch.zeros((len(samples), c), dtype=torch.long)
    cids = torch.full((len(samples), c), pad_id, dtype=torch.long)
    cmask = torch.zeros((len(samples), c), dtype=torch.float32)
    blogp = torch.zeros((len(samples), c), dtype=torch.float32)
    tokens = 0
    spans = []
    for r, (prompt, idx) in enumerate(rows.items()):
        p = len(prompt)
        ids[r, :p] = torch.tensor(prompt)
        pos[r, :p] = torch.arange(p)
        seg[r, :p] = 0
        start = p
        spans.append((p, []))
        tokens += p if any(weights[i] for i in idx) else 0
        for k, i in enumerate(idx, start=1):
            s, n = samples[i], len(samples[i].completion_ids)
            ids[r, start : start + n] = torch.tensor(s.completion_ids)
            pos[r, start : start + n] = torch.arange(p, p + n)
            seg[r, start : start + n] = k
            row[i] = r
            index[i, :] = p - 1
            index[i, 1:n] = torch.arange(start, start + n - 1)
            cids[i, :n] = torch.tensor(s.completion_ids)
            cmask[i, :n] = float(weights[i])
            if s.loss_mask is not None:  # a tool's observation: forwarded, never trained
                cmask[i, :n] *= torch.tensor(s.loss_mask, dtype=torch.float32)
            blogp[i, :n] = torch.tensor(s.behaviour_logps)
            tokens += n if weights[i] else 0
            spans[-1][1].append((start, n))
            start += n
    return Packed(
        ids.to(device),
        seg.to(device),
        pos.to(device),
        row.to(device),
        index.to(device),
        cids.to(device),
        cmask.to(device),
        blogp.to(device),
        torch.tensor([s.advantage for s in samples], dtype=torch.float32).to(device),
        torch.tensor([s.stale for s in samples], dtype=torch.bool).to(device),
        min(len(p) for p in rows),
        tokens,
        spans,
    )


SEED_STRIDE = 4096
"""Seeds of two requests are at least this far apart. vLLM seeds sample k of a prompt with ``seed + k`` and the
actor offsets prompt i of a request by ``i * n`` (``actor.engine``), so a request uses ``[seed, seed + prompts
x n)``: consecutive bases (``seed`` and ``seed + 1``) would share all but one of their G random streams."""
SEED_SLOTS = 256
"""Seed slots per step: train prompt j (0-63), re-request attempt a of prompt k (64 + 32a + k, a < 4),
eval chunk i (192 + i), the probe (255)."""


def rollout_seed(seed: int, step: int, slot: int) -> int:
    """The sampling seed of one request: ``SEED_STRIDE`` apart for every (step, slot) of a run, a 31-bit int.

    >>> [rollout_seed(42, 0, j) - rollout_seed(42, 0, 0) for j in range(3)]
    [0, 4096, 8192]
    >>> rollout_seed(42, 1, 0) - rollout_seed(42, 0, SEED_SLOTS - 1)
    4096
    """
    return ((seed * 7919 + step) * SEED_SLOTS + slot % SEED_SLOTS) * SEED_STRIDE % 2**31


def rollout_request(cfg, kind: str, items: list[PromptItem], n: int, temperature: float, max_tokens: int,
                    seed: int, request_id: str, min_version: int, step: int, max_turns: int | None = None):
    """The :class:`sync.wire.RolloutRequest` the learner sends for ``items``: chat prompts, ``n`` samples each;
    ``actor.top_p`` for training only; with ``actor.score_rewards`` the prompts' reference columns go along
    (``meta["columns"]``), so the actor scores exactly as the learner would. With ``tools`` configured, the prompts'
    tasks and ``max_turns`` (default ``episode.max_turns``) go along too: the actor runs a tool task's prompts as
    episodes (``actor.episodes``)."""
    from sync.wire import RolloutRequest, SamplingSpec

    top_p = cfg.actor.top_p if kind == "train" else 1.0
    meta = {"kind": kind, "step": step}
    if cfg.actor.score_rewards:
        meta["columns"] = [it.columns for it in items]
    if cfg.tools:
        meta["tasks"] = [it.task for it in items]
        meta["max_turns"] = cfg.episode.max_turns if max_turns is None else max_turns
    return RolloutRequest(
        request_id=request_id,
        prompts=[it.messages for it in items],
        sampling=SamplingSpec(n=n, temperature=temperature, top_p=top_p, max_tokens=max_tokens, seed=seed),
        min_version=max(min_version, 0),
        meta=meta,
    )
