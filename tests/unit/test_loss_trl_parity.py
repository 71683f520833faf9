"""Our Dr. GRPO loss and gradients against TRL 1.16's GRPOTrainer on the same batch (1e-5), and each objective
option TRL names (``epsilon_high``, ``delta``, ``importance_sampling_level``, ``mask_truncated_completions``) and
its soft overlong punishment, with TRL's meaning.

TRL's actual code path runs: a GRPOTrainer is built on the tiny model (it wraps it with PEFT itself),
and ``trainer.compute_loss`` is called on a prepared inputs dict (prompt/completion ids and masks,
``old_per_token_logps`` playing the actor's sampling logprobs, ``advantages``). Our loss runs on the
same PEFT model through :func:`learner.loss.model_completion_logps` + :func:`learner.loss.policy_loss`.
An option is set on the trainer where ``_compute_loss`` reads it (``trainer.epsilon_high``, ``trainer.args.delta``,
``trainer.importance_sampling_level``, ``trainer.loss_type``) and put back after the test. TRL's ratio without vLLM
has no cap (it recomputes ``pi_old``; with vLLM it caps the engine gap in a separate weight), so ours runs with
``tis_cap=None`` wherever the ratio leaves ``[0, 2]``; ``delta`` replaces the cap as in TRL.
"""

from __future__ import annotations

import math

import pytest
import torch

from learner.loss import group_advantages, model_completion_logps, policy_loss
from learner.rollouts import PromptItem, Sample, build_batch, collate
from learner.step import trained_tokens
from sync.wire import Completion, PromptResult, RolloutGroup

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
        tis_cap=None,
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


@pytest.fixture
def trl_option(trl_trainer):
    """Set attributes of the TRL trainer (or its ``args``) for one test; put them back afterwards."""
    saved = []

    def set_(obj, **kw):
        for k, v in kw.items():
            saved.append((obj, k, getattr(obj, k)))
            setattr(obj, k, v)

    yield set_
    for obj, k, v in reversed(saved):
        setattr(obj, k, v)


def _near_batch(trainer, spread: float = 0.6):
    """:func:`_batch` with behaviour logprobs near the model's own (``log pi - U(-spread, spread)``): ratios in
    ``[e^-spread, e^spread]``, both clip sides and delta 1.5 exercised."""
    samples = _batch(trainer.model.get_input_embeddings().weight.shape[0])
    b = collate(samples, trainer.processing_class.pad_token_id)
    with torch.no_grad():
        logps = model_completion_logps(trainer.model, b.input_ids, b.attention_mask, b.prompt_len, temperature=T)
    gen = torch.Generator().manual_seed(2)
    for i, s in enumerate(samples):
        n = len(s.completion_ids)
        s.behaviour_logps = (logps[i, :n] - (torch.rand(n, generator=gen) * 2 - 1) * spread).tolist()
    return samples


def _compare(trainer, samples, *, stale=None, num_tokens=None, completion_mask=None, **ours_kw):
    """TRL's compute_loss and ours on ``samples``: (trl loss, our loss, max gradient difference, our stats)."""
    model = trainer.model
    b, inputs = _trl_inputs(samples, trainer.processing_class.pad_token_id)
    if completion_mask is not None:
        inputs["completion_mask"] = completion_mask
        inputs["num_items_in_batch"] = completion_mask.sum()
    model.zero_grad(set_to_none=True)
    trl_loss = trainer.compute_loss(model, inputs)
    trl_loss.backward()
    trl_g = _grads(model)
    model.zero_grad(set_to_none=True)
    logps = model_completion_logps(model, b.input_ids, b.attention_mask, b.prompt_len, temperature=T)
    ours, stats = policy_loss(logps, b.behaviour_logps, b.advantages, b.completion_mask, max_completion_length=L,
                              stale=stale, num_tokens=num_tokens, **ours_kw)
    ours.backward()
    our_g = _grads(model)
    assert set(trl_g) == set(our_g) and len(our_g) > 0
    worst = max(float((trl_g[n] - our_g[n]).abs().max()) for n in our_g)
    assert max(float(g.abs().max()) for g in our_g.values()) > 1e-5  # gradients are not all ~0
    return float(trl_loss.detach()), float(ours.detach()), worst, stats


