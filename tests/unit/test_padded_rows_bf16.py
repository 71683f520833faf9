"""The GPU configs' rows (``learner.share_prompt: false``): prompts of unequal length, left-padded, in bf16 (#33's
risk). A padding query row sees no key at all; a kernel that returned NaN for it would poison every real position
of the next layer (``0 x NaN`` in the attention's product with the values). Under each SDPA kernel this CPU has
(math, and the fused flash kernel for CPU; CUDA's flash, memory-efficient and cuDNN kernels are not here), every row's
logprobs are the row's own, forwarded alone, to bf16 rounding, and the loss and its gradients are finite."""

from __future__ import annotations

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from learner.loss import model_completion_logps
from learner.rollouts import Sample, collate


def lora_model(tiny_model):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.bfloat16, attn_implementation="sdpa")
    model = get_peft_model(base, LoraConfig(r=8, lora_alpha=16, target_modules="all-linear", lora_dropout=0.0,
                                            task_type="CAUSAL_LM"))
    for name, p in model.named_parameters():
        if "lora_B" in name:
            p.data = (torch.randn(p.shape) * 0.05).to(torch.bfloat16)
    return model.to(torch.bfloat16)


@pytest.mark.parametrize("kernel", [SDPBackend.MATH, SDPBackend.FLASH_ATTENTION], ids=["math", "flash-cpu"])
def test_left_padded_bf16_rows_are_each_rows_own(tiny_model, kernel):
    model = lora_model(tiny_model)
    gen = torch.Generator().manual_seed(4)
    vocab = model.config.vocab_size
    samples = [Sample(torch.randint(3, vocab, (lp,), generator=gen).tolist(),
                      torch.randint(3, vocab, (lc,), generator=gen).tolist(), [-1.0] * lc, 1.0, 0.0, 0, False)
               for lp, lc in [(3, 6), (17, 2), (9, 5)]]  # 14 and 8 padding positions in front of rows 0 and 2
    c = collate(samples, 0)
    assert (c.attention_mask == 0).sum() > 0
    with sdpa_kernel([kernel]):
        together = model_completion_logps(model, c.input_ids, c.attention_mask, c.prompt_len, 0.7,
                                          position_ids=c.position_ids)
        loss = -(together * c.completion_mask).sum()
        loss.backward()
        alone = []
        with torch.no_grad():
            for s in samples:
                one = collate([s], 0)
                alone.append(model_completion_logps(model, one.input_ids, one.attention_mask, one.prompt_len, 0.7,
                                                    position_ids=one.position_ids)[0])
    assert torch.isfinite(together).all() and torch.isfinite(loss)
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(torch.isfinite(g).all() for g in grads) and any(g.abs().sum() > 0 for g in grads)
    for i, s in enumerate(samples):
        n = len(s.completion_ids)
        diff = (together[i, :n].detach() - alone[i][:n]).abs().max()
        assert diff < 0.05, (i, float(diff))  # bf16 rounding of differently shaped products, not another row's
