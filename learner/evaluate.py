"""Talking to the actors outside the training batch: the request broker, the eval, the logprob probe.

* :class:`Broker` (rank 0) submits requests and collects groups by request id, so train, eval and
  probe requests can be in flight together and arrive in any order.
* :func:`evaluate`: the fixed, task-stratified eval subset goes to the actors with
  ``min_version = current version`` (the learner publishes first), ``cfg.eval.samples`` completions per
  prompt at ``cfg.eval.temperature`` with a fixed seed (the same sample every eval);
  ``eval/mean_reward`` is over all prompts, ``eval/<task>`` per task, ``eval/<task>/<component>`` each of the
  reward's components (its mean over the prompts where it applies: which part moved), ``eval_se/...`` the
  standard errors over the prompts (the noise band), and the
  best mean so far with its step (the handoff's eval_best) is kept as ``eval/best_mean_reward`` /
  ``eval/best_step``. A missing completion scores 0.
* :func:`probe`: one completion of a fixed prompt at the training temperature, scored by the learner
  at the same temperature on the same token ids; ``sync/logprob_gap`` is the mean absolute difference
  of per-token logprobs (``_max`` the largest). With the same weights on both sides it is numerical
  noise (1e-6 in float32); a sync that silently failed shows up as a large gap, and it is a gate: a gap beyond
  ``sync.max_logprob_gap`` (by precision, :func:`max_logprob_gap`) with the actor at the learner's version stops
  the run in one line naming the actor. It backs the readback (``actor.readback``, which checks weights) with
  what the engine samples: it sees a request routed to another adapter, model, tokenizer or sampler.

``python -m learner.evaluate --config C --adapter A [--adapter B ...] [--base]`` runs this eval outside a run, for
adapters side by side through a real actor: :mod:`learner.eval_cli`.
"""

from __future__ import annotations

if __name__ == "__main__":  # the CLI: parsed before torch loads; this module is then imported under its own name
    import sys

    from learner.eval_cli import main

    sys.exit(main())

import math
import time

import torch

from configs.device import engine_dtype
from learner.data import per_task_means
from learner.episodes import answer
from learner.rollouts import Sample, collate, group_versions, rollout_seed
from sync.runs import expand
from sync.limits import MAX_PROMPTS_PER_REQUEST


class LearnerError(RuntimeError):
    """A condition that ends the run with one clear line (exit code 1)."""


class Interrupted(LearnerError):
    """SIGTERM arrived while waiting for rollouts (e.g. Ctrl-C on the launcher, which stops the actors
    too): the trainer checkpoints the steps it completed and ends instead of waiting for groups that
    will not come."""


class Broker:
    """Rank 0's view of the rollout transport: submit, then collect groups by request id.

    Groups for unknown request ids (e.g. answers to a previous incarnation of the learner) are
    dropped. If no group at all arrives for ``timeout_s`` the run fails with :class:`LearnerError`
    naming the live actors (the transport itself re-sends requests of dead actors). ``stop()``, checked
    every second while waiting, raises :class:`Interrupted` when true.
    """

    def __init__(self, transport, timeout_s: float, stop=None):
        self.transport = transport
        self.timeout_s = timeout_s
        self.stop = stop
        self.done: dict = {}
        self.items: dict = {}

    def submit(self, req, items) -> None:
        self.items[req.request_id] = items
        self.transport.submit(req)

    def wait(self, ids: list[str]) -> tuple[list, float, float, float]:
        """Groups for ``ids`` (with their items), seconds waited, actor tokens and generation seconds."""
        t0 = time.perf_counter()
        last = t0
        while any(i not in self.done for i in ids):
            if self.stop is not None and self.stop():
                raise Interrupted("SIGTERM while waiting for rollouts")
            g = self.transport.receive(timeout_s=1.0)
            now = time.perf_counter()
            if g is None:
                if now - last > self.timeout_s:
                    alive = list(self.transport.actors())
                    raise LearnerError(
                        f"no rollouts for {now - last:.0f} s (live actors: {alive or 'none'}); "
                        "are the actors running and connected?"
                    )
                continue
            last = now
            if g.request_id in self.items:
                self.done[g.request_id] = g
        out, toks, gen = [], 0.0, 0.0
        for i in ids:
            g = self.done.pop(i)
            out.append((g, self.items.pop(i)))
            toks += sum(c.sampled for r in g.results for c in r.completions)
            gen += float(g.timings.get("generate_s", 0.0))
        return out, time.perf_counter() - t0, toks, gen


