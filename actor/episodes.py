"""Tool episodes in the engine: a tool-enabled prompt's G completions are episodes of up to ``episode.max_turns`` turns.

Token in, token out. Each of the G episodes is its own vLLM request (n=1, seed ``seed + k``: what vLLM gives the
k-th child of an n=G request, so the first turn samples what a single-turn request would), whose prompt is the
chat-templated prompt with the tools' paragraph in its system message (``commerce.episode``). A turn stops at the
closing tag of a tool (``</sql>``: a stop string, so the request detokenises: ``detokenize=False`` stays on every
request without tools) or at EOS. A call goes to the :class:`rewards.tools.ToolPool`; the engine steps every other
sequence meanwhile. Its result comes back as an observation (``<observation>…</observation>``), tokenised with
special tokens *not* parsed (``split_special_tokens``: a row holding the text ``<|im_end|>`` is plain text) and
checked to hold no added token at all; the next turn is a new request whose prompt is exactly the prompt ids +
every turn's sampled ids + every observation's ids, nothing re-tokenised, and the engine's own echo of that prompt
is checked against the concatenation at every turn (:class:`EpisodeError` otherwise). An episode ends on EOS
(``stop``), on a cut while sampling (``length``: the turn's ``episode.max_turn_tokens`` or the episode's
``max_completion_length``, sampled and observed tokens together), on a call in its last turn (``max_turns``), on an
observation that does not fit or the wall-clock limit ``episode.max_episode_s`` (``budget``) and on a tool that
raised or did not answer in its ``timeout_s`` (``tool_error``). No token is appended that the engine did not sample
except the observations, and no EOS is ever added. A group returns when all its episodes have ended.

What the learner gets: the whole episode as one completion, ``loss_mask`` 0 on the observations (their logprobs are
0.0 placeholders), per-token ``version_runs``, and ``Completion.episode`` (turns, calls, errors, timeouts, cut
observations, the finish reason, where the final answer starts).

Versions. Merged mode: a continuation runs on the weights in force when it is submitted, with the prefix-cache salt
of that load (``actor.loading``), so a later turn may sample under a newer version than an earlier one and never
reuses a block computed under other weights; vLLM's weight-version spans give each sampled token its version, and an
observation takes its neighbour's. Adapter mode: every turn runs on the adapter the episode was admitted under (a
running request keeps its adapter, as for single-turn requests). Drain mode: an episode waiting on a tool keeps its
request in flight (``RolloutEngine.in_flight``), so no version is loaded between two turns of one sequence.
"""

from __future__ import annotations

import concurrent.futures
import logging
import time
from dataclasses import dataclass, field

from rewards.tools import find_call, observation, with_tools

log = logging.getLogger("actor.episodes")


class EpisodeError(RuntimeError):
    """The engine was given (or echoed) a prompt other than the episode's exact token concatenation."""


@dataclass
class _Episode:
    pending: object
    slot: int
    k: int
    prompt_ids: list[int]
    tools: list
    budget: int
    """Tokens of the episode, sampled and observed together."""
    seed: int | None
    started: float
    ids: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    mask: list[int] = field(default_factory=list)
    versions: list[int] = field(default_factory=list)
    last_turn: int = 0
    """Index in ``ids`` where the turn running (or the last) starts."""
    turns: int = 0
    calls: dict = field(default_factory=dict)
    tool_calls: int = 0
    tool_errors: int = 0
    tool_timeouts: int = 0
    truncated: int = 0
    tool_s: float = 0.0
    finish: str | None = None
    future: object = None
    deadline: float = 0.0
    call: tuple = ()
    queued: float = 0.0
    turn_version: int = -1
    """The version served when the running turn was submitted (its tokens' version where vLLM labels none)."""


