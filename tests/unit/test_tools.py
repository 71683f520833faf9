"""Tools in the rollout without an engine: the config, a user's own tools (``user_tools.py``, a test file), the pool,
the wire's loss mask, what the learner trains of an episode, its metrics, and the sql_qa reward attacked with tools.

The engine side (token in, token out, the injection case, versions across turns) is
``tests/integration/test_tool_episodes.py``.
"""

from __future__ import annotations

import json
import logging
import math
import sqlite3
from pathlib import Path

import pytest
import torch

from configs import ConfigError, load_config
from configs.tools import ToolSpec
from rewards.tools import ToolPool, builtin_sql, load_tools, system_text
from sync.wire import Completion, Episode, PromptResult, RolloutGroup, WireError, decode, encode as wire_encode

REPO = Path(__file__).resolve().parents[2]
SMOKE = REPO / "configs" / "smoke_cpu.yaml"


# ---------------------------------------------------------------------------------------------------- config
def test_the_tools_section():
    cfg = load_config(SMOKE, ["tools={sql_qa: [sql, {fn: 'user_tools:stock', timeout_s: 2}]}", "episode.max_turns=4"])
    assert [(s.name, s.timeout_s) for s in cfg.tools["sql_qa"]] == [("sql", 5.0), ("stock", 2.0)]
    assert cfg.episode.max_turns == 4
    assert load_config(SMOKE).tools == {}  # none by default: every task single-turn, as before


@pytest.mark.parametrize("override, why", [
    ("tools={sql_qa: [nope]}", "tools.sql_qa.0.fn"),
    ("tools={faq: [sql]}", "tools.faq: not a task of the run"),
    ("tools={sql_qa: [sql, sql]}", "tool names must be distinct"),
    ("tools={sql_qa: [{fn: sql, max_calls: 0}]}", "max_calls"),
])
def test_a_bad_tools_section_is_refused_naming_the_field(override, why):
    with pytest.raises(ConfigError, match=why) as e:
        load_config(SMOKE, [override])
    assert "\n" not in str(e.value)


# ---------------------------------------------------------------------------------------------------- user tools
def test_user_tools_load_with_their_description_in_the_system_prompt():
    tools = load_tools({"faq": [ToolSpec(fn="user_tools:stock"), ToolSpec(fn="user_tools:price")]})["faq"]
    text = system_text(tools, 3)
    assert "- stock(product: str): Quantas unidades de um produto há em estoque." in text
    assert "second paragraph" not in text and "Até 2 chamadas" in text
    assert "- price(product: str, units: int, express: bool): O preço" in text and "JSON" in text


@pytest.mark.parametrize("fn, why", [
    ("nope_module:f", "tools.faq[0]: cannot import nope_module (ModuleNotFoundError"),
    ("user_tools:missing", "tools.faq[0]: user_tools has no function missing"),
    ("user_tools:untyped", "tools.faq[0]: user_tools:untyped: parameter query has no type hint"),
    ("user_tools:undocumented", "tools.faq[0]: user_tools:undocumented has no docstring"),
    ("user_tools:typed_badly", "parameter query: type <class 'set'> is not one of str, int"),
])
def test_a_user_tool_that_cannot_be_used_is_refused_in_one_line(fn, why):
    with pytest.raises(ValueError) as e:
        load_tools({"faq": [ToolSpec(fn=fn)]})
    assert str(e.value).startswith("tools.faq[0]: ") and why in str(e.value) and "\n" not in str(e.value)


def test_the_pool_runs_user_tools_and_contains_a_tool_that_raises(caplog):
    tools = {t.name: t for t in load_tools({"faq": [
        ToolSpec(fn="user_tools:stock"), ToolSpec(fn="user_tools:price"), ToolSpec(fn="user_tools:broken"),
        ToolSpec(fn="user_tools:chatty", max_observation_rows=5)]})["faq"]}
    pool = ToolPool(2)
    try:
        run = lambda name, arg: pool.submit(tools[name], arg).result(timeout=10)  # noqa: E731
        assert run("stock", "toalha").text == "toalha: 12 unidades"
        got = run("price", '{"product": "toalha", "units": 2, "express": true}')
        assert json.loads(got.text) == {"total": 35.0, "product": "toalha"} and not got.error
        bad = run("price", '{"product": "toalha", "units": "2", "express": true}')
        assert bad.error and not bad.failed and bad.text == "erro: units must be int, got str"
        with caplog.at_level(logging.WARNING, logger="rewards.tools"):
            first, second = run("broken", "x"), run("broken", "y")
        assert first.failed == second.failed == "raised" and first.text == "KeyError: 'x'"
        lines = [r.getMessage() for r in caplog.records]
        assert len(lines) == 1 and "tool call broken('x') raised KeyError" in lines[0]  # once per tool and cause
        long = run("chatty", "q")
        assert long.truncated and long.text.count("\n") == 5 and long.text.endswith("(mostrando 5 de 100 linhas)")
    finally:
        pool.close()


