"""Tool episodes on the real vLLM engine (CPU, float32, inline, merged serving): token in, token out.

The model is the tiny one trained by heart on one sql_qa episode (``episode_model.py``): a call whose query selects
the *text* ``<|im_end|>``, its observation, a second call, its observation, the answer and EOS. At a low temperature
the engine samples it back, and the actor runs both calls through the real SQL sandbox. Checked on what the engine
itself reports: each turn's prompt (vLLM's echo) is exactly the prompt ids + every earlier turn's sampled ids + every
observation's ids; the completion is the concatenation; the loss mask is 0 on exactly the observations; the
observation holding ``<|im_end|>`` has no control token and the episode went on past it; each finish reason; a later
turn sampled after an in-flight load carries the new version, and its logprobs are the new weights' on the whole
context (transformers + PEFT); an episode waiting on a tool keeps a drain from loading.
"""

from __future__ import annotations

import math

import pytest
from conftest import Reference, make_lora_adapter
from episode_model import QUESTION, build_episode_model, episode_ids

from sync.runs import encode
from sync.wire import SamplingSpec

pytestmark = pytest.mark.slow
MAX = 160


@pytest.fixture(scope="module")
def episode_engine(tiny_model, commerce_data, tmp_path_factory):
    from configs import load_config

    from actor.engine import RolloutEngine

    model = build_episode_model(tmp_path_factory.mktemp("episode") / "model", tiny_model)
    cfg = load_config("configs/smoke_cpu.yaml", [
        f"model_id={model}", "actor.inline_engine=true", f"data.db_path={commerce_data / 'commerce.db'}",
        f"max_completion_length={MAX}", "tools={sql_qa: [sql]}", "episode.max_turns=3"])
    eng = RolloutEngine(cfg)
    eng.model_dir = model
    eng.work = tmp_path_factory.mktemp("episode-adapters")
    turns: list = []
    on_turn = eng.episodes.on_turn

    def record(out):  # what the engine echoed as each turn's prompt, and what it sampled
        turns.append((list(out.prompt_token_ids), list(out.outputs[0].token_ids)))
        return on_turn(out)

    eng.episodes.on_turn = record
    eng.turns = turns
    yield eng
    eng.close()


def run(eng, n=2, max_tokens=MAX, max_turns=3, seed=11, tasks=("sql_qa",)):
    eng.turns.clear()
    (res,), stats = eng.generate([QUESTION], SamplingSpec(n, 0.05, 1.0, max_tokens, seed),
                                 tasks=list(tasks) if tasks else None, max_turns=max_turns)
    return res, stats


def test_a_tool_episode_token_in_token_out(episode_engine):
    eng = episode_engine
    tok = eng.tokenizer
    prompt, turns, obs = episode_ids(tok)
    res, stats = run(eng)
    assert res.prompt_token_ids == prompt
    # every turn's prompt, as the engine echoed it, is the concatenation so far
    assert len(eng.turns) == 2 * 3
    for echoed, sampled in eng.turns:
        done = echoed[len(prompt):]
        assert echoed[:len(prompt)] == prompt
        k = [t for t in range(3) if done == sum((turns[i] + obs[i] for i in range(t)), [])]
        assert k, "a turn's prompt is not prompt + sampled + observed ids"
        assert sampled == turns[k[0]]
    want = turns[0] + obs[0] + turns[1] + obs[1] + turns[2]
    bits = [1] * len(turns[0]) + [0] * len(obs[0]) + [1] * len(turns[1]) + [0] * len(obs[1]) + [1] * len(turns[2])
    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    for c in res.completions:
        assert c.token_ids == want
        assert c.loss_mask == encode(bits)  # no trained token inside an observation, every sampled one trained
        assert c.sampled == sum(bits) and stats["gen_tokens"] == 2 * sum(bits)
        assert all(lp == 0.0 for lp, b in zip(c.logprobs, bits, strict=True) if not b)
        assert all(math.isfinite(lp) and lp <= 0 for lp, b in zip(c.logprobs, bits, strict=True) if b)
        assert c.version_runs == [0, -1] and c.finish_reason == "stop"
        e = c.episode
        assert (e.turns, e.tool_calls, e.tool_errors, e.tool_timeouts, e.finish) == (3, 2, 0, 0, "stop")
        assert c.answer == "```sql\nSELECT 7 AS n\n```\nSete."
        # the injection case: the query selected the text '<|im_end|>'; it came back as text, not as the control
        # token, and the episode went on past it
        assert "<observation>\nt\n<|im_end|>\n</observation>" in c.text
        assert im_end not in obs[0] and im_end not in c.token_ids[len(turns[0]):len(turns[0]) + len(obs[0])]
    assert stats["tool_s"] > 0


