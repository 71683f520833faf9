"""Rollout groups -> batch: refusals and their counts, NaN rewards, staleness; sharding; schedules;
the metrics file; the CLI's input checks."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest
import torch

from learner.data import ToyTokenReward, per_task_means, stratified_subset
from learner.rollouts import PromptItem, build_batch, collate, shard
from learner.schedule import lr_lambda, warmup_steps
from sync.wire import Completion, PromptResult, RolloutGroup

VOCAB = 100


def comp(ids, text="", lp=None, finish="stop"):
    return Completion(list(ids), lp if lp is not None else [-1.0] * len(ids), text, finish)


def group(version, comps_per_prompt, rewards=None):
    return RolloutGroup(
        "r", "a0", version, [PromptResult([1, 2, 3], c) for c in comps_per_prompt], rewards=rewards
    )


ITEM = PromptItem(0, [{"role": "user", "content": "oi"}], {"task": "push", "answer": "x"}, "push")


def run(entries, current=3, staleness=1, reward_fn=None):
    return build_batch(
        [(g, [ITEM] * len(g.results)) for g in entries],
        reward_fn or ToyTokenReward("a"),
        current_version=current,
        max_staleness=staleness,
        vocab_size=VOCAB,
        scale_rewards="none",
        max_completion_length=4,
    )


def test_refusals_are_counted_and_never_batched():
    good = [comp([5, 6], "aa"), comp([7], "b"), comp([8, 9, 10, 11], "ab", finish="length")]
    bad = [comp([], ""), comp([VOCAB], "a"), comp([5, 6], "a", lp=[-1.0]), comp([5], "a", lp=[math.nan])]
    b = run([group(3, [good + bad])])
    assert b.counts == {"refused_empty": 1, "refused_vocab": 1, "refused_logprobs": 2}
    assert len(b.samples) == 3 and all(max(s.completion_ids) < VOCAB for s in b.samples)
    assert b.rewards == [[1.0, 0.0, 0.5]]
    assert [s.advantage for s in b.samples] == pytest.approx([0.5, -0.5, 0.0])
    assert [s.truncated for s in b.samples] == [False, False, True]


def test_unknown_future_version_refused_and_old_version_dropped():
    two = [[comp([5], "a"), comp([6], "b")]]
    b = run([group(4, two), group(1, two), group(2, two)], current=3, staleness=1)
    assert b.counts["refused_version"] == 2 and b.counts["dropped_stale"] == 2
    assert len(b.samples) == 2 and all(s.stale and s.version == 2 for s in b.samples)
    assert b.staleness == [1]
    assert run([group(3, two)], current=3, staleness=0).samples[0].stale is False


def runs(ids, text, version_runs):
    return Completion(list(ids), [-1.0] * len(ids), text, "stop", version_runs)


def test_per_token_versions_set_staleness_and_metrics():
    """A completion is as stale as its oldest token, a group as its oldest completion: runs [0 -> v2, 2 -> v3]
    at current 3 are stale (TIS applies), their v3 tokens count 0 in the per-token staleness."""
    from learner.rollouts import out_of_bounds, version_metrics

    mixed = runs([5, 6, 7, 8], "aa", [0, 2, 2, 3])  # tokens 0-1 by v2, 2-3 by v3
    late = runs([5, 6], "a", [0, 3])                 # admitted at v2, every token sampled after the load
    g = group(2, [[mixed, late]])
    b = run([g], current=3, staleness=1)
    assert [(s.version, s.stale) for s in b.samples] == [(2, True), (3, False)]
    assert b.staleness == [1] and b.mixed_completions == 1
    m = version_metrics(b)
    assert m["train/mixed_version_frac"] == 0.5
    assert m["train/token_staleness"] == pytest.approx(2 / 6) and m["train/token_staleness_max"] == 1.0
    assert not out_of_bounds(g, 3, 1)
    # with staleness 0 the v2 tokens make the group too stale: dropped whole, and re-requested by the trainer
    b0 = run([g], current=3, staleness=0)
    assert b0.counts["dropped_stale"] == 2 and not b0.samples and out_of_bounds(g, 3, 0)
    # the same tokens all at v3 (the group's version): on-policy
    fresh = run([group(3, [[runs([5, 6], "aa", [0, 3]), runs([7], "b", [])]])], current=3, staleness=0)
    assert [s.stale for s in fresh.samples] == [False, False] and version_metrics(fresh) == {
        "train/mixed_version_frac": 0.0, "train/token_staleness": 0.0, "train/token_staleness_max": 0.0}
    assert version_metrics(run([], current=3))["train/mixed_version_frac"] == 0.0


@pytest.mark.parametrize("bad_runs", [[0, 2, 1, 4], [0, 1]], ids=["a token from the future", "older than admitted"])
def test_tokens_of_unpublished_or_earlier_versions_refuse_the_group(bad_runs):
    """current 3, group admitted at v2: a token claiming v4 was never published; one claiming v1 predates the
    version the request was admitted under. Either is a sync bug: the whole group is refused."""
    from learner.rollouts import out_of_bounds

    g = group(2, [[runs([5, 6], "aa", bad_runs), runs([7], "b", [0, 2])]])
    b = run([g], current=3, staleness=5)
    assert b.counts["refused_version"] == 2 and not b.samples and out_of_bounds(g, 3, 5)


def test_nan_and_inf_rewards_skip_the_group():
    two = [comp([5], "a"), comp([6], "b")]
    b = run([group(3, [two, two, two], rewards=[[math.nan, 1.0], [0.0, math.inf], [0.0, 1.0]])])
    assert b.counts["skipped_nan_reward"] == 2
    assert len(b.samples) == 2 and all(math.isfinite(s.advantage) for s in b.samples)
    b2 = run([group(3, [two])], reward_fn=lambda completions, **kw: [None, 0.5])
    assert b2.counts["skipped_nan_reward"] == 1 and not b2.samples


def test_group_left_with_one_completion_is_skipped():
    b = run([group(3, [[comp([5], "a"), comp([], "")]])])
    assert b.counts["skipped_small_group"] == 1 and b.counts["refused_empty"] == 1 and not b.samples


def test_collate_pads_prompts_left_and_completions_right():
    b = run([group(3, [[comp([5, 6], "aa"), comp([7], "b")]])])
    b.samples[1].prompt_ids = [9]
    c = collate(b.samples, pad_id=0)
    assert c.prompt_len == 3 and c.input_ids.tolist() == [[1, 2, 3, 5, 6], [0, 0, 9, 7, 0]]
    assert c.attention_mask.tolist() == [[1, 1, 1, 1, 1], [0, 0, 1, 1, 0]]
    assert c.position_ids[1, 2:4].tolist() == [0, 1]
    assert c.completion_mask.tolist() == [[1, 1], [1, 0]]


def test_shard_gives_every_rank_the_same_number_of_microbatches():
    samples = list(range(7))
    parts = [shard(samples, r, 2, 3) for r in range(2)]
    assert [len(mbs) for mbs, _ in parts] == [2, 2]
    assert [[len(mb) for mb in mbs] for mbs, _ in parts] == [[3, 1], [3, 1]]
    real = sorted(
        x
        for mbs, ws in parts
        for mb, w in zip(mbs, ws, strict=True)
        for x, wi in zip(mb, w, strict=True)
        if wi
    )
    assert real == samples
    assert sum(wi for _, ws in parts for w in ws for wi in w) == 7


@pytest.mark.parametrize(
    "name,ratio,steps",
    [("cosine", 0.1, 200), ("constant_with_warmup", 0.05, 600), ("linear", 0.1, 50), ("constant", 0.0, 10)],
)
def test_schedules_match_transformers(name, ratio, steps):
    from transformers import get_scheduler

    w = warmup_steps(ratio, steps)
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    ref = get_scheduler(name, opt, num_warmup_steps=w, num_training_steps=steps)
    ours = lr_lambda(name, w, steps)
    for s in range(steps):
        assert ours(s) == pytest.approx(opt.param_groups[0]["lr"], abs=1e-12), s
        opt.step()
        ref.step()


def test_v4_cosine_is_near_zero_at_the_end_and_v41_constant_after_30_steps():
    cos = lr_lambda("cosine", warmup_steps(0.1, 200), 200)
    assert cos(199) < 1e-3 and cos(130) < 0.5
    const = lr_lambda("constant_with_warmup", warmup_steps(0.05, 600), 600)
    assert warmup_steps(0.05, 600) == 30 and const(15) == 0.5 and const(30) == const(599) == 1.0


def test_eval_subset_is_task_stratified_and_fixed():
    items = [
        PromptItem(i, [], {}, t) for i, t in enumerate(["extraction"] * 10 + ["push"] * 3 + ["sql_qa"] * 5)
    ]
    a = stratified_subset(items, 8, seed=1)
    assert a == stratified_subset(list(items), 8, seed=1)
    tasks = [it.task for it in a]
    assert tasks.count("push") == 3 and tasks.count("sql_qa") == 2 and tasks.count("extraction") == 3
    m = per_task_means([1.0, 0.0, 0.5], ["push", "push", "sql_qa"], "eval")
    assert m == {"eval/mean_reward": 0.5, "eval/push": 0.5, "eval/sql_qa": 0.5}


def test_metrics_jsonl_lines_and_wandb_failure_is_a_warning(tmp_path, smoke_config, monkeypatch):
    from learner.metrics import MetricsLogger

    cfg = smoke_config.model_copy(
        update={
            "logging": smoke_config.logging.model_copy(
                update={"wandb_mode": "online", "wandb_entity": "no-such-entity-xyz"}
            )
        }
    )
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("TUCANO2_NO_PROGRESS", "1")
    with pytest.warns(UserWarning, match="wandb init failed"):
        log = MetricsLogger(cfg, tmp_path / "run", total=3)
    assert log.wandb is None
    log.log(1, {"train/reward": 0.5, "train/grad_norm": math.nan})
    log.log(2, {"train/reward": 0.7})
    log.close()
    lines = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert lines == [
        {"step": 1, "train/reward": 0.5, "train/grad_norm": None},
        {"step": 2, "train/reward": 0.7},
    ]
    again = MetricsLogger(smoke_config, tmp_path / "run", resume_step=1, total=3)  # resume truncates
    again.close()
    assert len((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()) == 1


@pytest.mark.slow  # subprocesses
def test_cli_missing_inputs_exit_2_with_one_line(tmp_path, tiny_model):
    base = [sys.executable, "-m", "learner", "--config", "configs/smoke_cpu.yaml"]
    cases = {
        "model": ["--set", f"model_id={tmp_path / 'nope'}"],
        "training pairs": [
            "--set",
            f"model_id={tiny_model}",
            "--set",
            f"data.train_pairs={tmp_path / 'x.jsonl'}",
        ],
        "invalid config": ["--set", "learner.zero_stage=7"],
    }
    for what, extra in cases.items():
        r = subprocess.run(base + extra, capture_output=True, text=True, timeout=60)
        assert r.returncode == 2, (what, r.stderr)
        lines = [x for x in r.stderr.splitlines() if x.strip()]
        assert len(lines) == 1 and what in lines[0], (what, r.stderr)


def test_request_seeds_never_share_a_random_stream():
    """vLLM seeds sample k with ``seed + k`` (prompt i of a request adds ``i * n``): every request of a run
    -- a step's prompts, re-requests, eval chunks, the probe -- must own a range of its own."""
    from learner.rollouts import SEED_STRIDE, rollout_seed

    g, prompts_per_step, eval_chunks = 16, 8, 16
    ranges = []
    for step in range(300):
        ranges += [(rollout_seed(42, step, j), g) for j in range(prompts_per_step)]
        ranges += [(rollout_seed(42, step, 64 + 32 * a + k), g) for a in range(4) for k in range(2)]
    ranges += [(rollout_seed(42, 0, 192 + i), 8) for i in range(eval_chunks)] + [(rollout_seed(42, 0, 255), 1)]
    streams = [s + k for s, n in ranges for k in range(n)]
    assert len(streams) == len(set(streams))
    assert all(0 <= s < 2**31 for s, _ in ranges) and g * 8 <= SEED_STRIDE
    # the old scheme (base + j per prompt) shared 15 of 16 streams between prompts 0 and 1 of a step
    old = [{42 * 100003 + 5 * 101 + j + k for k in range(g)} for j in range(2)]
    assert len(old[0] & old[1]) == 15


