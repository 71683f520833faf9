"""One step's batch (rank 0): wait for the step's groups, verify their acks, score them, re-request the stale ones,
and with dynamic sampling filter, top up and bank (:mod:`learner.dynamic`); then the step's batch metrics.

Split from :mod:`learner.trainer` (its ``_collect`` and ``_batch_metrics``); ``tr`` is the :class:`Trainer`.
"""

from __future__ import annotations

import statistics
from collections import Counter

from learner.acks import STOPPED
from learner.dynamic import Banked
from learner.evaluate import Interrupted
from learner.episodes import episode_metrics, timing_metrics
from learner.rollouts import StepBatch, merge_batches, out_of_bounds, rollout_seed, score_groups, version_metrics

ROUNDS = 4
"""Waits one step may make: the first, then re-requests of stale groups and top-ups (``dynamic_sampling.max_rounds``
is at most 3 of them)."""


def _score(tr, entries) -> tuple[list[StepBatch], Counter]:
    cfg = tr.cfg
    rw = cfg.rewards
    return score_groups(
        entries,
        tr.reward_fn,
        current_version=tr.rollout_version,
        max_staleness=cfg.sync.max_staleness,
        vocab_size=tr.policy.vocab_size,
        scale_rewards=cfg.scale_rewards,
        max_completion_length=cfg.max_completion_length,
        mask_truncated=cfg.mask_truncated_completions,
        overlong=(rw.overlong_buffer, rw.overlong_penalty) if rw.overlong_buffer else None,
        tol=cfg.dynamic_sampling.tol,
    )


def _oldest(part: StepBatch) -> int:
    return min(s.version for s in part.samples)


def collect(tr) -> tuple[StepBatch, StepBatch, dict]:
    """This step's ``(train, scored, metrics)``: the batch to train on, every group scored this step (before any
    filtering: what ``train/reward`` and ``train/frac_reward_zero_std`` read) and the wait's metrics. Without
    dynamic sampling both batches are the same."""
    cfg = tr.cfg
    ds = tr.dynamic
    ids = tr.pending.pop(tr.step)
    waited, toks, gen = 0.0, 0.0, 0.0
    scored: list[StepBatch] = []
    counts: Counter = Counter()
    pool: list[StepBatch] = []  # informative groups, banked ones first
    dm: dict[str, float] = {}
    if ds is not None:
        sources, expired = ds.unbank(tr.rollout_version)
        parts, c = _score(tr, sources)  # built again at this version, from their cached task rewards
        pool.extend(parts)
        counts.update(c)
        dm = {"dynamic/bank_used": float(len(parts)),
              "dynamic/bank_expired": float(expired + len(sources) - len(parts))}
    requested, dropped, rounds = len(ids), 0, 0
    tools: dict[str, float] = {}  # tools/generate_s, tool_s, tool_idle_s of the groups that ran tool episodes
    for attempt in range(ROUNDS):
        groups, w, t, g = tr.broker.wait(ids)
        tools = timing_metrics(groups, tools)
        rounds += 1
        waited, toks, gen = waited + w, toks + t, gen + g
        reason = tr.acks.verify([grp for grp, _ in groups], stop=lambda: tr._sigterm)
        if reason is not None:  # never trained on: a version whose ack failed, or SIGTERM while waiting
            tr.stop_reason = tr.stop_reason or ("SIGTERM" if reason == STOPPED else reason)
            raise Interrupted(tr.stop_reason)
        current = tr.rollout_version
        stale_items = [items for grp, items in groups if out_of_bounds(grp, current, cfg.sync.max_staleness)]
        parts, c = _score(tr, groups)
        scored.extend(parts)
        counts.update(c)
        for p in parts:
            if ds is not None and p.degenerate[0]:
                dropped += 1
            else:
                pool.append(p)
        more = 0
        if ds is not None and attempt < cfg.dynamic_sampling.max_rounds and len(pool) < ds.need:
            more = ds.topup(ds.need - len(pool), requested)
        if (not stale_items and not more) or attempt == ROUNDS - 1:
            break
        reqs = [(items, f"r{attempt}-{k}") for k, items in enumerate(stale_items)]
        if more:
            reqs += [([tr.train_items[i]], f"t{attempt}-{k}") for k, i in enumerate(tr.sampler.take(more))]
            requested += more
        ids = [
            tr._request("train", items, cfg.num_generations, cfg.temperature, cfg.max_completion_length,
                        seed=rollout_seed(cfg.seed, tr.step, 64 + 32 * attempt + k % 32), tag=f"s{tr.step}-{tag}",
                        min_version=tr.published)
            for k, (items, tag) in enumerate(reqs)
        ]
    pre = {"perf/generation_wait_s": waited, "_actor_tokens": toks, "_actor_gen_s": gen, **tools}
    scored_batch = merge_batches(scored)
    scored_batch.counts.update(counts)
    if ds is None:
        return scored_batch, scored_batch, pre
    train, spare = pool[: ds.need], pool[ds.need:]
    turned_away = ds.deposit([Banked(p.sources[0], _oldest(p)) for p in spare])
    ds.observe(len(scored), sum(1 for p in scored if p.degenerate[0]))
    tr.totals["underfilled_steps"] = tr.totals.get("underfilled_steps", 0) + int(len(train) < ds.need)
    dm.update({
        "dynamic/rounds": float(rounds),
        "dynamic/groups_requested": float(requested),
        "dynamic/groups_scored": float(len(scored)),
        "dynamic/groups_dropped": float(dropped),
        "dynamic/keep_rate": (len(scored) - dropped) / len(scored) if scored else 0.0,
        "dynamic/groups_trained": float(len(train)),
        "dynamic/groups_banked": float(len(ds.bank)),
        "dynamic/bank_turned_away": float(turned_away),
        "dynamic/underfilled": float(len(train) < ds.need),
        "dynamic/underfilled_steps": float(tr.totals["underfilled_steps"]),
        "dynamic/degenerate_share": ds.share(),
    })
    return merge_batches(train), scored_batch, {**pre, **dm}


