"""The GRPO training loop: drives the actors, trains the LoRA adapter, publishes it, evaluates, watches.

One step (``step`` counts loop iterations up to ``max_steps``; ``version`` counts optimizer updates
and is the policy version the actors serve):

1. keep the rollout pipeline full: batches for steps ``step .. step + max_staleness`` are requested
   (one :class:`RolloutRequest` per prompt, ``n = num_generations``, ``min_version`` = last published;
   prompts go as chat messages, the actor applies the chat template, and the prompt and completion
   token ids it returns are trained on as they are, with no re-tokenisation);
2. wait for this step's groups (``perf/generation_wait_s``); groups older than ``max_staleness``
   versions are dropped, counted and re-requested at the current version;
3. refusals, rewards, advantages (:mod:`learner.rollouts`), broadcast to every rank, micro-batched
   forward/backward of the loss (:mod:`learner.loss`) and one optimizer step; ``version += 1``;
4. publish the adapter (every ``publish_every`` updates), request the next batches at once (at the new
   version; an actor starts on them as soon as it has loaded it) and check every actor's acknowledgement
   (``sync.wait_for_acks``: now; else right after the next publication, so an actor may lag one).
   A :class:`sync.SyncError` stops the run (after a checkpoint) with one clear line instead of
   training against stale weights;
5. probe (actor vs learner logprobs on a fixed prompt), eval, metrics, watchdog, checkpoint.

Rank 0 owns the transports, data, rewards, eval and logging; other ranks only train.

Ablation ``sync.publish_weights: false``: the learner publishes only the first version (v0, the initial
adapter) and never again, so the actors keep sampling from it; every rollout is then treated as on-policy
(its version is the served one: no staleness drop, no re-request, no importance-sampling correction) and
the eval asks for the served version. The policy still trains on those rollouts; what it cannot do is
improve its own samples, which is what the end-to-end learning proof compares against.

SIGTERM (e.g. Ctrl-C on the launcher, which stops the actors at the same time) ends the run after the
current step with a checkpoint; arriving while the learner waits for rollouts, it ends the wait (see
:class:`learner.evaluate.Interrupted`) and checkpoints the steps completed so far.

Resume: a checkpoint stores the sampler as it was *before* the first untrained step's prompts were
drawn, so a resumed run asks for the same prompts again; batches that were in flight are generated
afresh at the resumed version (with ``max_staleness: 0`` the resumed run is step-for-step the same).
"""

from __future__ import annotations

import signal
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from learner import checkpoint as ckpt
from learner.data import load_items, make_reward_fn, stratified_subset
from learner.evaluate import Broker, Interrupted, LearnerError, evaluate, probe
from learner.loss import policy_loss
from learner.rollouts import StepBatch, build_batch, collate, pack_shared, shard
from learner.sampler import EpochSampler
from learner.watchdog import Watchdog


@dataclass
class TrainResult:
    steps: int
    version: int
    stopped: str | None
    run_dir: Path
    best_mean_reward: float | None
    best_step: int | None