def test_epsilon_high_matches_trl(trl_trainer, trl_option):
    samples = _near_batch(trl_trainer)
    base, _, _, _ = _compare(trl_trainer, samples, epsilon=0.2, tis_cap=None)
    trl_option(trl_trainer, epsilon_high=0.28)
    a, b, worst, st = _compare(trl_trainer, samples, epsilon=0.2, epsilon_high=0.28, tis_cap=None)
    assert abs(a - base) > 1e-6, "TRL did not read epsilon_high"
    assert st.high_clipped > 0 and abs(a - b) < 1e-5 and worst < 1e-5, (a, b, worst)


@pytest.mark.parametrize("stale_rows", ["none", "half", "all"])
def test_delta_matches_trl_on_fresh_and_stale_rows(trl_trainer, trl_option, stale_rows):
    """TRL's delta caps every row's unclipped ratio; ours the same whichever rows are stale (delta replaces the
    truncated IS cap, which would otherwise differ from TRL here)."""
    samples = _near_batch(trl_trainer)
    n = len(samples)
    stale = torch.tensor({"none": [False] * n, "half": [i % 2 == 0 for i in range(n)], "all": [True] * n}[stale_rows])
    trl_option(trl_trainer.args, delta=1.5)
    a, b, worst, st = _compare(trl_trainer, samples, stale=stale, epsilon=0.2, delta=1.5, tis_cap=2.0)
    assert st.truncated > 0, "the batch should have ratios past delta"
    assert abs(a - b) < 1e-5 and worst < 1e-5, (a, b, worst)


@pytest.mark.parametrize("loss_type", ["grpo", "dr_grpo"])
def test_sequence_level_importance_sampling_matches_trl(trl_trainer, trl_option, loss_type):
    """GSPO (TRL's ``importance_sampling_level="sequence"``) at its own clip range, 3e-4 / 4e-4."""
    samples = _near_batch(trl_trainer)
    trl_option(trl_trainer, importance_sampling_level="sequence", loss_type=loss_type, epsilon_low=3e-4,
               epsilon_high=4e-4)
    a, b, worst, st = _compare(trl_trainer, samples, epsilon=3e-4, epsilon_high=4e-4,
                               importance_sampling_level="sequence", loss_type=loss_type, tis_cap=None)
    assert st.clipped_tokens > 0
    assert abs(a - b) < 1e-5 and worst < 1e-5, (a, b, worst)


def _engine_groups(vocab: int, eos: int):
    """Two groups of G completions as the engine returns them: the cut ones (finish reason ``length``, L tokens,
    no EOS) and the finished ones (ending in EOS)."""
    gen = torch.Generator().manual_seed(3)
    groups = []
    for g in range(2):
        comps = []
        for k in range(G):
            cut = k in ((0, 2) if g == 0 else (1,))
            n = L if cut else [5, 9, 3, 7][k]
            ids = torch.randint(3, vocab, (n,), generator=gen).tolist()
            ids = [t if t != eos else eos + 1 for t in ids]
            if not cut:
                ids[-1] = eos
            lp = (-torch.rand(n, generator=gen) * 4 - 2).tolist()
            comps.append(Completion(ids, lp, f"c{g}{k}", "length" if cut else "stop"))
        prompt = torch.randint(3, vocab, (5 + 2 * g,), generator=gen).tolist()
        groups.append(RolloutGroup(f"r{g}", "a0", 0, [PromptResult(prompt, comps)], rewards=[[0.1, 0.9, 0.4, 0.6]]))
    return groups


