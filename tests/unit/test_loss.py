"""Advantages, the clipped surrogate, the aggregations and truncated IS, checked by hand."""

from __future__ import annotations

import math

import pytest
import torch

from learner.loss import completion_logps, group_advantages, policy_loss, selective_log_softmax


def test_advantages_dr_grpo_is_mean_centred_without_std():
    r = torch.tensor([[1.0, 0.0, 0.0, 1.0], [0.2, 0.2, 0.2, 0.2]])
    adv = group_advantages(r, "none")
    assert torch.allclose(adv, torch.tensor([0.5, -0.5, -0.5, 0.5, 0.0, 0.0, 0.0, 0.0]))


def test_advantages_group_scaling_divides_by_group_std():
    r = torch.tensor([[1.0, 0.0, 0.0, 1.0]])
    std = r.std()  # unbiased, as TRL
    assert torch.allclose(group_advantages(r, "group"), (r - 0.5).flatten() / (std + 1e-4))
    r2 = torch.tensor([[1.0, 0.0], [3.0, 1.0]])
    assert torch.allclose(
        group_advantages(r2, "batch"), torch.tensor([0.5, -0.5, 1.0, -1.0]) / (r2.std() + 1e-4)
    )


def test_advantages_reject_bad_input():
    with pytest.raises(ValueError):
        group_advantages(torch.zeros(4), "none")
    with pytest.raises(ValueError):
        group_advantages(torch.zeros(2, 4), "nope")


def test_dr_grpo_divides_by_constant_not_by_length():
    # on-policy: ratio 1, loss = -sum(A * mask) / (B * L)
    logps = torch.zeros(2, 4, requires_grad=True)
    mask = torch.tensor([[1, 1, 1, 1], [1, 0, 0, 0]], dtype=torch.float32)
    adv = torch.tensor([1.0, -1.0])
    loss, st = policy_loss(logps, torch.zeros(2, 4), adv, mask, loss_type="dr_grpo", max_completion_length=10)
    assert math.isclose(float(loss), -(4 * 1.0 + 1 * -1.0) / (2 * 10), rel_tol=1e-6)
    loss.backward()
    # d loss / d logp_t = -A / (B * L) on real tokens, 0 on padding
    assert torch.allclose(logps.grad, -adv.unsqueeze(1) * mask / 20)
    assert st.tokens == 5


def test_grpo_and_dapo_aggregations():
    logps = torch.zeros(2, 4)
    mask = torch.tensor([[1, 1, 1, 1], [1, 0, 0, 0]], dtype=torch.float32)
    adv = torch.tensor([1.0, -1.0])
    grpo, _ = policy_loss(logps, logps, adv, mask, loss_type="grpo")
    assert math.isclose(float(grpo), -(1.0 + -1.0) / 2, abs_tol=1e-7)
    dapo, _ = policy_loss(logps, logps, adv, mask, loss_type="dapo")
    assert math.isclose(float(dapo), -(4 - 1) / 5, rel_tol=1e-6)
    # split into micro-batches with the step totals, the parts add up to the whole
    a, _ = policy_loss(
        logps[:1],
        logps[:1],
        adv[:1],
        mask[:1],
        loss_type="dr_grpo",
        num_completions=2,
        max_completion_length=4,
    )
    b, _ = policy_loss(
        logps[1:],
        logps[1:],
        adv[1:],
        mask[1:],
        loss_type="dr_grpo",
        num_completions=2,
        max_completion_length=4,
    )
    whole, _ = policy_loss(logps, logps, adv, mask, loss_type="dr_grpo", max_completion_length=4)
    assert math.isclose(float(a + b), float(whole), rel_tol=1e-6)