class Trainer:
    """``Trainer(cfg, transport, publisher).run()``; transports are used on rank 0 only (pass None
    elsewhere). ``reward_fn`` defaults to :func:`learner.data.make_reward_fn`."""

    def __init__(
        self,
        cfg,
        transport=None,
        publisher=None,
        *,
        resume: bool = False,
        reward_fn=None,
        policy=None,
        train_items=None,
        eval_items=None,
    ):
        from learner.engine import PolicyEngine
        from learner.metrics import MetricsLogger

        self.cfg = cfg
        self.run_dir = Path(cfg.run_dir or "runs/run")
        init_adapter = cfg.init_adapter
        if init_adapter is None and cfg.sft.enabled:
            init_adapter = self.run_dir / "sft" / "adapter"
            if not (init_adapter / "adapter_config.json").exists():
                raise LearnerError(
                    f"sft.enabled but no SFT adapter at {init_adapter}: run "
                    "`python -m learner.sft --config ...` first"
                )
        self.policy = policy or PolicyEngine(cfg, init_adapter=init_adapter)
        self.rank, self.world = self.policy.rank, self.policy.world
        self.is_main = self.rank == 0
        self.transport, self.publisher = transport, publisher
        if cfg.beta != 0:
            raise LearnerError("beta > 0 (KL to a reference model) is not implemented; Dr. GRPO runs beta 0")
        if cfg.learner.publish_every - 1 > cfg.sync.max_staleness:
            raise LearnerError(
                f"learner.publish_every ({cfg.learner.publish_every}) - 1 exceeds "
                f"sync.max_staleness ({cfg.sync.max_staleness}): every rollout would be stale"
            )
        self.publish_weights = bool(getattr(cfg.sync, "publish_weights", True))
        self.step = 0
        self.version = 0
        self.published = -1
        self.unacked: int | None = None
        self.best: tuple[float, int] | None = None
        self.totals: dict[str, int] = {}
        self.stop_reason: str | None = None
        self._sigterm = False
        self.watchdog = Watchdog(cfg.watchdog, cfg.max_completion_length)
        if self.is_main:
            if transport is None or publisher is None:
                raise LearnerError("rank 0 needs a rollout transport and a weight publisher")
            self.train_items = (
                train_items if train_items is not None else load_items(cfg.data.train_pairs, cfg.data.tasks)
            )
            eval_all = (
                eval_items
                if eval_items is not None
                else (
                    load_items(cfg.data.eval_pairs, cfg.data.tasks)
                    if cfg.eval.every or cfg.eval.at_start
                    else []
                )
            )
            self.eval_items = stratified_subset(eval_all, cfg.eval.subset_size, cfg.seed)
            self.probe_item = (self.eval_items or self.train_items)[0]
            self.reward_fn = reward_fn or make_reward_fn(cfg)
            self.sampler = EpochSampler(len(self.train_items), cfg.seed)
            self.broker = Broker(transport, cfg.sync.request_timeout_s * 3, stop=lambda: self._sigterm)
        self.sampler_snapshots: dict[int, dict] = {}
        self.pending: dict[int, list[str]] = {}
        self.next_submit = 0
        resume_step = 0
        if resume:
            resume_step = self._resume()
        self.log = MetricsLogger(
            cfg, self.run_dir, enabled=self.is_main, resume_step=resume_step, total=cfg.max_steps
        )

    # ------------------------------------------------------------------------------------ helpers
    def _bcast(self, obj):
        if self.world == 1:
            return obj
        import torch.distributed as dist

        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    @property
    def rollout_version(self) -> int:
        """The version rollouts are judged against: the learner's own, or with ``publish_weights``
        off the one the actors serve (the only one published), so every rollout counts as on-policy."""
        return self.version if self.publish_weights else max(self.published, 0)

    def _state(self) -> dict:
        snap = self.sampler_snapshots.get(self.step)
        if snap is None and self.is_main:
            snap = self.sampler.state_dict()
        return {
            "step": self.step,
            "version": self.version,
            "sampler": snap,
            "watchdog": self.watchdog.state_dict(),
            "best": list(self.best) if self.best else None,
            "totals": self.totals,
            "published": self.published,
        }

    def _resume(self) -> int:
        path = ckpt.latest_checkpoint(self.run_dir)
        if path is None:
            raise LearnerError(f"--resume: no checkpoint under {self.run_dir / ckpt.CKPT_DIR}")
        state = ckpt.load(self.policy, path)
        self.step, self.version = state["step"], state["version"]
        self.next_submit = self.step
        self.watchdog.load_state_dict(state["watchdog"])
        self.best = tuple(state["best"]) if state["best"] else None
        self.totals = dict(state["totals"])
        if self.is_main and state["sampler"] is not None:
            self.sampler.load_state_dict(state["sampler"])
        return self.step

    def checkpoint(self) -> Path:
        return ckpt.save(
            self.policy, self.run_dir, self.step, self._state(), self.cfg.learner.keep_checkpoints
        )

    # ------------------------------------------------------------------------------------ actors
    def _request(
        self,
        kind: str,
        items,
        n: int,
        temperature: float,
        max_tokens: int,
        seed: int,
        tag: str,
        min_version: int,
    ):
        from sync.wire import RolloutRequest, SamplingSpec

        top_p = self.cfg.actor.top_p if kind == "train" else 1.0
        req = RolloutRequest(
            request_id=f"{kind}-{tag}",
            prompts=[it.messages for it in items],
            sampling=SamplingSpec(
                n=n, temperature=temperature, top_p=top_p, max_tokens=max_tokens, seed=seed
            ),
            min_version=max(min_version, 0),
            meta={"kind": kind, "step": self.step},
        )
        self.broker.submit(req, items)
        return req.request_id

    def _fill_pipeline(self) -> None:
        cfg = self.cfg
        last = min(self.step + cfg.sync.max_staleness, cfg.max_steps - 1)
        while self.next_submit <= last:
            s = self.next_submit
            self.sampler_snapshots[s] = self.sampler.state_dict()
            idx = self.sampler.take(cfg.prompts_per_step * cfg.grad_accum)
            self.pending[s] = [
                self._request(
                    "train",
                    [self.train_items[i]],
                    cfg.num_generations,
                    cfg.temperature,
                    cfg.max_completion_length,
                    seed=cfg.seed * 100003 + s * 101 + j,
                    tag=f"s{s}-p{j}",
                    min_version=self.published,
                )
                for j, i in enumerate(idx)
            ]
            self.next_submit += 1

    def _collect(self) -> tuple[StepBatch, dict]:
        """This step's batch (rank 0), re-requesting stale groups at the current version."""
        cfg = self.cfg
        ids = self.pending.pop(self.step)
        batch, waited, toks, gen = StepBatch(), 0.0, 0.0, 0.0
        for attempt in range(4):
            groups, w, t, g = self.broker.wait(ids)
            waited, toks, gen = waited + w, toks + t, gen + g
            current = self.rollout_version
            stale_items = [
                items
                for grp, items in groups
                if grp.version > current or current - grp.version > cfg.sync.max_staleness
            ]
            batch = build_batch(
                groups,
                self.reward_fn,
                current_version=current,
                max_staleness=cfg.sync.max_staleness,
                vocab_size=self.policy.vocab_size,
                scale_rewards=cfg.scale_rewards,
                max_completion_length=cfg.max_completion_length,
                batch=batch,
            )
            if not stale_items or attempt == 3:
                break
            ids = [
                self._request(
                    "train",
                    items,
                    cfg.num_generations,
                    cfg.temperature,
                    cfg.max_completion_length,
                    seed=cfg.seed * 100003 + self.step * 101 + 50 + attempt * 7 + k,
                    tag=f"s{self.step}-r{attempt}-{k}",
                    min_version=self.published,
                )
                for k, items in enumerate(stale_items)
            ]
        return batch, {"perf/generation_wait_s": waited, "_actor_tokens": toks, "_actor_gen_s": gen}

    def _publish(self) -> float:
        """Publish the current version; check acknowledgements. Returns seconds spent."""
        t0 = time.perf_counter()
        tensors = self.policy.lora_tensors()
        if not self.is_main:
            return 0.0
        from sync import SyncError

        try:
            self.publisher.publish(self.version, tensors, self.policy.adapter_config())
            self.published = self.version
            # Ask for the next batches before waiting for acks: an actor finds them queued (gated on this
            # version) the moment it has loaded it, instead of idling until the learner comes round.
            self._fill_pipeline()
            stop = lambda: self._sigterm  # noqa: E731
            if self.cfg.sync.wait_for_acks:
                self.publisher.wait_acks(self.version, self.cfg.sync.ack_timeout_s, stop=stop)
            else:
                # Not blocking on this version: the previous one must be acknowledged by now (an actor
                # may lag one publication; staleness checks cover what it generates meanwhile).
                if self.unacked is not None:
                    self.publisher.wait_acks(self.unacked, self.cfg.sync.ack_timeout_s, stop=stop)
                self.unacked = self.version
        except SyncError as e:  # on SIGTERM the wait was cut short: an ordinary stop, with a checkpoint
            self.stop_reason = "SIGTERM" if self._sigterm else f"sync failed: {e}"
        return time.perf_counter() - t0

    # ------------------------------------------------------------------------------------ training
    def _train(self, samples_payload) -> dict:
        """Forward/backward over this rank's share and one optimizer step (collective)."""
        samples, num_tokens = samples_payload
        t0 = time.perf_counter()
        fb = forward_backward(self.policy, self.cfg, samples, num_tokens)
        grad_norm = self.policy.step()
        dt = time.perf_counter() - t0
        stats = torch.tensor(
            [fb.loss, fb.clipped, fb.tokens, fb.truncated, fb.ratio_sum, float(fb.learner_tokens)],
            dtype=torch.float64,
        )
        if self.world > 1:
            import torch.distributed as dist

            dist.all_reduce(stats)
        loss_sum, clip, toks, trunc, ratio_sum, learner_tokens = stats.tolist()
        return {
            "train/loss": loss_sum / self.world,
            "train/grad_norm": grad_norm,
            "train/clip_ratio": clip / max(toks, 1.0),
            "train/tis_truncated_ratio": trunc / max(toks, 1.0),
            "train/ratio_mean": ratio_sum / max(toks, 1.0),
            "perf/learner_tokens_per_s": learner_tokens / dt,
            "perf/train_s": dt,
        }

    def _batch_metrics(self, batch: StepBatch, lr: float) -> dict:
        m: dict = {}
        flat = [r for g in batch.rewards for r in g]
        if flat:
            m["train/reward"] = sum(flat) / len(flat)
            stds = [statistics.stdev(g) for g in batch.rewards]
            m["train/reward_std"] = sum(stds) / len(stds)
            m["train/frac_reward_zero_std"] = sum(1 for s in stds if s < 1e-6) / len(stds)
            per: dict[str, list[float]] = {}
            for g, t in zip(batch.rewards, batch.tasks, strict=True):
                per.setdefault(t or "all", []).extend(g)
            for t, v in sorted(per.items()):
                m[f"train/rewards/{t}/mean"] = sum(v) / len(v)
            for name, v in sorted(batch.components.items()):
                m[f"train/rewards/{name}/mean"] = sum(v) / len(v)
        if batch.completion_lengths:
            lens = batch.completion_lengths
            m["train/completion_length"] = sum(lens) / len(lens)
            m["train/completion_length_min"] = float(min(lens))
            m["train/completion_length_max"] = float(max(lens))
            m["train/clipped_ratio"] = sum(s.truncated for s in batch.samples) / len(batch.samples)
        m["train/staleness"] = (sum(batch.staleness) / len(batch.staleness)) if batch.staleness else 0.0
        m["train/kl"] = 0.0
        m["train/learning_rate"] = lr
        snap = self.sampler_snapshots.get(self.step)  # drawn before the first untrained step = trained
        m["train/coverage"] = len(snap["seen"]) / snap["size"] if snap else self.sampler.coverage
        for s in [s for s in self.sampler_snapshots if s < self.step]:
            del self.sampler_snapshots[s]
        m["train/completions"] = float(len(batch.samples))
        for key in (
            "dropped_stale",
            "refused_version",
            "refused_empty",
            "refused_vocab",
            "refused_logprobs",
            "refused_shape",
            "skipped_nan_reward",
            "skipped_small_group",
        ):
            v = batch.counts.get(key, 0)
            self.totals[key] = self.totals.get(key, 0) + v
            m[f"train/{key}"] = float(v)
        return m

    # ------------------------------------------------------------------------------------ probe / eval
    def _probe(self) -> dict:
        return probe(self)

    def _eval(self) -> dict:
        try:
            return evaluate(self)
        except Interrupted:
            self.stop_reason = self.stop_reason or "SIGTERM"
            return {}

    # ------------------------------------------------------------------------------------ the loop
    def _emit(self, metrics: dict) -> None:
        """Log a metric line and feed the watchdog (rank 0)."""
        metrics = {k: v for k, v in metrics.items() if not k.startswith("_")}
        self.log.log(self.step, metrics)
        for trig in self.watchdog.observe(self.step, metrics):
            self.log.write(trig.message)
            self.log.log(
                self.step,
                {
                    **trig.as_metrics(),
                    "watchdog/rule": trig.rule,
                    "watchdog/metric": trig.metric,
                    "watchdog/action": trig.action,
                    "watchdog/values": trig.values,
                },
            )
            if trig.action == "stop":
                self.stop_reason = f"watchdog rule {trig.rule}"

    def _on_sigterm(self, signum, frame) -> None:  # noqa: ARG002
        self._sigterm = True

    def run(self, stop_after: int | None = None) -> TrainResult:
        """Train to ``max_steps`` (or for ``stop_after`` steps in this process, then checkpoint and
        return as on SIGTERM: a time-boxed job continues with ``--resume``)."""
        old = signal.signal(signal.SIGTERM, self._on_sigterm) if self._main_thread() else None
        try:
            return self._run(stop_after)
        finally:
            if old is not None:
                signal.signal(signal.SIGTERM, old)
            self.log.close()

    @staticmethod
    def _main_thread() -> bool:
        import threading

        return threading.current_thread() is threading.main_thread()

    def _run(self, stop_after: int | None) -> TrainResult:
        cfg = self.cfg
        first_step = self.step
        self.policy.engine.train()
        t_sync = self._publish()
        if self.is_main and self.stop_reason is None:
            self.log.write(
                f"learner: rank 0 of {self.world}, step {self.step}/{cfg.max_steps}, "
                f"version {self.version} published ({t_sync:.2f} s)"
            )
            if cfg.eval.at_start and self.step == 0 and self.eval_items:
                ev = self._eval()
                if ev:
                    self._emit(ev)
                self._new_best = bool(ev.get("_new_best"))
        stop, new_best = self._bcast((self.stop_reason, getattr(self, "_new_best", False)))
        if new_best:
            ckpt.save_adapter_atomic(self.policy, self.run_dir / "best")
        while stop is None and self.step < cfg.max_steps:
            t_step = time.perf_counter()
            payload, pre = None, {}
            if self.is_main:
                try:
                    self._fill_pipeline()
                    batch, pre = self._collect()
                    samples = batch.samples
                    payload = ([s for s in samples], float(sum(len(s.completion_ids) for s in samples)))
                except Interrupted:
                    payload = "interrupted"
            payload = self._bcast(payload)
            if payload == "interrupted":  # SIGTERM while waiting: keep the completed steps, end
                stop = self.stop_reason = self.stop_reason or "SIGTERM"
                self.checkpoint()
                break
            m: dict = {}
            if payload[0]:
                m.update(self._train(payload))
                self.version += 1
            else:
                m["train/skipped_step"] = 1.0
            self.step += 1
            m["perf/sync_s"] = 0.0
            eval_now = bool(cfg.eval.every) and self.step % cfg.eval.every == 0
            publish_now = self.version % cfg.learner.publish_every == 0 or eval_now
            if payload[0] and self.publish_weights and publish_now:
                m["perf/sync_s"] = self._publish()  # eval runs at the current version: publish first
            probe_now = cfg.learner.probe_every and self.step % cfg.learner.probe_every == 0
            if probe_now and self._bcast(self.stop_reason) is None:
                m.update(self._probe())
            if self.is_main:
                m.update(self._batch_metrics(batch, self.policy.learning_rate))
                m.update({k: v for k, v in pre.items() if not k.startswith("_")})
                m["perf/actor_tokens_per_s"] = (
                    pre["_actor_tokens"] / pre["_actor_gen_s"]
                    if pre["_actor_gen_s"]
                    else _heartbeat_tps(self.transport)
                )
                m["train/version"] = float(self.version)
                if eval_now and self.stop_reason is None:
                    m.update(self._eval())
                m["perf/step_s"] = time.perf_counter() - t_step
                self._emit(m)
                self.log.progress(self.step)
                if self._sigterm:
                    self.stop_reason = self.stop_reason or "SIGTERM"
                if (
                    stop_after is not None
                    and self.step - first_step >= stop_after
                    and self.step < cfg.max_steps
                ):
                    self.stop_reason = self.stop_reason or f"stop_after {stop_after} steps"
            flags = self._bcast((self.stop_reason, bool(m.get("_new_best"))))
            stop, new_best = flags
            if new_best:
                ckpt.save_adapter_atomic(self.policy, self.run_dir / "best")
            if (
                stop is not None
                or self.step % cfg.learner.checkpoint_every == 0
                or self.step == cfg.max_steps
            ):
                self.checkpoint()
        ckpt.save_adapter_atomic(self.policy, self.run_dir / "adapter")
        if self.is_main:
            if stop:
                self.log.write(f"learner: stopped at step {self.step}: {stop}")
            for key, v in sorted(self.totals.items()):
                if v:
                    self.log.write(f"learner: {key} = {v}")
        best = self.best
        return TrainResult(
            self.step, self.version, stop, self.run_dir, best[0] if best else None, best[1] if best else None
        )


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