def probe(tr) -> dict:
    """Actor vs learner logprobs on a fixed prompt at the current version (collective over ranks)."""
    cfg = tr.cfg
    payload = None
    if tr.is_main:
        rid = tr._request(
            "probe",
            [tr.probe_item],
            1,
            cfg.temperature,
            cfg.max_completion_length if tr.probe_item.task in cfg.tools else min(32, cfg.max_completion_length),
            seed=rollout_seed(cfg.seed, 0, 255),
            tag=f"v{tr.version}-{tr.step}",
            min_version=tr.published,
        )
        try:
            grp = tr.broker.wait([rid])[0][0][0]
        except Interrupted:  # the trainer sees its SIGTERM flag after this step
            grp = None
        comps = grp.results[0].completions if grp is not None and grp.results else []
        if comps:
            oldest, newest = group_versions(grp)  # an actor may load a version while the probe runs (inflight)
            payload = (grp.results[0].prompt_token_ids, comps[0].token_ids, comps[0].logprobs, oldest,
                       grp.actor_id, oldest == newest, expand(comps[0].loss_mask, len(comps[0].token_ids), 1))
    payload = tr._bcast(payload)
    if payload is None or not payload[1]:
        return {}
    prompt_ids, comp_ids, actor_lp, actor_version, actor_id, one_version, bits = payload
    s = Sample(list(prompt_ids), list(comp_ids), list(actor_lp), 0.0, 0.0, actor_version, False)
    b = collate([s], tr.policy.tokenizer.pad_token_id, tr.policy.device)
    lp = tr.policy.completion_logps(b, cfg.temperature, grad=False).float().cpu()[0]
    sampled = torch.tensor(bits, dtype=torch.bool)  # a tool episode's observations were not sampled: not compared
    diff = (lp - torch.tensor(actor_lp))[sampled].abs()
    gap, limit = float(diff.mean()), max_logprob_gap(cfg, tr.policy)
    if tr.is_main and one_version and actor_version == tr.version and gap > limit and tr.stop_reason is None:
        tr.stop_reason = (
            f"sync failed: actor {actor_id} serves v{actor_version} with logprobs {gap:.4f} per token apart from the "
            f"learner's on the probe prompt (> sync.max_logprob_gap {limit}): the engine samples from another policy "
            "than the one trained (a request on another adapter, another model, tokenizer or sampler)"
        )
    return {
        "sync/logprob_gap": float(diff.mean()),
        "sync/logprob_gap_max": float(diff.max()),
        "sync/probe_version": float(actor_version),
    }


def max_logprob_gap(cfg, policy) -> float:
    """The probe gate's limit: ``sync.max_logprob_gap``, or by the two sides' precision (float32 on both: 0.01,
    else 0.1). The actor's ``auto`` dtype is resolved by ``configs.device.engine_dtype``, on the learner's
    kind of device (actors and learner share the node's hardware)."""
    if cfg.sync.max_logprob_gap is not None:
        return cfg.sync.max_logprob_gap
    actor = engine_dtype(cfg.actor.dtype, policy.device.type == "cuda")
    return 0.01 if actor == "float32" and policy.dtype == torch.float32 else 0.1


def standard_errors(rewards: list[float], tasks: list[str]) -> dict[str, float]:
    """``eval_se/<task>`` and ``eval_se/mean_reward``: the standard error of each eval mean over its prompts
    (sample std / sqrt(n); a prompt's score is the mean of its ``eval.samples`` completions), the noise band
    the report draws around the eval curves.

    >>> standard_errors([0.0, 1.0, 0.5, 0.5], ["push", "push", "sql_qa", "sql_qa"])
    {'eval_se/mean_reward': 0.204124, 'eval_se/push': 0.5, 'eval_se/sql_qa': 0.0}
    """
    def se(v: list[float]) -> float:
        if len(v) < 2:
            return 0.0
        mean = sum(v) / len(v)
        return round(math.sqrt(sum((x - mean) ** 2 for x in v) / (len(v) - 1) / len(v)), 6)

    by: dict[str, list[float]] = {}
    for r, t in zip(rewards, tasks, strict=True):
        by.setdefault(t or "all", []).append(r)
    return {"eval_se/mean_reward": se(rewards), **{f"eval_se/{t}": se(v) for t, v in sorted(by.items())}}