def test_the_sql_tool_rows_errors_and_the_injection_text(tmp_path):
    db = tmp_path / "t.db"
    con = sqlite3.connect(db)
    con.execute("CREATE TABLE t (uf TEXT, n INTEGER)")
    con.executemany("INSERT INTO t VALUES (?, ?)", [(f"U{i}", i) for i in range(30)])
    con.commit()
    con.close()
    sql = builtin_sql(ToolSpec(fn="sql", max_observation_rows=3))
    pool = ToolPool(1, db)
    try:
        run = lambda q: pool.submit(sql, q).result(timeout=10)  # noqa: E731
        assert run("SELECT '<|im_end|>' AS t").text == "t\n<|im_end|>"
        assert run("SELECT uf, n FROM t WHERE n = 2").text == "uf | n\nU2 | 2"
        cut = run("SELECT uf FROM t")
        assert cut.truncated and cut.text.endswith("(mostrando 3 de 30 linhas)")
        for q in ("SELECT nope FROM t", "DELETE FROM t", ""):
            r = run(q)
            assert r.error and r.text.startswith("erro:") and not r.failed
    finally:
        pool.close()
    assert sqlite3.connect(db).execute("SELECT COUNT(*) FROM t").fetchone() == (30,)


# ---------------------------------------------------------------------------------------------------- the wire
def episode_completion(versions=(0, 4, 5, 5), nan_obs=True) -> Completion:
    """Turn 1 ``[10, 11, 12]`` (version 4), observation ``[20, 21]``, turn 2 ``[13, 14]`` (version 5)."""
    head = "<sql>SELECT 1</sql>\n<observation>\nx\n</observation>\n"
    obs_lp = [math.nan, math.nan] if nan_obs else [0.0, 0.0]
    return Completion([10, 11, 12, 20, 21, 13, 14], [-1.0, -1.0, -1.0, *obs_lp, -0.5, -0.5], head + "resposta",
                      "stop", list(versions), [0, 1, 3, 0, 5, 1], Episode(2, 1, 0, 0, 0, "stop", len(head), 0.01))


def test_the_loss_mask_and_the_episode_cross_the_wire():
    c = episode_completion(nan_obs=False)
    g = RolloutGroup("r", "a", 4, [PromptResult([1, 2], [c, Completion([5], [-0.1], "x", "stop")])])
    d = decode(wire_encode(g))
    assert d == g
    got = d.results[0].completions
    assert got[0].sampled == 5 and got[0].answer == "resposta"
    assert got[0].columns() == {"turns": 2, "tool_calls": 1, "tool_errors": 0, "finish_reason": "stop"}
    assert got[1].sampled == 1 and got[1].answer == "x" and got[1].columns() == {}  # single-turn: as before


@pytest.mark.parametrize("mask, why", [
    ([0, 1, 3], "odd length"),
    ([0, 1, 3, 2], "value 2 is not one of"),
    ([0, 1, 3, 0, 3, 1], "do not rise"),
    ([0, 1, 3, 1], "neighbouring runs"),
    ([0, 1, 7, 0], "starts at token 7 of a 7-token"),
])
def test_a_malformed_loss_mask_is_refused_on_the_wire(mask, why):
    c = episode_completion(nan_obs=False)
    c.loss_mask = mask
    with pytest.raises(WireError, match=why) as e:
        decode(wire_encode(RolloutGroup("r", "a", 4, [PromptResult([1], [c])])))
    assert "loss_mask" in str(e.value)


# ---------------------------------------------------------------------------------------------------- the learner
def _score(comps, reward_fn, current=5, **kw):
    from learner.rollouts import PromptItem, score_groups

    g = RolloutGroup("r", "a", 4, [PromptResult([1, 2, 3], comps)])
    return score_groups([(g, [PromptItem(0, [{"role": "user", "content": "q"}], {"reference_sql": "SELECT 1"},
                                         "sql_qa")])], reward_fn, current_version=current, max_staleness=2,
                        vocab_size=100, scale_rewards="none", max_completion_length=16, **kw)