def forward_backward(policy, cfg, samples, num_tokens: float | None) -> ForwardBackward:
    """This rank's micro-batches of the step's ``samples``: forward, loss, backward (gradients accumulate
    until the last micro-batch; the caller steps the optimizer). Shared by the trainer and the bench."""
    world = policy.world
    mbs, mws = shard(samples, policy.rank, world, cfg.learner.micro_batch_size)
    pad = policy.tokenizer.pad_token_id if policy.tokenizer is not None else 0
    out = ForwardBackward()
    for k, (mb, mw) in enumerate(zip(mbs, mws, strict=True)):
        if cfg.learner.share_prompt:
            batch = pack_shared(mb, pad, policy.device, weights=mw)
            out.learner_tokens += batch.tokens
        else:
            batch = collate(mb, pad, policy.device, weights=mw)
            out.learner_tokens += int(batch.attention_mask[torch.tensor(mw, dtype=torch.bool)].sum())
        logps = policy.completion_logps(batch, cfg.temperature)
        loss, st = policy_loss(
            logps.float(),
            batch.behaviour_logps,
            batch.advantages,
            batch.completion_mask,
            epsilon=cfg.epsilon,
            loss_type=cfg.loss_type,
            max_completion_length=cfg.max_completion_length,
            num_completions=len(samples) / world,
            num_tokens=None if num_tokens is None else num_tokens / world,
            stale=batch.stale,
            tis_cap=cfg.learner.tis_cap,
        )
        policy.backward(loss, boundary=k == len(mbs) - 1)
        out.loss += float(loss.detach())
        out.clipped += st.clipped_tokens
        out.tokens += st.tokens
        out.truncated += st.truncated
        out.ratio_sum += st.ratio_sum
    return out


def _heartbeat_tps(transport) -> float:
    try:
        return float(sum(hb.tokens_per_s for hb in transport.actors().values()))
    except Exception:  # noqa: BLE001 - a metric, never a crash
        return float("nan")
