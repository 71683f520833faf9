"""RolloutEngine: one vLLM engine, the policy version it serves, and G-sample rollouts.

The engine is the synchronous ``vllm.LLM`` driven one step at a time (``LLM.enqueue`` then
``llm_engine.step()``, exactly what ``LLM.generate`` does internally), so the serve loop can take new
requests, send heartbeats and answer a shutdown between steps while vLLM batches every request in
flight. ``generate`` is the blocking convenience on top.

Versions, and how a new one is loaded (merged or adapter serving; drain or in flight): :mod:`actor.loading`,
which :class:`RolloutEngine` inherits.

Tool episodes (``RunConfig.tools``, a request's ``meta["tasks"]`` and ``meta["max_turns"]`` > 1): a tool prompt's
completions run as episodes of several turns with the calls in a worker pool beside generation
(``actor.episodes``); a request stays in flight until all its episodes ended. Without tools nothing changes.

Text is decoded once from the final token ids (``detokenize=False`` in the engine): vLLM's incremental
detokenizer drops a trailing partial UTF-8 character, so its text could disagree with the ids the
learner trains on and the reward must score the same thing.

Logprobs are vLLM's ``processed_logprobs``: the log-probability of each sampled token under the
distribution actually sampled from (temperature and top-p applied), which is what an importance ratio
needs. TRL's vLLM path returns raw model logprobs instead.
"""

from __future__ import annotations

import gc
import itertools
import logging
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from configs.device import engine_dtype
from sync.prompts import encode_prompt

from actor.engine_args import engine_kwargs
from actor.loading import VersionLoading
from actor.outputs import prompt_result
from actor.runtime import (child_pids, configure_cpu_env, cpu_core_list, device_problem, inline_engine_env, on_gpu,
                           private_rpc_dir, reap, release_inline_engine, serve_mode)
from actor.versions import LoraVersions

log = logging.getLogger("actor.engine")


@dataclass
class _Pending:
    """One submitted rollout request: its vLLM requests in flight (id -> prompt slot), results filled per prompt as
    they finish (a tool prompt's once all its episodes ended, ``actor.episodes``)."""

    key: object
    version: int
    """The version served when it was admitted: every token's version is this or newer."""
    submitted: float
    results: list = field(default_factory=list)
    left: int = 0
    gen_tokens: int = 0
    lora_id: int | None = None
    """The adapter it runs on (adapter mode), held until it finishes."""
    lora: object = None
    rids: dict = field(default_factory=dict)
    tool_s: float = 0.0
    tool_idle_s: float = 0.0
    sampling: object = None
    ignore_eos: bool = False
    max_turns: int = 1


