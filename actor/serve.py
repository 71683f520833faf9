"""The actor's serve loop: one thread drives the endpoint and the engine, step by step.

Each turn of the loop:

1. take what the endpoint has (``poll`` with no wait while the engine has work, else a short wait):
   requests, the newest verified weight update, or a Shutdown;
2. if a weight update is waiting, load it and acknowledge. ``actor.load_mode: inflight`` (default): at once,
   between two engine steps, with the requests in flight running on (``RolloutEngine.load_adapter``: in adapter
   mode they finish on their adapter, in merged mode each token records the version that sampled it).
   ``drain``: admit nothing new, keep stepping until the requests in flight are done, then load (one version
   per sequence; the engine idles through the longest completion);
3. admit every waiting request into the engine (vLLM batches all of them in each step), unless a drain is on;
4. run one engine step and send the groups it completed;
5. every ``sync.heartbeat_s``: refresh the heartbeat (version, queue, in flight, tokens/s) and log.

``min_version`` is held by the endpoint: it surfaces a request only once the actor serves that version
(and the newest the learner announced). Shutdown (the message, SIGTERM or SIGINT): stop taking
requests, finish those in flight within ``grace_s`` (their groups are sent), leave the rest unanswered
(the learner's transport re-sends a silent actor's requests to others), close the engine and check
its processes are gone.

A load that fails because the actor is going away is not acknowledged: a refusal (ok=False) tells the
learner its weights are bad and stops the run, while an actor that leaves is a lost actor, restarted by
its launcher. That covers a stop already requested (Slurm signals every process of a step at once, so
EngineCore may shut down under a load in progress) and an engine that stopped or died on its own (the
actor then exits with the error, non-zero).

Rewards: with ``actor.score_rewards`` the actor scores each group after generation (pure Python,
``rewards.make_reward``) and sends them in ``RolloutGroup.rewards``; per-prompt reward columns come in
``RolloutRequest.meta["columns"]`` (one dict per prompt). Off by default: the learner scores.
"""

from __future__ import annotations

import logging
import signal
import time
from collections import deque

from sync import Heartbeat, ReceivedWeights, RolloutGroup, RolloutRequest, Shutdown, WeightAck

from actor.engine import RolloutEngine

log = logging.getLogger("actor")


class ThroughputMeter:
    """Generated tokens per second over a sliding window of completed requests."""

    def __init__(self, window_s: float = 30.0):
        self.window_s = window_s
        self._events: deque = deque()

    def add(self, tokens: int, now: float | None = None) -> None:
        self._events.append((time.monotonic() if now is None else now, tokens))

    def rate(self, now: float | None = None) -> float:
        now = time.monotonic() if now is None else now
        while self._events and now - self._events[0][0] > self.window_s:
            self._events.popleft()
        if not self._events:
            return 0.0
        span = max(now - self._events[0][0], 1.0)
        return sum(t for _, t in self._events) / span


def make_scorer(cfg):
    """The reward function when ``actor.score_rewards`` is on and ``rewards`` imports, else None."""
    if not cfg.actor.score_rewards:
        return None
    try:
        import rewards
    except ImportError as e:
        log.warning("actor.score_rewards is on but the rewards package is unavailable (%s); "
                    "the learner scores", e)
        return None
    kwargs = cfg.rewards.reward_kwargs()
    if cfg.rewards.toy_token:
        kwargs["toy_token"] = cfg.rewards.toy_token
    db = cfg.data.db_path if cfg.data.db_path and cfg.data.db_path.is_file() else None
    return rewards.make_reward(db, **kwargs)


def score_group(fn, req: RolloutRequest, results) -> list[list[float]]:
    """Per prompt, per completion rewards; columns of prompt i are ``meta["columns"][i]``."""
    cols = req.meta.get("columns") or [{}] * len(results)
    out = []
    for i, res in enumerate(results):
        texts = [c.answer for c in res.completions]  # a tool episode's final answer (sync.wire.Completion.answer)
        prompt = req.prompts[i]
        kw = {k: [v] * len(texts) for k, v in (cols[i] if i < len(cols) else {}).items()}
        for k in (res.completions[0].columns() if res.completions else {}):  # the episodes' own columns
            kw[k] = [c.columns().get(k) for c in res.completions]
        out.append([float(x) for x in fn(texts, prompts=[prompt] * len(texts), **kw)])
    return out