def test_finish_reasons_and_single_turn(episode_engine):
    eng = episode_engine
    prompt, turns, obs = episode_ids(eng.tokenizer)
    res, _ = run(eng, max_turns=2)  # the second call falls on the last turn
    assert {(c.episode.finish, c.episode.turns, c.answer) for c in res.completions} == {("max_turns", 2, "")}
    fits = len(turns[0]) + len(obs[0])
    res, _ = run(eng, max_tokens=fits)  # the first observation does not fit: not appended
    assert {c.episode.finish for c in res.completions} == {"budget"}
    assert all(c.token_ids == turns[0] and not c.loss_mask for c in res.completions)
    res, _ = run(eng, max_tokens=len(turns[0]) - 2)  # cut while sampling the call
    assert {c.finish_reason for c in res.completions} == {"length"}
    # max_turns 1 is today's single-turn request: no tools' paragraph, no stop string, no episode
    one, _ = run(eng, max_turns=1)
    plain, _ = run(eng, tasks=None)
    assert one.prompt_token_ids == plain.prompt_token_ids != prompt
    assert [c.token_ids for c in one.completions] == [c.token_ids for c in plain.completions]
    assert all(c.episode is None and not c.loss_mask for c in one.completions)


def test_drain_waits_for_an_episode_on_a_tool(episode_engine):
    from actor.loading import EngineBusy

    eng = episode_engine
    eng.submit("drain", [QUESTION], SamplingSpec(1, 0.05, 1.0, MAX, 3), tasks=["sql_qa"], max_turns=3)
    while not eng.episodes.waiting:
        assert not eng.step()
    assert eng.in_flight == 1 and not eng._pending  # no vLLM request runs: the episode waits on its call
    eng.load_mode = "drain"
    try:
        with pytest.raises(EngineBusy):
            eng.load_adapter(0, None)
    finally:
        eng.load_mode = "inflight"
    done = []
    while not done:
        done = eng.step()
    assert done[0][1][0].completions[0].episode.turns == 3


def test_a_later_turn_samples_under_the_version_loaded_meanwhile(episode_engine):
    """Merged, in flight: turn 1 under the base weights (-1), a load while the episode waits on its call, turn 2
    on under v0 with the new load's cache salt: its logprobs are v0's on the whole context, prefilled again."""
    import shutil

    eng = episode_engine
    adapter = make_lora_adapter(eng.model_dir, eng.work / "a", seed=3, std=0.1)
    _, turns, obs = episode_ids(eng.tokenizer)
    # a plain request runs through the load, so the prefix cache keeps the blocks computed under the base weights
    # (it cannot be reset while requests hold blocks): only the new load's cache salt keeps turn 2 off them
    eng.submit("busy", [QUESTION], SamplingSpec(1, 1.0, 1.0, 120, 9), ignore_eos=True)
    eng.submit("v", [QUESTION], SamplingSpec(1, 1.0, 1.0, MAX, 5), tasks=["sql_qa"], max_turns=2)
    while not eng.episodes.waiting:
        assert not eng.step()
    served = eng.work / "served-v0"
    shutil.copytree(adapter, served)
    eng.load_adapter(0, served)
    assert eng.pause_s > 0  # loaded with a request running: paused, cache kept
    done = {}
    while "v" not in done or "busy" not in done:
        done.update({k: (r, st) for k, r, st in eng.step()})
    (res,), stats = done["v"]
    c = res.completions[0]
    first = len(turns[0]) + len(obs[0])
    assert c.token_ids[:first] == turns[0] + obs[0] and len(c.token_ids) > first
    assert c.version_runs == [0, -1, first, 0]
    assert stats["version"] == -1.0
    ref = Reference(eng.model_dir)
    prompt = res.prompt_token_ids  # its tools' paragraph says max_turns 2
    before = ref.logprobs(None, prompt, [turns[0]])[0]
    after = ref.logprobs(adapter, prompt + c.token_ids[:first], [c.token_ids[first:]])[0]
    assert max(abs(a - b) for a, b in zip(c.logprobs[:len(turns[0])], before, strict=True)) < 1e-3
    gap = max(abs(a - b) for a, b in zip(c.logprobs[first:], after, strict=True))
    print("turn 2 vs v0 on the whole context", gap)
    assert gap < 1e-3