def test_a_banked_group_is_built_again_at_a_later_version_without_scoring_it_again():
    """Dynamic sampling banks a spare group as its source (its prompt alone, task rewards filled in) and builds it
    again at the version it is trained under: same rewards and advantages, staleness from the new version, the
    reward never called again; out of max_staleness it expires in the bank."""
    import doctest
    from types import SimpleNamespace

    import learner.dynamic as D
    from learner.rollouts import score_groups

    kw = dict(max_staleness=1, vocab_size=VOCAB, scale_rewards="none", max_completion_length=4)
    two = [[comp([5, 6], "aa"), comp([7], "b"), comp([VOCAB], "a")], [comp([5], "b"), comp([6], "b")]]
    parts, counts = score_groups([(group(2, two), [ITEM, ITEM])], ToyTokenReward("a"), current_version=2, **kw)
    assert counts == {"refused_vocab": 1} and len(parts) == 2  # one part per prompt
    assert [p.degenerate for p in parts] == [[False], [True]] and parts[0].staleness == [0]

    def never(*a, **k):
        raise AssertionError("a banked group was scored again")

    again, _ = score_groups([parts[0].sources[0]], never, current_version=3, **kw)
    assert again[0].rewards == parts[0].rewards == [[1.0, 0.0]]
    assert [s.advantage for s in again[0].samples] == [s.advantage for s in parts[0].samples]
    assert again[0].staleness == [1] and all(s.stale for s in again[0].samples)
    ds = D.DynamicSampler(SimpleNamespace(max_factor=1.0, window=2), need=1, max_staleness=1)
    assert ds.deposit([D.Banked(parts[0].sources[0], 2), D.Banked(parts[1].sources[0], 1)]) == 1  # cap 1: oldest out
    assert ds.unbank(3) == ([parts[0].sources[0]], 0) and ds.bank == []
    ds.deposit([D.Banked(parts[0].sources[0], 2)])
    assert ds.unbank(4) == ([], 1)  # two versions old under max_staleness 1: expired
    assert doctest.testmod(D).failed == 0