def engine_gone(e: BaseException) -> bool:
    """Whether ``e`` says vLLM's EngineCore is dead or shutting down (not that the adapter was bad).

    >>> from vllm.v1.engine.exceptions import EngineDeadError
    >>> engine_gone(EngineDeadError()), engine_gone(Exception("Server shutting down"))
    (True, True)
    >>> engine_gone(ValueError("adapter file hashes to ab12, expected cd34"))
    False
    >>> from actor.loading import AdapterLoadError
    >>> try:
    ...     try:
    ...         raise EngineDeadError()
    ...     except EngineDeadError as dead:
    ...         raise AdapterLoadError("v3 from /x: engine died") from dead
    ... except AdapterLoadError as wrapped:
    ...     engine_gone(wrapped)
    True
    """
    from vllm.v1.engine.exceptions import EngineDeadError

    # The engine's error may arrive wrapped (``AdapterLoadError ... from e`` in actor.engine): walk the chain.
    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        # "Server shutting down": the failure EngineCore returns for a utility call (add_lora,
        # collective_rpc, reset_prefix_cache) once its shutdown began (vllm/v1/engine/core.py).
        if isinstance(e, EngineDeadError) or str(e) == "Server shutting down":
            return True
        e = e.__cause__ or (None if e.__suppress_context__ else e.__context__)
    return False