@pytest.mark.parametrize("loss_type", ["dr_grpo", "dapo"])
def test_mask_truncated_completions_matches_trl(trl_trainer, trl_option, loss_type):
    """Ours marks a completion cut by the engine's finish reason and gives it advantage 0 (no forward, out of dapo's
    token count); TRL zeroes the completion mask of each one whose last token is not EOS or pad
    (``GRPOTrainer._generate_and_score_completions``, restated below). The group's advantages count it in both."""
    tok = trl_trainer.processing_class
    vocab = trl_trainer.model.get_input_embeddings().weight.shape[0]
    item = PromptItem(0, [{"role": "user", "content": "oi"}], {}, "push")
    groups = _engine_groups(vocab, tok.eos_token_id)
    batch = build_batch([(g, [item]) for g in groups], None, current_version=0, max_staleness=0, vocab_size=vocab,
                        scale_rewards="none", max_completion_length=L, mask_truncated=True)
    samples = batch.samples
    assert [s.masked for s in samples] == [True, False, True, False, False, True, False, False]
    assert [s.advantage for s in samples][1] == pytest.approx(0.9 - 0.5)  # the group mean counts the masked ones
    # TRL's rule on the same completion ids
    eos_and_pad = [*trl_trainer.eos_token_ids, tok.pad_token_id]
    is_truncated = torch.tensor([s.completion_ids[-1] not in eos_and_pad for s in samples])
    assert is_truncated.tolist() == [s.masked for s in samples]
    b = collate(samples, tok.pad_token_id)
    trl_mask = (b.completion_mask.long() * (~is_truncated).unsqueeze(1).int())
    trl_option(trl_trainer, loss_type=loss_type)
    a, ours, worst, st = _compare(trl_trainer, samples, completion_mask=trl_mask, loss_type=loss_type,
                                  num_tokens=trained_tokens(samples), epsilon=0.2, tis_cap=None)
    assert abs(a - ours) < 1e-5 and worst < 1e-5, (a, ours, worst)
    assert trained_tokens(samples) == float(trl_mask.sum())


def test_soft_overlong_punishment_matches_trl_and_is_judged_after_the_spread():
    from trl.rewards import get_soft_overlong_punishment

    from rewards.overlong import overlong_punishment, soft_overlong_punishment

    ids = [[1] * n for n in range(0, 40)]
    for max_len, buf in ((32, 8), (32, 1), (20, 20)):
        want = get_soft_overlong_punishment(max_completion_len=max_len, soft_punish_cache=buf)(ids)
        assert soft_overlong_punishment(max_len, buf)(completion_ids=ids) == pytest.approx(want, abs=1e-12)
        assert [overlong_punishment(len(x), max_len, buf, 0.5) for x in ids] == pytest.approx(
            [0.5 * w for w in want], abs=1e-12)
    # the learner adds it to the task reward; a group whose task rewards are equal stays degenerate for dynamic
    # sampling although the punishment spreads its final rewards
    comps = [Completion([5] * n, [-1.0] * n, "x", "length" if n == 12 else "stop") for n in (2, 6, 9, 12)]
    g = RolloutGroup("r", "a0", 0, [PromptResult([1, 2], comps)], rewards=[[0.5] * 4])
    item = PromptItem(0, [{"role": "user", "content": "oi"}], {}, "push")
    batch = build_batch([(g, [item])], None, current_version=0, max_staleness=0, vocab_size=10,
                        scale_rewards="none", max_completion_length=12, overlong=(8, 1.0))
    assert batch.rewards == [pytest.approx([0.5, 0.5 - 2 / 8, 0.5 - 5 / 8, 0.5 - 1.0])]  # free up to 12 - 8 = 4
    assert batch.task_rewards == [[0.5] * 4] and batch.degenerate == [True]
    assert sum(abs(s.advantage) for s in batch.samples) > 0 and not math.isnan(batch.samples[0].advantage)