class EpisodeRunner:
    """The tool episodes of one :class:`actor.engine.RolloutEngine` (see the module docstring)."""

    def __init__(self, engine):
        from rewards.tools import ToolPool, load_tools

        cfg = engine.cfg
        self.engine = engine
        self.cfg = cfg
        self.tools = load_tools(cfg.tools)
        db = cfg.data.db_path if cfg.data.db_path and cfg.data.db_path.is_file() else None
        self.pool = ToolPool(cfg.episode.workers, db, cfg.rewards.sql_timeout_ms, cfg.rewards.sql_max_rows)
        tok = engine.tokenizer
        self.forbidden = set(tok.all_special_ids) | set(getattr(tok, "added_tokens_decoder", {}) or {})
        self.max_model_len = int(engine.llm.llm_engine.model_config.max_model_len)
        self.turn_of: dict[str, _Episode] = {}   # vLLM request id -> the episode whose turn it runs
        self.waiting: list[_Episode] = []         # episodes whose call runs in the pool
        self.groups: dict[tuple[int, int], list[_Episode]] = {}  # (id(pending), slot) -> its G episodes
        self.idle_s = 0.0                         # lifetime: the engine had nothing to step but tool calls
        self.tool_s = 0.0

    # ------------------------------------------------------------------------------------------------ starting
    def tools_for(self, task, max_turns) -> list | None:
        """The tools of a prompt of ``task`` at ``max_turns`` (None: a single-turn prompt)."""
        if not isinstance(task, str) or not isinstance(max_turns, int) or max_turns < 2:
            return None
        return self.tools.get(task) or None

    def messages(self, prompt, tools: list, max_turns: int):
        """The prompt with its tools' paragraph in the system message (a token-id prompt is taken as it is)."""
        from rewards.tools import system_text

        if prompt and isinstance(prompt[0], dict):
            return with_tools(prompt, system_text(tools, max_turns))
        return prompt

    def start(self, pending, slot: int, prompt_ids: list[int], tools: list, sampling, prompt_index: int,
              ignore_eos: bool, max_turns: int) -> None:
        """Submit the first turn of the prompt's ``sampling.n`` episodes."""
        n = int(sampling.n)
        base = None if sampling.seed is None else int(sampling.seed) + prompt_index * n
        now = time.perf_counter()
        eps = [_Episode(pending, slot, k, list(prompt_ids), tools, int(sampling.max_tokens),
                        None if base is None else base + k, now) for k in range(n)]
        self.groups[(id(pending), slot)] = eps
        pending.sampling, pending.ignore_eos, pending.max_turns = sampling, ignore_eos, max_turns
        for ep in eps:
            self._submit_turn(ep)

    def _params(self, ep: _Episode, max_tokens: int):
        from vllm import SamplingParams
        from vllm.sampling_params import RequestOutputKind

        s = ep.pending.sampling
        seed = ep.seed if ep.seed is None or ep.turns == 0 else (ep.seed ^ (ep.turns << 24)) % 2**31
        sp = SamplingParams(n=1, temperature=float(s.temperature), top_p=float(s.top_p), max_tokens=max_tokens,
                            seed=seed, logprobs=0, ignore_eos=ep.pending.ignore_eos, flat_logprobs=True,
                            detokenize=True, stop=[f"</{t.name}>" for t in ep.tools],
                            include_stop_str_in_output=True)
        sp.output_kind = RequestOutputKind.FINAL_ONLY
        return sp

    def _submit_turn(self, ep: _Episode) -> None:
        from vllm.inputs import TokensPrompt

        turn_cap = self.cfg.episode.max_turn_tokens or ep.budget
        room = min(turn_cap, ep.budget - len(ep.ids), self.max_model_len - len(ep.prompt_ids) - len(ep.ids))
        ep.last_turn = len(ep.ids)
        ep.turn_version = self.engine.version if self.engine.mode == "merged" else ep.pending.version
        prompt = ep.prompt_ids + ep.ids
        salt = {"cache_salt": self.engine._salt} if self.engine._salt is not None else {}  # noqa: SLF001
        rid = self.engine._add(ep.pending, ep.slot, TokensPrompt(prompt_token_ids=prompt, **salt),  # noqa: SLF001
                               self._params(ep, room))
        self.turn_of[rid] = ep

    # ------------------------------------------------------------------------------------------------ turns
    def owns(self, rid: str) -> bool:
        return rid in self.turn_of

    def on_turn(self, out) -> None:
        """A turn ended (its vLLM request finished): append what was sampled, then call, continue or end."""
        from actor.outputs import sampled_logprobs
        from actor.versions import token_runs
        from sync.runs import expand

        ep = self.turn_of.pop(out.request_id)
        eng = self.engine
        if list(out.prompt_token_ids) != ep.prompt_ids + ep.ids:
            raise EpisodeError(f"turn {ep.turns + 1}: the engine's prompt is not the prompt + sampled + observed ids")
        c = out.outputs[0]
        ids = list(c.token_ids)
        version = ep.turn_version
        runs = token_runs(c.weight_versions if eng.mode == "merged" else None, len(ids), version)
        ep.ids += ids
        ep.logprobs += sampled_logprobs(ids, c.logprobs)
        ep.mask += [1] * len(ids)
        ep.versions += expand(runs, len(ids), version)
        ep.turns += 1
        if c.finish_reason == "length":
            return self._end(ep, "length")
        stop = c.stop_reason if isinstance(c.stop_reason, str) else None
        names = [t.name for t in ep.tools]
        if stop is None or stop not in {f"</{n}>" for n in names}:
            return self._end(ep, "stop")
        if ep.turns >= ep.pending.max_turns:
            ep.tool_calls += 1
            return self._end(ep, "max_turns")
        if time.perf_counter() - ep.started > self.cfg.episode.max_episode_s:
            return self._end(ep, "budget")
        name, arg = find_call(eng.tokenizer.decode(ids, skip_special_tokens=True), names) or (stop[2:-1], "")
        tool = next(t for t in ep.tools if t.name == name)
        ep.tool_calls += 1
        ep.calls[name] = ep.calls.get(name, 0) + 1
        if ep.calls[name] > tool.spec.max_calls:
            from rewards.tools import ToolResult

            return self._observe(ep, ToolResult(f"erro: limite de {tool.spec.max_calls} chamadas de {name} "
                                                "atingido; responda agora", error=True))
        ep.call, ep.queued = (tool, arg), time.perf_counter()
        ep.deadline = ep.queued + tool.spec.timeout_s
        ep.future = self.pool.submit(tool, arg)
        self.waiting.append(ep)

    def poll(self) -> None:
        """Take every finished call (or one past its deadline) and continue or end its episode."""
        if not self.waiting:
            return
        now = time.perf_counter()
        still = []
        for ep in self.waiting:
            if ep.future.done():
                res = ep.future.result()
                ep.tool_s += now - ep.queued
                if res.failed:
                    ep.tool_errors += 1
                    self._end(ep, "tool_error")
                else:
                    self._observe(ep, res)
            elif now > ep.deadline:
                from rewards.tools import log_timeout

                ep.tool_s += now - ep.queued
                ep.tool_timeouts += 1
                self.pool.overran()
                log_timeout(*ep.call)
                self._end(ep, "tool_error")
            else:
                still.append(ep)
        self.waiting = still

    def wait_idle(self, max_s: float = 0.05) -> None:
        """Nothing for vLLM to step: wait (up to ``max_s``) for a call to finish; the time counts as idle."""
        if not self.waiting:
            return
        t0 = time.perf_counter()
        timeout = max(0.0, min(max_s, min(ep.deadline for ep in self.waiting) - t0))
        concurrent.futures.wait([ep.future for ep in self.waiting], timeout=timeout,
                                return_when=concurrent.futures.FIRST_COMPLETED)
        dt = time.perf_counter() - t0
        self.idle_s += dt
        for p in {id(ep.pending): ep.pending for ep in self.waiting}.values():
            p.tool_idle_s += dt

    def _observe(self, ep: _Episode, res) -> None:
        """Append the observation of ``res`` and submit the next turn, or end the episode when it does not fit."""
        ep.tool_errors += bool(res.error)
        ep.truncated += bool(res.truncated)
        obs = self.tokenize_observation(observation(res.text))
        if (len(ep.ids) + len(obs) >= ep.budget
                or len(ep.prompt_ids) + len(ep.ids) + len(obs) >= self.max_model_len):
            return self._end(ep, "budget")
        ep.ids += obs
        ep.logprobs += [0.0] * len(obs)
        ep.mask += [0] * len(obs)
        ep.versions += [ep.versions[-1]] * len(obs)
        self._submit_turn(ep)

    def tokenize_observation(self, text: str) -> list[int]:
        """``text``'s ids with special tokens not parsed; any added token left (a tokenizer that cannot split them)
        is refused by escaping its ``<`` and tokenising again."""
        tok = self.engine.tokenizer
        ids = tok.encode(text, add_special_tokens=False, split_special_tokens=True)
        if self.forbidden.intersection(ids):
            for t in sorted(getattr(tok, "added_tokens_decoder", {}).values(), key=lambda a: -len(str(a))):
                text = text.replace(str(t), "<\u200b" + str(t)[1:])
            ids = tok.encode(text, add_special_tokens=False, split_special_tokens=True)
            if self.forbidden.intersection(ids):
                raise EpisodeError("an observation tokenises to a special token")
        return ids

    # ------------------------------------------------------------------------------------------------ ending
    def _end(self, ep: _Episode, finish: str) -> None:
        ep.finish = finish
        key = (id(ep.pending), ep.slot)
        eps = self.groups.get(key)
        if eps is None or any(e.finish is None for e in eps):
            return
        del self.groups[key]
        from sync.wire import PromptResult

        comps = [self.completion(e) for e in eps]
        self.tool_s += sum(e.tool_s for e in eps)
        ep.pending.tool_s += sum(e.tool_s for e in eps)
        self.engine.prompt_done(ep.pending, ep.slot, PromptResult(prompt_token_ids=ep.prompt_ids, completions=comps))

    def completion(self, ep: _Episode):
        """The wire's Completion of an ended episode."""
        from sync.runs import encode
        from sync.wire import Completion, Episode

        tok = self.engine.tokenizer
        text = tok.decode(ep.ids, skip_special_tokens=True)
        if ep.finish in ("stop", "length"):
            head = tok.decode(ep.ids[:ep.last_turn], skip_special_tokens=True)
            answer_at = len(head) if text.startswith(head) else len(text) - len(
                tok.decode(ep.ids[ep.last_turn:], skip_special_tokens=True))
        else:
            answer_at = len(text)
        mask = encode(ep.mask) if 0 in ep.mask else []
        return Completion(token_ids=list(ep.ids), logprobs=list(ep.logprobs), text=text, finish_reason=ep.finish,
                          version_runs=encode(ep.versions), loss_mask=mask,
                          episode=Episode(ep.turns, ep.tool_calls, ep.tool_errors, ep.tool_timeouts, ep.truncated,
                                          ep.finish, max(0, answer_at), round(ep.tool_s, 6)))

    def drop(self, pending) -> None:
        """Forget the episodes of ``pending`` (aborted)."""
        for key in [k for k in self.groups if k[0] == id(pending)]:
            del self.groups[key]
        self.waiting = [e for e in self.waiting if e.pending is not pending]
        for rid in [r for r, e in self.turn_of.items() if e.pending is pending]:
            del self.turn_of[rid]

    def close(self) -> None:
        self.pool.close()
