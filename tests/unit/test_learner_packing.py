"""Prompt sharing (``learner.share_prompt``): packed rows give the same logprobs and gradients as one row
per completion, on the tiny model with a LoRA adapter, in eager, SDPA and grouped attention
(``learner.attention``, what the learner runs), float32 and bfloat16."""

from __future__ import annotations

import pytest
import torch

from learner.attention import register
from learner.loss import model_completion_logps, packed_completion_logps, policy_loss
from learner.rollouts import Packed, Sample, collate, pack_shared


def _samples(vocab: int) -> list[Sample]:
    """Two groups sharing a prompt each (ragged prompts and completions) and one prompt of its own."""
    gen = torch.Generator().manual_seed(3)
    out = []
    for g, (lp, lens) in enumerate([(7, [9, 4, 1, 6]), (11, [3, 9, 5]), (4, [8])]):
        prompt = torch.randint(3, vocab, (lp,), generator=gen).tolist()
        for k, lc in enumerate(lens):
            comp = torch.randint(3, vocab, (lc,), generator=gen).tolist()
            out.append(Sample(prompt, comp, (-torch.rand(lc, generator=gen) * 3).tolist(),
                              float(k) - 1.5 + g, 0.0, 0, False))
    return out


def test_pack_layout_and_block_mask():
    a = Sample([5, 6], [7, 8], [-1.0, -1.0], 1.0, 0.0, 0, False)
    b = Sample([5, 6], [9], [-1.0], -1.0, 0.0, 0, False)
    c = Sample([4], [3, 3], [-1.0, -1.0], 0.0, 0.0, 0, False)
    p = pack_shared([a, c, b], pad_id=0, weights=[1.0, 1.0, 0.0])
    assert p.input_ids.tolist() == [[5, 6, 7, 8, 9], [4, 3, 3, 0, 0]]
    assert p.position_ids[0].tolist() == [0, 1, 2, 3, 2]  # b restarts after the prompt
    assert p.row.tolist() == [0, 1, 0]
    assert p.index[0].tolist() == [1, 2] and p.index[2, 0].item() == 1 and p.index[1].tolist() == [0, 1]
    m = p.block_mask()[0, 0].int().tolist()
    assert m[4] == [1, 1, 0, 0, 1]  # b's token sees the prompt and itself, not a's tokens
    assert m[3] == [1, 1, 1, 1, 0]
    assert p.completion_mask.tolist() == [[1.0, 1.0], [1.0, 1.0], [0.0, 0.0]]  # weight 0 masked
    assert p.tokens == 2 + 2 + 1 + 2  # both prompts once, weighted completions only
    assert p.spans == [(2, [(2, 2), (4, 1)]), (1, [(1, 2)])]  # (prompt length, [(start, length)]) per row