def test_mask_truncated_and_overlong_shape_the_batch_from_the_finish_reason():
    """A completion the engine cut (finish reason ``length``) is truncated whatever its length; masked, it gets
    advantage 0 and leaves dapo's token count, while the group mean still counts it."""
    from learner.step import informative, trained_tokens

    cut = comp([5, 6], "aa", finish="length")        # cut by the engine before max_completion_length (4)
    full = comp([7, 8, 9, 10], "b")                  # 4 tokens, ended by EOS: not cut
    other = comp([5], "a")
    b = build_batch([(group(3, [[cut, full, other]]), [ITEM])], ToyTokenReward("a"), current_version=3,
                    max_staleness=1, vocab_size=VOCAB, scale_rewards="none", max_completion_length=4,
                    mask_truncated=True)
    assert [s.truncated for s in b.samples] == [True, False, False] and [s.masked for s in b.samples] == [
        True, False, False]
    assert b.rewards == [[1.0, 0.0, 1.0]]  # ToyTokenReward("a"): 1 when the text holds "a"
    assert [s.advantage for s in b.samples] == pytest.approx([0.0, -2 / 3, 1 / 3])  # the mean counts the cut one
    assert trained_tokens(b.samples) == 5 and len(informative(b.samples)) == 2
    assert b.degenerate == [False]  # the spread over the trained ones: 0 vs 1
    # judged over the completions that would be trained: with the cut one masked, [0, 0] has no spread
    b = build_batch([(group(3, [[cut, full, comp([6], "b")]]), [ITEM])], ToyTokenReward("a"), current_version=3,
                    max_staleness=1, vocab_size=VOCAB, scale_rewards="none", max_completion_length=4,
                    mask_truncated=True)
    assert b.degenerate == [True] and b.rewards == [[1.0, 0.0, 0.0]]