class RolloutEngine(VersionLoading):
    """One vLLM engine serving one policy version at a time (see the module docstring)."""

    def __init__(self, cfg, replica: int = 0, *, delete_retired: bool = True, seed: int | None = None):
        from vllm import LLM

        self.cfg = cfg
        self.replica = replica
        self.delete_retired = delete_retired
        if (problem := device_problem(cfg)) is not None:
            raise RuntimeError(problem)
        self.gpu = on_gpu()
        self.dtype = engine_dtype(cfg.actor.dtype, self.gpu)
        self.mode = serve_mode(cfg.actor.serve_mode, self.dtype)
        self.load_mode = cfg.actor.load_mode
        self.inline = cfg.actor.inline_engine
        if not self.gpu:
            configure_cpu_env(cfg.actor.cpu_threads, replica, cfg.actor.tensor_parallel_size)
            if self.inline:  # no worker process to bind: this process's threads run the model, on the same cores
                import torch

                cores = cpu_core_list(cfg.actor.cpu_threads, replica)
                os.sched_setaffinity(0, cores)
                torch.set_num_threads(len(cores))
        self._rpc_env = os.environ.get("VLLM_RPC_BASE_PATH")
        self.rpc_dir = private_rpc_dir()  # vLLM's own ipc sockets: private, and removed on close
        kwargs = engine_kwargs(cfg, gpu=self.gpu, dtype=self.dtype, mode=self.mode,
                               seed=cfg.seed + replica if seed is None else seed)
        self.engine_kwargs = kwargs
        t0 = time.perf_counter()
        before = child_pids()
        import torch

        self._set_num_threads = torch.set_num_threads  # vLLM's CPU worker replaces it in the process it runs in
        with inline_engine_env(self.inline):
            self.llm = LLM(**kwargs)
        self.engine_pids = sorted(child_pids() - before)   # EngineCore process(es) this engine spawned (none inline)
        from actor.shm import engine_segments

        self.engine_segments = engine_segments(self.engine_pids)  # released at close (actor.shm)
        from actor.core_watch import CoreWatch

        self._watch = None if self.inline else CoreWatch.attach(self.llm)  # a dead EngineCore fails its waiters
        self.start_s = time.perf_counter() - t0
        self.tokenizer = self.llm.get_tokenizer()
        self._version = -1  # the base weights; the learner's first version is 0
        self.llm.llm_engine.set_weight_version(str(self._version))   # the label each step's tokens carry
        self._fingerprint = "base"
        self._delta_cosine = 1.0
        self.readback: dict = {}               # the last load's readback (actor.readback.combine)
        self._lora = None                       # LoRARequest of the served version (adapter mode)
        self._stale = None                      # the previous one, under the test fault actor.loading.STALE_FAULT_ENV
        self.loras = LoraVersions(self.llm.llm_engine, cfg.lora_slots, own_dirs=delete_retired)
        self._next_lora_id = 1
        self._merged_dir: Path | None = None
        self._salt: str | None = None           # cache_salt of prompts submitted now (merged mode: one per load)
        self._loads = itertools.count(1)
        self.pause_s = 0.0                       # the last in-flight load's scheduler pause (merged mode)
        self._pending: dict[str, _Pending] = {}  # vLLM request id -> its request
        self._by_key: dict[object, _Pending] = {}
        self._done: list[_Pending] = []
        self._ids = itertools.count()
        self.generated_tokens = 0               # lifetime counters, for metrics
        self.completed_requests = 0
        self.episodes = None                     # the tool episodes (actor.episodes), with RunConfig.tools
        if cfg.tools:
            from actor.episodes import EpisodeRunner

            try:
                self.episodes = EpisodeRunner(self)
            except BaseException:  # a tool that does not load (rewards.tools): no engine left behind
                self.close()
                raise
        log.info("engine ready in %.1fs (%s mode, %s, %s%s)", self.start_s, self.mode, self.dtype,
                 "GPU" if self.gpu else "CPU", ", inline" if self.inline else "")

    # ----------------------------------------------------------------------------- versions (the rest: actor.loading)
    def channel_limits(self):
        """What this actor's sockets accept (:mod:`sync.limits`), with the adapter's size from the model."""
        from sync.limits import ChannelLimits

        return ChannelLimits.for_run(self.cfg, self.llm.llm_engine.model_config.hf_config.get_text_config())

    def versions_in_flight(self) -> dict[int, int]:
        """Admitted version -> requests in flight admitted under it."""
        out: dict[int, int] = {}
        for p in self._by_key.values():
            out[p.version] = out.get(p.version, 0) + 1
        return out

    # ----------------------------------------------------------------------------- rollouts
    def encode_prompt(self, prompt) -> list[int]:
        return encode_prompt(self.tokenizer, prompt)

    def sampling_params(self, sampling, prompt_index: int = 0, ignore_eos: bool = False):
        from vllm import SamplingParams

        seed = None if sampling.seed is None else int(sampling.seed) + prompt_index * int(sampling.n)
        # flat_logprobs: vLLM keeps a request's logprobs in flat lists instead of a dict and a Logprob object per
        # token (its output processor's per-token cost on the host, 15 us a token here), and _prompt_result takes
        # the sampled tokens' logprobs as one list.
        return SamplingParams(n=int(sampling.n), temperature=float(sampling.temperature),
                              top_p=float(sampling.top_p), max_tokens=int(sampling.max_tokens), seed=seed,
                              logprobs=0, ignore_eos=ignore_eos, detokenize=False, flat_logprobs=True)

    def submit(self, key, prompts: list, sampling, ignore_eos: bool = False, tasks: list | None = None,
               max_turns: int | None = None) -> None:
        """Queue one request (all its prompts, ``sampling.n`` samples each) under ``key``. ``tasks`` (one per prompt)
        and ``max_turns``: a prompt of a task with tools (``RunConfig.tools``) at ``max_turns`` > 1 runs as
        ``sampling.n`` tool episodes (``actor.episodes``); the others exactly as without them."""
        from vllm.inputs import TokensPrompt
        from vllm.sampling_params import RequestOutputKind

        if key in self._by_key:
            raise ValueError(f"request {key!r} is already in flight")
        if not prompts:
            raise ValueError("a request needs at least one prompt")
        if tasks is not None and (not isinstance(tasks, list) or len(tasks) != len(prompts)):
            raise ValueError(f"meta tasks must list one task per prompt ({len(prompts)})")
        tools = [None] * len(prompts)
        if tasks is not None and self.episodes is not None:
            tools = [self.episodes.tools_for(t, max_turns) for t in tasks]
            prompts = [self.episodes.messages(p, ts, max_turns) if ts else p for p, ts in zip(prompts, tools,
                                                                                                strict=True)]
        salt = {"cache_salt": self._salt} if self._salt is not None else {}
        prompt_ids = [self.encode_prompt(p) for p in prompts]
        lora = self._stale or self._lora
        p = _Pending(key=key, version=self._version, submitted=time.perf_counter(), results=[None] * len(prompts),
                     left=len(prompts), lora_id=None if lora is None else lora.lora_int_id, lora=lora)
        try:
            for i, ids in enumerate(prompt_ids):
                if tools[i]:
                    self.episodes.start(p, i, ids, tools[i], sampling, i, ignore_eos, max_turns)
                    continue
                sp = self.sampling_params(sampling, i, ignore_eos)
                sp.output_kind = RequestOutputKind.FINAL_ONLY   # as LLM.generate: whole outputs only
                self._add(p, i, TokensPrompt(prompt_token_ids=ids, **salt), sp)
        except Exception:
            if p.rids:
                self.llm.llm_engine.abort_request(list(p.rids))
            for rid in p.rids:
                self._pending.pop(rid, None)
            if self.episodes is not None:
                self.episodes.drop(p)
            raise
        self.loras.acquire(p.lora_id)
        self._by_key[key] = p

    def _add(self, p: _Pending, slot: int, prompt, params) -> str:
        """One vLLM request of ``p`` for its prompt ``slot``, on ``p``'s adapter; returns its id."""
        rid = f"r{next(self._ids)}"
        self.llm.llm_engine.add_request(rid, prompt, params, lora_request=p.lora)
        p.rids[rid] = slot
        self._pending[rid] = p
        return rid

    def prompt_done(self, p: _Pending, slot: int, result) -> None:
        """Prompt ``slot`` of ``p`` has its result; ``p`` is done (returned by the next :meth:`step`) with its last."""
        p.results[slot] = result
        p.gen_tokens += sum(c.sampled for c in result.completions)
        p.left -= 1
        if p.left == 0:
            self._done.append(p)

    @property
    def in_flight(self) -> int:
        """Requests submitted and not yet complete."""
        return len(self._by_key)

    def step(self) -> list[tuple[object, list, dict]]:
        """One engine step; returns ``(key, prompt results, stats)`` for each request it completed. With tool
        episodes waiting on their calls and nothing else to run, it waits for a call instead (``tool_idle_s``)."""
        eps = self.episodes
        if eps is not None:
            eps.poll()
        if self._pending:
            for out in self.llm.llm_engine.step():
                if not out.finished:
                    continue
                p = self._pending.pop(out.request_id, None)
                if p is None:
                    continue
                slot = p.rids.pop(out.request_id)
                if eps is not None and eps.owns(out.request_id):
                    eps.on_turn(out)
                else:
                    self.prompt_done(p, slot, self._prompt_result(out, p.version))
        elif eps is not None and eps.waiting:
            eps.wait_idle()
        done = []
        for p in self._done:
            del self._by_key[p.key]
            self.loras.release(p.lora_id)
            self.generated_tokens += p.gen_tokens
            self.completed_requests += 1
            stats = {"generate_s": time.perf_counter() - p.submitted, "gen_tokens": float(p.gen_tokens),
                     "version": float(p.version)}
            if p.max_turns > 1:
                stats.update(tool_s=p.tool_s, tool_idle_s=p.tool_idle_s)
            done.append((p.key, p.results, stats))
        self._done = []
        return done

    def abort_all(self) -> list:
        """Drop every request in flight (shutdown); returns their keys."""
        keys = list(self._by_key)
        if self._pending:
            self.llm.llm_engine.abort_request(list(self._pending))
        held = [p.lora_id for p in self._by_key.values()]
        if self.episodes is not None:
            for p in self._by_key.values():
                self.episodes.drop(p)
        self._pending.clear()
        self._by_key.clear()
        self._done = []
        for lid in held:
            self.loras.release(lid)
        return keys

    def generate(self, prompts: list, sampling, ignore_eos: bool = False, **episode) -> tuple[list, dict]:
        """Blocking: ``sampling.n`` samples for each prompt -> (list of PromptResult, stats); ``episode``: ``tasks``
        and ``max_turns`` as :meth:`submit`."""
        key = object()
        self.submit(key, prompts, sampling, ignore_eos, **episode)
        while True:
            for k, results, stats in self.step():
                if k is key:
                    return results, stats

    def _prompt_result(self, out, version: int):
        """One prompt's finished completions (:func:`actor.outputs.prompt_result`)."""
        return prompt_result(out, version, self.mode == "merged", self.tokenizer)

    # ----------------------------------------------------------------------------- lifecycle
    def close(self) -> None:
        """Shut the engine down and wait for its EngineCore process(es) to exit."""
        llm = getattr(self, "llm", None)
        if llm is None:
            return
        try:
            self.abort_all()
        except Exception as e:  # noqa: BLE001 - a dead EngineCore: nothing left to abort, the rest still runs
            log.warning("engine shutdown: abort: %s", e)
        if self.episodes is not None:
            self.episodes.close()
        self.loras.close()
        if self._merged_dir is not None:
            self._retire_dir(self._merged_dir)
        if getattr(self, "_watch", None) is not None:
            self._watch.stop()
        try:
            engine = llm.llm_engine
            core = getattr(engine, "engine_core", None)
            if core is not None and hasattr(core, "shutdown"):
                core.shutdown()
        except Exception as e:  # noqa: BLE001 - best effort, the process check below is what counts
            log.warning("engine shutdown: %s", e)
        self.llm = None
        del llm
        gc.collect()
        if self.inline:
            release_inline_engine(self._set_num_threads)
        left = reap(self.engine_pids)
        if left:
            log.warning("engine processes %s survived shutdown", left)
        else:  # vLLM's shared-memory queues between them, which a signalled EngineCore leaves behind
            from actor.shm import release_segments

            release_segments(self.engine_segments)
        for pid in set(self.engine_pids) - set(left):   # Intel OpenMP's per-process files, left by signalled workers
            for f in Path("/dev/shm").glob(f"__KMP_REGISTERED_LIB_{pid}_*"):
                f.unlink(missing_ok=True)
        shutil.rmtree(self.rpc_dir, ignore_errors=True)
        if os.environ.get("VLLM_RPC_BASE_PATH") == str(self.rpc_dir):  # children started later must not inherit it
            if self._rpc_env is None:
                os.environ.pop("VLLM_RPC_BASE_PATH")
            else:
                os.environ["VLLM_RPC_BASE_PATH"] = self._rpc_env
