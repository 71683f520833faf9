"""Our Dr. GRPO loss and gradients against TRL 1.16's GRPOTrainer on the same batch (1e-5).

TRL's actual code path runs: a GRPOTrainer is built on the tiny model (it wraps it with PEFT itself),
and ``trainer.compute_loss`` is called on a prepared inputs dict (prompt/completion ids and masks,
``old_per_token_logps`` playing the actor's sampling logprobs, ``advantages``). Our loss runs on the
same PEFT model through :func:`learner.loss.model_completion_logps` + :func:`learner.loss.policy_loss`.
"""

from __future__ import annotations

import pytest
import torch

from learner.loss import group_advantages, model_completion_logps, policy_loss
from learner.rollouts import Sample, collate

pytestmark = pytest.mark.slow  # builds a TRL GRPOTrainer (~8 s)
G, L, T = 4, 12, 0.7


@pytest.fixture(scope="module")
def trl_trainer(tiny_model, tmp_path_factory, single_process):
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import GRPOConfig, GRPOTrainer

    tok = AutoTokenizer.from_pretrained(tiny_model)
    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)
    args = GRPOConfig(
        output_dir=str(tmp_path_factory.mktemp("trl")),
        loss_type="dr_grpo",
        scale_rewards="none",
        beta=0.0,
        epsilon=0.2,
        num_generations=G,
        per_device_train_batch_size=G,
        max_completion_length=L,
        temperature=T,
        report_to=[],
        use_cpu=True,
        bf16=False,
        logging_steps=1,
        save_strategy="no",
    )
    trainer = GRPOTrainer(
        model=model,
        reward_funcs=lambda completions, **kw: [0.0] * len(completions),
        args=args,
        train_dataset=Dataset.from_list([{"prompt": "oi"}] * G),
        processing_class=tok,
        peft_config=LoraConfig(
            r=8, lora_alpha=16, target_modules="all-linear", lora_dropout=0.0, task_type="CAUSAL_LM"
        ),
    )
    gen = torch.Generator().manual_seed(0)
    for name, p in trainer.model.named_parameters():  # B starts at 0: make the adapter do something
        if "lora_B" in name:
            p.data = torch.randn(p.shape, generator=gen) * 0.05
    trainer.model.train()
    trainer.current_gradient_accumulation_steps = 1
    return trainer


def _batch(vocab: int):
    """Two groups of G completions with ragged prompt and completion lengths."""
    gen = torch.Generator().manual_seed(1)
    samples, rewards = [], torch.tensor([[0.1, 0.9, 0.4, 0.4], [1.0, 0.0, 0.5, 0.2]])
    adv = group_advantages(rewards, "none").tolist()
    for i in range(2 * G):
        lp = 5 + (i // G) * 3
        lc = [L, 7, 3, 10][i % G]
        prompt = torch.randint(3, vocab, (lp,), generator=gen).tolist()
        comp = torch.randint(3, vocab, (lc,), generator=gen).tolist()
        behaviour = (-torch.rand(lc, generator=gen) * 4 - 2).tolist()  # far enough to clip some tokens
        samples.append(Sample(prompt, comp, behaviour, adv[i], 0.0, 0, False))
    return samples


def _trl_inputs(samples, pad_id: int):
    b = collate(samples, pad_id)
    p = b.prompt_len
    c = b.input_ids.size(1) - p
    # TRL pads completions to max_completion_length-or-less; same right padding as ours.
    return b, {
        "prompt_ids": b.input_ids[:, :p],
        "prompt_mask": b.attention_mask[:, :p],
        "completion_ids": b.input_ids[:, p:],
        "completion_mask": b.completion_mask.long(),
        "advantages": b.advantages,
        "old_per_token_logps": b.behaviour_logps[:, :c],
        "num_items_in_batch": b.completion_mask.sum(),
    }


def _grads(model) -> dict[str, torch.Tensor]:
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


def test_dr_grpo_loss_and_grads_match_trl(trl_trainer):
    model = trl_trainer.model
    tok = trl_trainer.processing_class
    samples = _batch(model.get_input_embeddings().weight.shape[0])
    b, inputs = _trl_inputs(samples, tok.pad_token_id)

    model.zero_grad(set_to_none=True)
    trl_loss = trl_trainer.compute_loss(model, inputs)
    trl_loss.backward()
    trl_g = _grads(model)

    model.zero_grad(set_to_none=True)
    # TRL lets positions run 0..T-1 over left padding; pass the same (no position_ids) for exactness.
    logps = model_completion_logps(model, b.input_ids, b.attention_mask, b.prompt_len, temperature=T)
    ours, stats = policy_loss(
        logps,
        b.behaviour_logps,
        b.advantages,
        b.completion_mask,
        epsilon=0.2,
        loss_type="dr_grpo",
        max_completion_length=L,
    )
    ours.backward()
    our_g = _grads(model)

    assert stats.clipped_tokens > 0, "the batch should exercise the clipped branch"
    assert abs(float(ours.detach())) > 1e-3  # a loss worth comparing
    a, b_ = float(trl_loss.detach()), float(ours.detach())
    assert abs(a - b_) < 1e-5, (a, b_)
    assert set(trl_g) == set(our_g) and len(our_g) > 0
    worst = max(float((trl_g[n] - our_g[n]).abs().max()) for n in our_g)
    assert worst < 1e-5, worst
    assert max(float(g.abs().max()) for g in our_g.values()) > 1e-4  # gradients are not all ~0


def test_position_ids_do_not_change_logps(trl_trainer):
    """Our learner passes position ids counted from each row's first real token; RoPE is relative, so
    TRL's plain 0..T-1 positions over left padding give the same logprobs."""
    model = trl_trainer.model
    samples = _batch(model.get_input_embeddings().weight.shape[0])
    b = collate(samples, trl_trainer.processing_class.pad_token_id)
    with torch.no_grad():
        a = model_completion_logps(model, b.input_ids, b.attention_mask, b.prompt_len, T)
        c = model_completion_logps(
            model, b.input_ids, b.attention_mask, b.prompt_len, T, position_ids=b.position_ids
        )
    assert float(((a - c) * b.completion_mask).abs().max()) < 1e-4