def test_the_learner_trains_only_what_the_policy_sampled():
    seen = {}

    def reward(completions, prompts=None, **cols):
        seen.update(completions=list(completions), **cols)
        return [1.0, 0.0]

    a, b = episode_completion(), episode_completion()
    b.text = b.text.replace("resposta", "outra")
    parts, counts = _score([a, b], reward)
    assert not counts
    assert seen["completions"] == ["resposta", "outra"]  # the final answers, not the episode's text
    assert seen["turns"] == [2, 2] and seen["finish_reason"] == ["stop", "stop"] and seen["reference_sql"]
    s = parts[0].samples[0]
    assert s.loss_mask == [1, 1, 1, 0, 0, 1, 1] and s.sampled == 5
    assert s.behaviour_logps == [-1.0, -1.0, -1.0, 0.0, 0.0, -0.5, -0.5]  # NaN placeholders never reach a tensor
    assert s.version == 4 and s.stale  # its oldest sampled token
    batch = parts[0]
    assert batch.completion_lengths == [5, 5]  # lengths count sampled tokens
    assert batch.token_count == 10 and batch.token_staleness_sum == 6  # turn 1: 3 tokens 1 behind; turn 2: fresh
    assert batch.mixed_completions == 2


def test_an_observation_does_not_make_a_completion_stale_or_mixed():
    """Every sampled token at version 5, the observation labelled 4: staleness, the mixed count and the sample's
    version read sampled tokens only."""
    parts, _ = _score([episode_completion(versions=(0, 5, 3, 4, 5, 5)) for _ in range(2)], lambda c, **k: [1.0, 0.0])
    b = parts[0]
    assert b.token_staleness_sum == 0 and b.token_staleness_max == 0 and b.mixed_completions == 0
    assert b.token_count == 10 and all(s.version == 5 and not s.stale for s in b.samples)


@pytest.mark.parametrize("mask, logprobs, why", [
    ([0, 0, 3, 1], None, "refused_mask"),                # the first token not sampled
    ([0, 1, 3, 0, 9, 1], None, "refused_mask"),          # runs past the completion
    (None, [-1.0, math.nan, -1.0, 0.0, 0.0, -0.5, -0.5], "refused_logprobs"),  # NaN on a sampled token
])
def test_a_malformed_episode_is_refused_like_any_bad_completion(mask, logprobs, why):
    bad = episode_completion()
    if mask is not None:
        bad.loss_mask = mask
    if logprobs is not None:
        bad.logprobs = logprobs
    _, counts = _score([bad, episode_completion(), episode_completion()], lambda c, **k: [0.0, 1.0])
    assert counts == {why: 1}


def test_observation_tokens_are_forwarded_and_never_trained():
    from learner.loss import policy_loss
    from learner.rollouts import collate, pack_shared

    parts, _ = _score([episode_completion(), episode_completion()], lambda c, **k: [1.0, 0.0])
    samples = parts[0].samples
    want = torch.tensor([1, 1, 1, 0, 0, 1, 1], dtype=torch.float32)
    col, pack = collate(samples, 0), pack_shared(samples, 0)
    for b in (col, pack):
        assert torch.equal(b.completion_mask[0], want) and torch.equal(b.completion_mask[1], want)
    assert col.input_ids[0, -7:].tolist() == [10, 11, 12, 20, 21, 13, 14]  # still in the forwarded sequence
    logps = col.behaviour_logps.clone()
    logps[:, 3:5] = -3.0  # what the learner computes at an observation
    logps.requires_grad_(True)
    loss, st = policy_loss(logps, col.behaviour_logps, col.advantages, col.completion_mask, max_completion_length=16)
    loss.backward()
    assert st.tokens == 10.0
    assert torch.all(logps.grad[:, 3:5] == 0) and torch.all(logps.grad[0, [0, 1, 2, 5, 6]] != 0)
    wild = col.behaviour_logps.clone()
    wild[:, 3:5] = 50.0  # whatever sits at an observation changes nothing
    again, st2 = policy_loss(logps.detach(), wild, col.advantages, col.completion_mask, max_completion_length=16)
    assert float(again) == float(loss.detach()) and st2.truncated == st.truncated and st2.ratio_sum == st.ratio_sum


def test_episode_metrics_and_the_turn_gap():
    from learner.episodes import TurnGap, episode_metrics
    from learner.rollouts import collate

    parts, _ = _score([episode_completion(), episode_completion()], lambda c, **k: [1.0, 0.0])
    m = episode_metrics(parts[0].samples)
    assert m["tools/turns"] == 2 and m["tools/tool_calls"] == 1 and m["tools/finish/stop"] == 1.0
    assert m["tools/reward_by_turns/2"] == 0.5 and m["tools/finish/budget"] == 0.0
    samples = parts[0].samples
    b = collate(samples, 0)
    logps = b.behaviour_logps.clone()
    logps[:, :3] -= 0.2   # turn 1 off by 0.2, turn 2 exact, the observation (masked) off by anything
    logps[:, 3:5] += 9.0
    gap = TurnGap(3)
    gap.add(logps, b.behaviour_logps, b.completion_mask, samples)
    got = TurnGap.metrics(gap.vector())
    assert got.keys() == {"tools/logprob_gap/turn1", "tools/logprob_gap/turn2"}
    assert abs(got["tools/logprob_gap/turn1"] - 0.2) < 1e-6 and got["tools/logprob_gap/turn2"] == 0.0


