"""The logits' memory (#33): the logprobs keep for backward only the logits and a log-sum-exp per position, with the
arithmetic of ``log_softmax(logits / T)``; and the plan's learner estimate (launch.memory) budgets what one
micro-batch really keeps and allocates, counted under fake tensors at the 0.5B shape (launch.learner_memory)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from learner.token_logps import token_logps

REPO = Path(__file__).resolve().parents[2]


def reference(logits, rows, cols, targets, temperature):
    """What the learner computed before #33: autograd through log_softmax of the fp32 logits over T, gathered."""
    picked = logits[rows.unsqueeze(1), cols].float() / temperature
    return torch.log_softmax(picked, dim=-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)


def case(dtype, seed=0):
    """Logits [R=2, K=9, V=50]; 3 samples, 4 positions each: sample 2 shares row 0 with sample 0 and repeats a
    position (as packed rows do: every completion of a prompt starts at the prompt's last position)."""
    g = torch.Generator().manual_seed(seed)
    logits = (torch.randn(2, 9, 50, generator=g) * 3).to(dtype).requires_grad_()
    rows = torch.tensor([0, 1, 0])
    cols = torch.tensor([[0, 1, 2, 3], [2, 3, 4, 5], [0, 5, 6, 6]])
    targets = torch.randint(0, 50, (3, 4), generator=g)
    weights = torch.randn(3, 4, generator=g)
    return logits, rows, cols, targets, weights


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_token_logps_is_log_softmax_in_value_and_gradient(temperature):
    logits, rows, cols, targets, weights = case(torch.float32)
    got = token_logps(logits, targets, temperature, rows=rows, cols=cols)
    (g_got,) = torch.autograd.grad((got * weights).sum(), logits)
    want = reference(logits, rows, cols, targets, temperature)
    (g_want,) = torch.autograd.grad((want * weights).sum(), logits)
    assert got.dtype == torch.float32
    assert torch.allclose(got, want, atol=1e-6, rtol=0)
    assert torch.allclose(g_got, g_want, atol=1e-6, rtol=0)
    # contiguous positions from an offset (model_completion_logps, completion_logps): the same
    plain = token_logps(logits, targets[:2], temperature, start=3)
    assert torch.allclose(plain, reference(logits, torch.tensor([0, 1]), torch.arange(3, 7).expand(2, 4),
                                           targets[:2], temperature), atol=1e-6, rtol=0)


def test_bf16_logits_give_fp32_logprobs_and_a_bf16_gradient():
    logits, rows, cols, targets, weights = case(torch.bfloat16, seed=1)
    got = token_logps(logits, targets, 0.7, rows=rows, cols=cols)
    (g_got,) = torch.autograd.grad((got * weights).sum(), logits)
    exact = logits.detach().float().requires_grad_()
    want = reference(exact, rows, cols, targets, 0.7)
    (g_want,) = torch.autograd.grad((want * weights).sum(), exact)
    assert got.dtype == torch.float32 and g_got.dtype == torch.bfloat16
    assert torch.allclose(got, want, atol=1e-5, rtol=0)  # computed in fp32 from the bf16 logits
    # the exact gradient rounded to bf16 (a position two samples share adds two roundings)
    assert float((g_got.float() - g_want).abs().max()) <= 2 ** -8 * float(g_want.abs().max())


def saved_storages(fn):
    """Storages autograd keeps while ``fn()`` runs (the hooks see each saved tensor once per save)."""
    seen = {}

    def pack(t):
        seen[id(t.untyped_storage())] = (t.untyped_storage().nbytes(), t.untyped_storage())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    return out, {k: v[0] for k, v in seen.items()}


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_the_logprobs_keep_only_the_logits_and_one_number_per_position(temperature):
    """Autograd kept every row's fp32 log-softmax (and ``logits / T`` lived beside it): at V4.1's micro-batch that
    was 0.75 GiB more than the logits. Now: the logits themselves, and B x C fp32 (the log-sum-exps)."""
    from learner.loss import model_completion_logps

    b, c, v = 4, 16, 512

    class Head(torch.nn.Module):  # stands for the model: logits_to_keep positions of fixed bf16 logits
        def __init__(self):
            super().__init__()
            self.logits = torch.randn(b, c + 1, v).bfloat16().requires_grad_()

        def forward(self, input_ids, attention_mask, logits_to_keep, use_cache, **kw):
            from types import SimpleNamespace

            assert logits_to_keep == c + 1
            return SimpleNamespace(logits=self.logits * 1)  # a fresh tensor, as the LM head's output is

    model = Head()
    ids = torch.randint(0, v, (b, 10 + c))
    out, saved = saved_storages(lambda: model_completion_logps(model, ids, torch.ones_like(ids), 10, temperature))
    logits_bytes = b * (c + 1) * v * 2
    big = sorted(n for n in saved.values() if n >= c * v)
    assert big == [logits_bytes], big  # the bf16 logits once; no fp32 [C, V] row, no scaled copy
    assert sum(n for n in saved.values() if n < c * v) <= ids.numel() * 8 + b * c * 4  # the ids, the log-sum-exps
    out.sum().backward()
    assert model.logits.grad.dtype == torch.bfloat16 and model.logits.grad[:, -1].abs().sum() == 0


@pytest.fixture(scope="module")
def shape05():
    from launch.memory import KNOWN_SHAPES

    return KNOWN_SHAPES["Polygl0t/Tucano2-qwen-0.5B-Instruct"]


@pytest.mark.parametrize("checkpointing", [False, True], ids=["activations", "gradient-checkpointing"])
def test_the_plan_budgets_what_one_micro_batch_keeps_at_the_05b_shape(shape05, checkpointing):
    """V4.1's micro-batch (8 x 2,048 tokens, 512 of them completion, bf16) at the 0.5B shape, temperature 0.7,
    counted under fake tensors (2 and 3 decoder layers, scaled to 28): the estimate covers it and is within 10%."""
    from configs import load_config
    from launch.learner_memory import compare

    cfg = load_config(REPO / "configs" / "v4_1.yaml",
                      ["temperature=0.7", f"learner.gradient_checkpointing={str(checkpointing).lower()}"])
    out = compare(cfg, shape05, layers=2)
    m, e = out["measured"], out["estimate"]
    print(out)
    assert m["saved_logits_gib"] == pytest.approx(8 * 513 * 49152 * 2 / 2**30)  # the bf16 logits, nothing more
    assert m["logits_peak_gib"] <= e["logits_gib"] <= 1.1 * m["logits_peak_gib"]
    assert m["micro_batch_peak_gib"] <= e["micro_batch_gib"] <= 1.1 * m["micro_batch_peak_gib"]