def test_clipping_stops_gradient_on_the_clipped_side():
    behaviour = torch.zeros(1, 2)
    logps = torch.tensor([[math.log(1.5), math.log(0.5)]], requires_grad=True)
    mask = torch.ones(1, 2)
    loss, st = policy_loss(logps, behaviour, torch.tensor([1.0]), mask, epsilon=0.2, max_completion_length=2)
    loss.backward()
    assert logps.grad[0, 0] == 0  # ratio 1.5 > 1.2 with A > 0: clipped, no gradient
    assert logps.grad[0, 1] != 0  # ratio 0.5 with A > 0: unclipped side
    assert st.high_clipped == 1 and st.low_clipped == 0


def test_truncated_is_caps_every_row_but_keeps_gradient():
    """Fresh rows are capped as stale ones are (#34): a fresh row's ratio is the engines' gap, and with A < 0
    ``-A * max(r, clip(r))`` was unbounded in it. ``tis_cap=None`` is TRL's uncapped ratio."""
    behaviour = torch.zeros(2, 1)
    adv = torch.tensor([-1.0, -1.0])
    for cap, want in ((2.0, [2.0, 2.0]), (None, [5.0, 5.0])):
        logps = torch.full((2, 1), math.log(5.0), requires_grad=True)  # ratio 5, far past cap 2
        loss, st = policy_loss(logps, behaviour, adv, torch.ones(2, 1), max_completion_length=1,
                               stale=torch.tensor([True, False]), tis_cap=cap)
        loss.backward()
        # per-token losses min(5, cap) * |A|; gradient wrt logp the same weight * |A| / B (truncated IS keeps it)
        assert math.isclose(float(loss), sum(want) / 2, rel_tol=1e-6)
        assert torch.allclose(logps.grad.flatten(), torch.tensor(want) / 2)
        assert st.truncated == (2 if cap else 0)
        # the mismatch is split by kind of row: both rows sampled at ratio 5
        mm = st.mismatch.metrics()
        assert math.isclose(mm["sampling/fresh/importance_sampling_ratio/max"], 5.0, rel_tol=1e-6)
        assert math.isclose(mm["sampling/stale/sampling_logp_difference/mean"], math.log(5.0), rel_tol=1e-6)


def test_delta_caps_the_unclipped_branch_of_every_row_without_gradient():
    """TRL's ``delta``: ``min(r, delta)`` on the unclipped branch; past it the token has no gradient."""
    behaviour = torch.zeros(2, 2)
    logps = torch.tensor([[math.log(5.0), math.log(1.5)]] * 2, requires_grad=True)
    loss, st = policy_loss(logps, behaviour, torch.tensor([-1.0, -1.0]), torch.ones(2, 2), max_completion_length=2,
                           stale=torch.tensor([True, False]), delta=3.0, tis_cap=2.0)
    loss.backward()
    # token 0: min(5, 3) = 3, no gradient; token 1: ratio 1.5 under delta, plain PPO for A < 0
    assert math.isclose(float(loss), 2 * (3.0 + 1.5) / 4, rel_tol=1e-6)
    assert torch.allclose(logps.grad[:, 0], torch.zeros(2))
    assert torch.allclose(logps.grad[:, 1], torch.full((2,), 1.5 / 4))
    assert st.truncated == 2


def test_sequence_level_ratio_and_band():
    """GSPO: one ratio per row, exp of the masked mean log-ratio; the band drops a row whose geometric-mean ratio
    is outside it and the mismatch statistics still see it."""
    behaviour = torch.zeros(2, 3)
    lr = torch.tensor([[0.1, 0.3, 9.0], [0.0, 0.02, 0.0]])  # row 0's third token is padding
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]])
    logps = lr.clone().requires_grad_(True)
    loss, st = policy_loss(logps, behaviour, torch.tensor([1.0, 1.0]), mask, importance_sampling_level="sequence",
                           epsilon=0.5, max_completion_length=3, tis_cap=None)
    s0, s1 = math.exp(0.2), math.exp(0.02 / 3)
    assert math.isclose(float(loss), -(2 * s0 + 3 * s1) / 6, rel_tol=1e-5)
    mm = st.mismatch.metrics()
    assert math.isclose(mm["sampling/seq_ratio/max"], s0, rel_tol=1e-5)
    assert math.isclose(mm["sampling/seq_ratio/min"], s1, rel_tol=1e-5)
    assert math.isclose(mm["sampling/k3"], sum(math.exp(x) - x - 1 for x in (0.1, 0.3, 0, 0.02, 0)) / 5, rel_tol=1e-5)
    loss, st = policy_loss(logps, behaviour, torch.tensor([1.0, 1.0]), mask, max_completion_length=3,
                           seq_ratio_band=(0.99, 1.01), tis_cap=None)
    assert math.isclose(float(loss), -(2.0 + math.exp(0.02)) / 6, rel_tol=1e-5)  # row 0 (geo e^0.2) dropped
    assert st.tokens == 3 and st.mismatch.metrics()["sampling/seq_masked"] == 0.5
    assert st.mismatch.metrics()["sampling/importance_sampling_ratio/max"] > 1.3  # measured before the band