def batch_metrics(tr, train: StepBatch, scored: StepBatch, lr: float) -> dict:
    """The step's ``train/*`` metrics: rewards, lengths and refusals over the groups scored this step (before any
    filtering), completions, staleness and versions over the trained ones."""
    m: dict = {}
    flat = [r for g in scored.rewards for r in g]
    if flat:
        m["train/reward"] = sum(flat) / len(flat)
        stds = [statistics.stdev(g) for g in scored.rewards]
        m["train/reward_std"] = sum(stds) / len(stds)
        m["train/frac_reward_zero_std"] = sum(1 for s in stds if s < 1e-6) / len(stds)
        per: dict[str, list[float]] = {}
        for g, t in zip(scored.rewards, scored.tasks, strict=True):
            per.setdefault(t or "all", []).extend(g)
        for t, v in sorted(per.items()):
            m[f"train/rewards/{t}/mean"] = sum(v) / len(v)
        for name, v in sorted(scored.components.items()):
            m[f"train/rewards/{name}/mean"] = sum(v) / len(v)
        if scored.task_rewards != scored.rewards:  # the overlong punishment is on: the task reward apart
            task_flat = [r for g in scored.task_rewards for r in g]
            m["train/task_reward"] = sum(task_flat) / len(task_flat)
    if scored.completion_lengths:
        lens = scored.completion_lengths
        m["train/completion_length"] = sum(lens) / len(lens)
        m["train/completion_length_min"] = float(min(lens))
        m["train/completion_length_max"] = float(max(lens))
        m["train/clipped_ratio"] = sum(s.truncated for s in scored.samples) / len(scored.samples)
    m["train/staleness"] = (sum(train.staleness) / len(train.staleness)) if train.staleness else 0.0
    m.update(version_metrics(train))
    m.update(episode_metrics(scored.samples))  # tools/*: {} without tool episodes
    m["train/kl"] = 0.0
    m["train/learning_rate"] = lr
    snap = tr.sampler_snapshots.get(tr.step)  # drawn before the first untrained step = trained
    m["train/coverage"] = len(snap["seen"]) / snap["size"] if snap else tr.sampler.coverage
    for s in [s for s in tr.sampler_snapshots if s < tr.step]:
        del tr.sampler_snapshots[s]
    m["train/completions"] = float(len(train.samples))
    m["train/masked_completions"] = float(sum(1 for s in train.samples if s.masked))
    for key in (
        "dropped_stale",
        "refused_version",
        "refused_empty",
        "refused_vocab",
        "refused_logprobs",
        "refused_mask",
        "refused_shape",
        "skipped_nan_reward",
        "skipped_small_group",
    ):
        v = scored.counts.get(key, 0)
        tr.totals[key] = tr.totals.get(key, 0) + v
        m[f"train/{key}"] = float(v)
    return m