class ActorServer:
    """Serve rollouts from ``engine`` to the learner behind ``endpoint`` until shut down."""

    def __init__(self, cfg, engine: RolloutEngine, endpoint, actor_id: str, *, grace_s: float = 30.0,
                 idle_poll_s: float = 0.05, log_every_s: float = 10.0, scorer=None):
        self.cfg = cfg
        self.engine = engine
        self.endpoint = endpoint
        self.actor_id = actor_id
        self.grace_s = grace_s
        self.idle_poll_s = idle_poll_s
        self.log_every_s = log_every_s
        self.scorer = scorer
        self.inflight = cfg.actor.load_mode == "inflight"
        self.waiting: deque[RolloutRequest] = deque()   # polled, not yet admitted (a load is pending)
        self.requests: dict[str, RolloutRequest] = {}   # admitted, by request id
        self.weights: ReceivedWeights | None = None
        self._weights_at = 0.0  # when the waiting version arrived (perf_counter)
        self.stop_reason: str | None = None
        self.meter = ThroughputMeter()
        self.groups_sent = 0
        self.loads = 0
        self._hb_due = 0.0
        self._log_due = time.monotonic() + log_every_s

    # ------------------------------------------------------------------ control
    def request_stop(self, reason: str) -> None:
        if self.stop_reason is None:
            self.stop_reason = reason
            log.info("actor %s: stopping (%s); %d requests in flight, %d waiting", self.actor_id, reason,
                     self.engine.in_flight, len(self.waiting))

    def install_signal_handlers(self) -> None:
        def handler(signum, _frame):
            self.request_stop(signal.Signals(signum).name)

        signal.signal(signal.SIGTERM, handler)
        signal.signal(signal.SIGINT, handler)

    # ------------------------------------------------------------------ loop
    def run(self) -> str:
        """Serve until a Shutdown or a signal; returns the reason."""
        while self.stop_reason is None:
            self._take(0.0 if self.engine.in_flight else self.idle_poll_s)
            if self.stop_reason is not None:
                break
            if self.weights is not None and (self.inflight or not self.engine.in_flight):
                self._load(self.weights)
                self.weights = None
            if self.weights is None:
                while self.waiting:
                    self._admit(self.waiting.popleft())
            self._step()
            self._tick()
        self._finish()
        return self.stop_reason

    def _take(self, wait_s: float) -> None:
        """Everything the endpoint has now (waiting up to ``wait_s`` for the first item)."""
        item = self.endpoint.poll(wait_s)
        while item is not None:
            if isinstance(item, Shutdown):
                self.request_stop(f"shutdown: {item.reason}")
                return
            if isinstance(item, ReceivedWeights):
                if self.weights is not None:
                    log.info("actor %s: v%d superseded by v%d before loading", self.actor_id,
                             self.weights.version, item.version)
                else:
                    self._weights_at = time.perf_counter()
                self.weights = item
            elif isinstance(item, RolloutRequest):
                if self.weights is None and not self.waiting:
                    self._admit(item)
                else:
                    self.waiting.append(item)
            item = self.endpoint.poll(0.0)

    def _admit(self, req: RolloutRequest) -> None:
        try:
            self.engine.submit(req.request_id, req.prompts, req.sampling,
                               ignore_eos=bool(req.meta.get("ignore_eos", False)), tasks=req.meta.get("tasks"),
                               max_turns=req.meta.get("max_turns"))
        except Exception as e:  # a request the engine cannot take (too long, bad tokens): answer empty
            log.error("actor %s: request %s refused: %s", self.actor_id, req.request_id, e)
            self.endpoint.send_group(RolloutGroup(req.request_id, self.actor_id, self.engine.version, [],
                                                  {"error": 1.0}, None, {**req.meta, "error": str(e)[:300]},
                                                  req.learner))
            return
        self.requests[req.request_id] = req

    def _step(self) -> None:
        for key, results, stats in self.engine.step():
            req = self.requests.pop(key)
            stats = dict(stats)
            rewards = None
            if self.scorer is not None:
                t0 = time.perf_counter()
                try:
                    rewards = score_group(self.scorer, req, results)
                except Exception as e:  # the learner scores what the actor could not
                    log.warning("actor %s: scoring %s failed: %s", self.actor_id, key, e)
                stats["reward_s"] = time.perf_counter() - t0
            meta = {k: v for k, v in req.meta.items() if k != "columns"}  # the learner has its columns
            version = int(stats.pop("version"))
            self.endpoint.send_group(RolloutGroup(req.request_id, self.actor_id, version, results, stats,
                                                  rewards, meta, req.learner))
            self.meter.add(int(stats["gen_tokens"]))
            self.groups_sent += 1

    def _load(self, w: ReceivedWeights) -> None:
        t0 = time.perf_counter()
        held_s, running = (t0 - self._weights_at if self._weights_at else 0.0), self.engine.in_flight
        try:
            fingerprint = self.engine.load_adapter(w.version, w.adapter_dir, expect_checksum=w.checksum)
            ok, error = True, None
        except Exception as e:  # keep serving the previous version
            if self.stop_reason is not None:
                log.warning("actor %s: v%d not loaded, the actor is stopping (%s): %s", self.actor_id,
                            w.version, self.stop_reason, e)
                return
            if engine_gone(e):
                raise RuntimeError(f"actor {self.actor_id}: the engine stopped while loading v{w.version}: "
                                   f"{type(e).__name__}: {e}") from e
            fingerprint, ok, error = "", False, f"{type(e).__name__}: {e}"[:500]
        load_s = time.perf_counter() - t0
        if ok:
            self.loads += 1
            log.info("actor %s: serving v%d (loaded in %.3fs%s, read back on %d rank(s) in %.3fs: delta cosine %.6f)",
                     self.actor_id, w.version, load_s,
                     (f" with {running} requests in flight"
                      + (f", engine paused {1e3 * self.engine.pause_s:.0f} ms" if self.engine.mode == "merged" else ""))
                     if running else "",
                     self.engine.readback.get("ranks", 0), self.engine.readback.get("seconds", 0.0),
                     self.engine.delta_cosine)
        else:
            log.error("actor %s: v%d not loaded, still serving v%d: %s", self.actor_id, w.version,
                      self.engine.version, error)
        from actor.readback import describe

        cosine = self.engine.delta_cosine if ok else None
        detail = describe(self.engine.readback) if ok else ""
        self.endpoint.send_ack(WeightAck(self.actor_id, w.version, ok, load_s, fingerprint or w.checksum,
                                         error, w.learner, cosine, detail, running, held_s))
        self._hb_due = 0.0

    def heartbeat(self) -> Heartbeat:
        return Heartbeat(self.actor_id, self.engine.version, len(self.waiting), self.engine.in_flight,
                         self.meter.rate())

    def _tick(self) -> None:
        now = time.monotonic()
        if now >= self._hb_due:
            self.endpoint.heartbeat(self.heartbeat())
            self._hb_due = now + self.cfg.sync.heartbeat_s
        if now >= self._log_due:
            hb = self.heartbeat()
            log.info("actor %s: v%d queue=%d in_flight=%d tokens/s=%.1f groups=%d", self.actor_id, hb.version,
                     hb.queue_depth, hb.in_flight, hb.tokens_per_s, self.groups_sent)
            self._log_due = now + self.log_every_s

    def _finish(self) -> None:
        """Finish what is in flight (up to ``grace_s``); requests not started stay unanswered."""
        deadline = time.monotonic() + self.grace_s
        while self.engine.in_flight and time.monotonic() < deadline:
            try:
                self._step()
            except Exception as e:  # EngineCore got the stop signal too and is gone: nothing will finish
                if not engine_gone(e):
                    raise
                log.warning("actor %s: the engine stopped with %d requests in flight (%s); the learner re-sends them",
                            self.actor_id, self.engine.in_flight, type(e).__name__)
                break
            self._tick()
        if self.engine.in_flight:
            log.warning("actor %s: %d requests unfinished after %.0fs grace; the learner re-sends them",
                        self.actor_id, self.engine.in_flight, self.grace_s)
            self.engine.abort_all()
        if self.waiting:
            log.info("actor %s: %d requests not started; the learner re-sends them", self.actor_id,
                     len(self.waiting))