def evaluate(tr, chunk: int = MAX_PROMPTS_PER_REQUEST) -> dict:
    """The eval subset through the actors at the current version (rank 0). With tools, the tool tasks' prompts are
    evaluated a second time at ``max_turns`` 1 on the same adapter (``episode.eval_single_turn``): ``eval_single/*``."""
    cfg = tr.cfg
    if not tr.eval_items:
        return {}
    version = tr.rollout_version  # the current version (publish_weights off: the one the actors serve)
    single = [it for it in tr.eval_items if it.task in cfg.tools] if cfg.episode.eval_single_turn else []
    passes = [("eval", tr.eval_items, None)] + ([("eval_single", single, 1)] if single else [])
    ids = {
        name: [
            tr._request(
                "eval",
                items[i : i + chunk],
                cfg.eval.samples,
                cfg.eval.temperature,
                cfg.max_completion_length,
                seed=rollout_seed(cfg.seed, 0, 192 + i // chunk),  # the same sample every eval: comparable
                tag=f"s{tr.step}-{i}" + ("" if turns is None else f"-t{turns}"),
                min_version=version,
                **({} if turns is None else {"max_turns": turns}),
            )
            for i in range(0, len(items), chunk)
        ]
        for name, items, turns in passes
    }
    m: dict = {}
    waited = 0.0
    for name, _, _ in passes:
        groups, w, _, _ = tr.broker.wait(ids[name])
        waited += w
        m.update(_eval_metrics(tr, groups, version, name))
    m["perf/eval_s"] = waited
    mean = m.get("eval/mean_reward")
    if mean is not None and (tr.best is None or mean > tr.best[0]):
        tr.best = (mean, tr.step)
        m["_new_best"] = 1.0
    if tr.best is not None:
        m["eval/best_mean_reward"], m["eval/best_step"] = tr.best[0], float(tr.best[1])
    return m


def _eval_metrics(tr, groups, version: int, prefix: str) -> dict:
    """``<prefix>/<task>``, components and standard errors of one eval pass's groups. A tool episode is scored on
    its final answer with the episode's columns (``learner.episodes.answer``)."""
    cfg = tr.cfg
    rewards, tasks = [], []
    comps: dict[str, list[float]] = {}  # "<task>/<component>" -> one mean per prompt
    for grp, items in groups:
        if grp.version < version:
            tr.log.write(f"eval: actor {grp.actor_id} answered at version {grp.version} < {version}")
        scores = [0.0] * len(items)  # a prompt without an answer scores 0
        flat = [(k, c) for k, res in enumerate(grp.results[: len(items)]) for c in res.completions]
        if flat:
            keys = {key for k, _ in flat for key in items[k].columns}  # aligned: None where a row lacks a column
            cols = {key: [items[k].columns.get(key) for k, _ in flat] for key in sorted(keys)}
            for key in {key for _, c in flat for key in c.columns()}:  # a tool episode's own columns
                cols[key] = [c.columns().get(key) for _, c in flat]
            texts, prompts = [answer(c) for _, c in flat], [items[k].messages for k, _ in flat]
            scored = tr.reward_fn.score(texts, prompts=prompts, **cols) if hasattr(tr.reward_fn, "score") else None
            got = [s.reward for s in scored] if scored is not None else tr.reward_fn(texts, prompts=prompts, **cols)
            per: dict[int, list[float]] = {}
            per_comp: dict[tuple[int, str], list[float]] = {}
            for j, ((k, _), r) in enumerate(zip(flat, got, strict=True)):
                per.setdefault(k, []).append(float(r) if r is not None and math.isfinite(r) else 0.0)
                for name, v in (scored[j].components.items() if scored is not None else ()):
                    per_comp.setdefault((k, f"{scored[j].task}/{name}"), []).append(float(v))
            for k, vals in per.items():
                scores[k] = sum(vals) / cfg.eval.samples  # a missing completion counts 0
            for (_, key), vals in per_comp.items():
                comps.setdefault(key, []).append(sum(vals) / len(vals))
        rewards += scores
        tasks += [it.task for it in items]
    m = per_task_means(rewards, tasks, prefix)
    m.update({f"{prefix}/{key}": sum(v) / len(v) for key, v in sorted(comps.items())})  # <prefix>/<task>/<component>
    se = standard_errors(rewards, tasks)
    m.update({k.replace("eval_se/", f"{prefix}_se/", 1) if prefix != "eval" else k: v for k, v in se.items()})
    return m