def test_logps_at_temperature_match_log_softmax():
    torch.manual_seed(0)
    logits = torch.randn(2, 6, 11)
    ids = torch.randint(0, 11, (2, 6))
    got = completion_logps(logits, ids, completion_start=3, temperature=0.7)
    want = torch.log_softmax(logits[:, 2:-1] / 0.7, -1).gather(-1, ids[:, 3:].unsqueeze(-1)).squeeze(-1)
    assert torch.allclose(got, want, atol=1e-6)
    bf = selective_log_softmax(logits.bfloat16(), ids)
    assert torch.allclose(
        bf, torch.log_softmax(logits, -1).gather(-1, ids.unsqueeze(-1)).squeeze(-1), atol=0.05
    )


@pytest.mark.slow  # a subprocess
def test_loss_module_imports_without_vllm_or_deepspeed():
    import subprocess
    import sys

    code = (
        "import sys, learner.loss, learner.sampler, learner.schedule, learner.watchdog, learner.rollouts;"
        "bad=[m for m in ('vllm','deepspeed') if m in sys.modules]; print(bad); sys.exit(bool(bad))"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def test_stale_rows_with_underflowing_ratios_keep_loss_and_gradient_finite():
    """A stale row whose learner logprob is far below the actor's (ratio exp(-200) = 0 in float32), next to
    padding: ``ratio * (cap / ratio.detach())`` made a finite loss with a NaN gradient (0 * inf in backward)."""
    logps = torch.tensor([[-210.0, -1.0, 0.0], [-0.5, -2.0, 0.0]], requires_grad=True)
    behaviour = torch.tensor([[-10.0, -1.5, 0.0], [-0.7, -1.0, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 0.0]])  # the last column is padding
    loss, st = policy_loss(logps, behaviour, torch.tensor([-1.0, 1.0]), mask, max_completion_length=3,
                           stale=torch.tensor([True, True]), tis_cap=2.0)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(logps.grad).all()
    assert logps.grad[:, 2].abs().sum() == 0  # padding gets no gradient
    # a log-ratio of 40 is clamped to 20 before exp(): truncated at the cap, finite either way
    huge = torch.tensor([[40.0]], requires_grad=True)
    loss, st = policy_loss(huge, torch.tensor([[0.0]]), torch.tensor([-1.0]), torch.ones(1, 1),
                           stale=torch.tensor([True]), tis_cap=2.0)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(huge.grad).all() and st.truncated == 1.0


def test_equal_rewards_give_exactly_zero_advantages():
    """A float32 mean of equal rewards is often not the reward itself (eight 0.1s: -7e-9 each); the group's
    advantages must be exactly 0 so that it moves nothing and the learner can skip it."""
    import doctest

    import learner.loss as L

    g = torch.Generator().manual_seed(1)
    for _ in range(200):
        r = torch.rand(3, 16, generator=g)
        r[0] = r[0, 0]
        adv = group_advantages(r).reshape(3, 16)
        assert (adv[0] == 0).all()
        assert torch.allclose(adv[1:], r[1:] - r[1:].mean(1, keepdim=True), atol=1e-7)
    assert doctest.testmod(L).failed == 0