def _lora_model(tiny_model, attn: str, dtype=torch.float32):
    """``attn``: eager, sdpa, grouped, or grouped+ckpt (gradient checkpointing, as the learner's option)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=dtype, attn_implementation="sdpa")
    base.set_attn_implementation(register() if attn.startswith("grouped") else attn)
    if attn.endswith("+ckpt"):  # each layer runs again in backward, packed_spans and all
        base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        base.train()
    model = get_peft_model(base, LoraConfig(r=8, lora_alpha=16, target_modules="all-linear",
                                            lora_dropout=0.0, task_type="CAUSAL_LM"))
    for name, p in model.named_parameters():
        if "lora_B" in name:
            p.data = (torch.randn(p.shape) * 0.05).to(p.dtype)
    return model


@pytest.mark.parametrize("attn", ["eager", "sdpa", "grouped", "grouped+ckpt"])
def test_packed_logps_and_grads_equal_one_row_per_completion(tiny_model, attn):
    model = _lora_model(tiny_model, attn)
    samples = _samples(model.config.vocab_size)
    weights = [1.0] * (len(samples) - 1) + [0.0]
    T = 0.7

    def loss_and_grads(logps, batch):
        loss, _ = policy_loss(logps, batch.behaviour_logps, batch.advantages, batch.completion_mask,
                              max_completion_length=9, num_completions=len(samples))
        model.zero_grad()
        loss.backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
        return loss.detach(), grads

    c = collate(samples, 0, weights=weights)
    ref = model_completion_logps(model, c.input_ids, c.attention_mask, c.prompt_len, T,
                                 position_ids=c.position_ids)
    ref_loss, ref_grads = loss_and_grads(ref, c)
    p = pack_shared(samples, 0, weights=weights)
    got = packed_completion_logps(model, p, T)
    got_loss, got_grads = loss_and_grads(got, p)

    assert torch.equal(p.completion_mask, c.completion_mask)
    mask = c.completion_mask.bool()
    assert mask.sum() > 30
    torch.testing.assert_close(got[mask], ref.detach()[mask], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got_loss, ref_loss, atol=1e-6, rtol=1e-5)
    assert any(g.abs().sum() > 0 for g in ref_grads.values())
    for name, g in ref_grads.items():
        torch.testing.assert_close(got_grads[name], g, atol=1e-6, rtol=1e-4, msg=name)
    assert p.input_ids.numel() < c.input_ids.numel()  # the point: fewer tokens through the model


def test_grouped_attention_follows_the_spans_not_the_mask(tiny_model):
    """Grouped attention computes what the spans say: given a plain causal mask instead of the block mask,
    its logprobs stay those of one row per completion, while SDPA's (which applies the mask) do not."""
    samples = _samples(512)
    p = pack_shared(samples, 0)
    wrong = Packed(**{**vars(p), "segments": torch.zeros_like(p.segments)})  # all prompt: a plain causal mask
    mask = p.completion_mask.bool()
    with torch.no_grad():
        grouped = _lora_model(tiny_model, "grouped")
        right = packed_completion_logps(grouped, p, 1.0)
        torch.testing.assert_close(packed_completion_logps(grouped, wrong, 1.0)[mask], right[mask])
        sdpa = _lora_model(tiny_model, "sdpa")
        torch.testing.assert_close(packed_completion_logps(sdpa, p, 1.0)[mask], right[mask], atol=1e-5, rtol=1e-5)
        assert (packed_completion_logps(sdpa, wrong, 1.0) - right)[mask].abs().max() > 1e-2


def test_grouped_forward_builds_no_square_mask(tiny_model, monkeypatch):
    """Under grouped attention the packed forward builds no ``[R, 1, L, L]`` mask: ``Packed.block_mask`` is not
    called, and every layer's attention receives no mask from transformers (whose mask builder would otherwise
    make one from the restarting position ids), while a model under SDPA still gets the block mask."""
    from transformers import AttentionInterface

    from learner.attention import GROUPED, grouped_attention

    seen = []

    def recording(module, query, key, value, attention_mask, **kwargs):
        seen.append(attention_mask)
        return grouped_attention(module, query, key, value, attention_mask, **kwargs)

    samples = _samples(512)
    p = pack_shared(samples, 0)
    mask = p.completion_mask.bool()
    with torch.no_grad():
        right = packed_completion_logps(_lora_model(tiny_model, "sdpa"), p, 1.0)
        grouped = _lora_model(tiny_model, "grouped")
        monkeypatch.setattr(Packed, "block_mask", lambda self: pytest.fail("grouped forward built the block mask"))
        AttentionInterface.register(GROUPED, recording)
        try:
            got = packed_completion_logps(grouped, p, 1.0)
        finally:
            register()
    assert seen and all(m is None for m in seen), [None if m is None else tuple(m.shape) for m in seen]
    torch.testing.assert_close(got[mask], right[mask], atol=1e-5, rtol=1e-5)


def test_grouped_attention_in_bf16_matches_sdpa(tiny_model):
    """bfloat16, as the learner runs on GPUs: grouped and masked-square attention agree to bf16's rounding, in
    logprobs and in LoRA gradients."""
    samples = _samples(512)
    p = pack_shared(samples, 0)
    mask = p.completion_mask.bool()
    out = {}
    for attn in ("sdpa", "grouped"):
        model = _lora_model(tiny_model, attn, torch.bfloat16)
        logps = packed_completion_logps(model, p, 0.7, dtype=torch.bfloat16).float()
        loss, _ = policy_loss(logps, p.behaviour_logps, p.advantages, p.completion_mask, max_completion_length=9,
                              num_completions=len(samples))
        loss.backward()
        grads = torch.cat([q.grad.float().flatten() for n, q in model.named_parameters() if q.requires_grad])
        out[attn] = logps[mask], grads
    (a, ga), (b, gb) = out["sdpa"], out["grouped"]
    assert a.dtype == torch.float32 and (a - b).abs().max() < 0.05 * a.abs().max() and (a - b).abs().mean() < 0.02
    cos = torch.nn.functional.cosine_similarity(ga, gb, dim=0)
    assert ga.abs().sum() > 0 and cos > 0.99