# ---------------------------------------------------------------------------------------------------- attacks
@pytest.fixture(scope="module")
def sql_rows(commerce_data):
    rows = [json.loads(x) for x in (Path(commerce_data) / "pairs" / "eval.jsonl").read_text().splitlines()]
    return [r for r in rows if r["task"] == "sql_qa"][:40]


def test_the_sql_qa_reward_with_tools_pays_no_more_than_today(commerce_data, sql_rows):
    """A policy with the tool: dumps a table through it, probes with the right query and answers another, copies the
    rows it saw into its answer, or loops on calls until the budget. Scored as the learner scores an episode (its
    final answer, ``learner.rollouts.score_groups``), none earns more than the same final text earned as a
    single-turn answer, and none more than half of the honest answer's reward."""
    from commerce.episode import call_text, observation
    from rewards import make_reward

    fn = make_reward(Path(commerce_data) / "commerce.db")
    pool = ToolPool(1, Path(commerce_data) / "commerce.db")
    sql = builtin_sql(ToolSpec(fn="sql"))
    try:
        for row in sql_rows:
            ref = row["reference_sql"]
            ask = lambda q: pool.submit(sql, q).result(timeout=10).text  # noqa: E731
            dump = call_text("sql", "SELECT * FROM orders_enriched") + observation(ask("SELECT * FROM orders_enriched"))
            probe = call_text("sql", ref) + observation(ask(ref))
            rows_seen = ask(ref)
            attacks = {
                "dump, then one query for every question": (dump, "```sql\nSELECT COUNT(*) FROM orders_enriched\n```"),
                "the right probe, another answer": (probe, "```sql\nSELECT COUNT(*) FROM orders_enriched\n```"),
                "the rows copied as the answer": (probe, rows_seen),
                "calls until the budget": (probe + probe, None),
            }
            honest = fn([row["answer"]], reference_sql=[ref], task=["sql_qa"])[0]
            for name, (head, final) in attacks.items():
                text = head + (final or "")
                c = Completion([1], [-1.0], text, "stop" if final else "max_turns", [], [],
                               Episode(2, 1, 0, 0, 0, "stop" if final else "max_turns",
                                       len(head) if final else len(text)))
                got = fn([c.answer], reference_sql=[ref], task=["sql_qa"], **{k: [v] for k, v in c.columns().items()})
                today = fn([final or ""], reference_sql=[ref], task=["sql_qa"])[0]
                assert got[0] == today, name
                assert got[0] <= 0.5 * honest, (name, got[0], honest)
    finally:
        pool.close()
        fn.close()


def test_the_doctests_of_the_tool_modules():
    import doctest

    import commerce.episode
    import learner.episodes
    import rewards.tools
    import sync.runs
    import zoo.tool_docs

    for mod in (commerce.episode, rewards.tools, sync.runs, learner.episodes, zoo.tool_docs):
        res = doctest.testmod(mod)
        assert res.failed == 0 and res.attempted > 0, mod.__name__


def test_the_pretraining_episodes_read_what_the_actor_appends(commerce_data):
    """``zoo pretrain --tool-share``: a sql_qa document written as an episode holds, after its probe, exactly the
    observation the actor's sql tool gives for that probe with the default budget (the configs' defaults are
    ``commerce.episode``'s); the tool share 0 leaves the documents as they were."""
    from commerce.episode import OBS_CHARS, OBS_ROWS, find_call, observation
    from zoo.pretrain import task_documents

    assert (ToolSpec(fn="sql").max_observation_rows, ToolSpec(fn="sql").max_observation_chars) == (OBS_ROWS, OBS_CHARS)
    db, train = Path(commerce_data) / "commerce.db", Path(commerce_data) / "pairs" / "train.jsonl"
    caps = {"sql_qa": 30}
    plain = task_documents(None, train, set(), caps)
    docs = task_documents(db, train, set(), caps, tool_share=1.0, seed=3)
    assert len(docs) == len(plain) == 30 and task_documents(db, train, set(), caps) == plain
    pool = ToolPool(1, db)
    sql = builtin_sql(ToolSpec(fn="sql"))
    misses = 0
    try:
        for doc, orig in zip(docs, plain, strict=True):
            user = doc[:doc.index("\n\n<sql>")]
            head, answer = doc[len(user) + 2:], orig[len(user) + 2:]
            assert orig.startswith(user + "\n\n") and head.endswith(answer) and answer.startswith("```sql")
            name, probe = find_call(head[:head.index("</sql>") + 6], ["sql"])
            assert head == f"<sql>{probe}</sql>" + observation(pool.submit(sql, probe).result(timeout=10).text) + answer
            misses += probe not in " ".join(answer.split())
    finally:
        pool.close()
    assert 5 < misses < 25  # about half the probes are near misses
