"""The GPU memory plan (launch.memory) on the real shapes, from the shipped configs, on 24, 40 and 80 GiB.

The parameter and LoRA counts are checked against the model itself (Qwen3 built on the meta device from the
zoo's shapes, LoRA attached by PEFT as the learner does), not against the formula."""

from __future__ import annotations

from pathlib import Path

import pytest

from configs import load_config
from launch.memory import KNOWN_SHAPES, Shape, fit, model_shape, plan_memory, with_updates

REPO = Path(__file__).resolve().parents[2]
V41 = str(REPO / "configs" / "v4_1.yaml")
A3B = str(REPO / "configs" / "v4_2_a_3b.yaml")


def one_gpu(config: str, *over: str):
    """The config as ``--gpus 0`` makes it: one actor replica, one learner rank."""
    return load_config(config, ["actor.replicas=1", "learner.ranks=1", *over])


@pytest.mark.parametrize("size", ["0.5b", "3.7b"])
def test_shape_counts_match_the_model_and_peft(size):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import Qwen3Config, Qwen3ForCausalLM

    from zoo.build import SHAPES

    dims = {k: v for k, v in SHAPES[size].items() if k != "tokenizer_vocab"}
    config = Qwen3Config(**dims, tie_word_embeddings=True)
    shape = KNOWN_SHAPES[f"Polygl0t/Tucano2-qwen-{size.upper()}-Instruct"]
    assert Shape.from_hf(config.to_dict()) == shape
    with torch.device("meta"):
        model = Qwen3ForCausalLM(config)
    assert shape.params == sum(p.numel() for p in model.parameters())
    peft = get_peft_model(model, LoraConfig(r=16, target_modules="all-linear"))
    assert shape.lora_params(16) == sum(p.numel() for n, p in peft.named_parameters() if "lora_" in n)


def test_model_shape_reads_a_local_directory_and_names_an_unknown_model(tiny_model):
    s = model_shape(str(tiny_model))
    assert (s.hidden, s.layers, s.head_dim) == (128, 2, 64)
    with pytest.raises(ValueError, match="cannot size model 'someone/unknown-7B'"):
        model_shape("someone/unknown-7B")


@pytest.mark.parametrize("gib", [24, 40, 80])
def test_v4_1_fits_one_gpu_with_vllm_taking_its_share(gib):
    cfg, plan = fit(one_gpu(V41), gib, shared=True)
    assert plan.fits and plan.need <= gib
    # vLLM's fraction covers its own estimate and no more than a hundredth above it; the learner gets the rest
    assert plan.actor.total <= plan.utilization * gib < plan.actor.total + 0.01 * gib
    assert plan.learner.total <= (1 - plan.utilization) * gib
    assert cfg.actor.gpu_memory_utilization == plan.utilization < 0.3  # TRL's colocate default is 0.3
    # one step's batch at full concurrency: 2 prompts x (1,536-token prompt + 16 x 512) tokens, 112 KiB each
    assert cfg.actor.kv_cache_gb == pytest.approx(2 * (1536 + 16 * 512) * 2 * 28 * 8 * 128 * 2 / 2**30, abs=0.01)
    # activations of 8 x 2,048 tokens through 28 layers (~32 GiB, as launch.learner_memory counts them) need
    # checkpointing below 80 GiB, not at 80
    assert cfg.learner.gradient_checkpointing == (gib < 80)
    assert any("gradient_checkpointing turned on" in n for n in plan.notes) == (gib < 80)


def test_scenario_a_on_one_gpu_fits_40_and_80_and_says_what_fits_on_24():
    for gib in (40, 80):
        cfg, plan = fit(one_gpu(A3B), gib, shared=True)
        assert plan.fits and cfg.learner.gradient_checkpointing
    with pytest.raises(ValueError) as e:
        fit(one_gpu(A3B), 24, shared=True)
    msg = str(e.value)
    assert "\n" not in msg and "does not fit on one 24 GiB GPU" in msg
    assert "would fit: --set learner.micro_batch_size=" in msg and "a second GPU" in msg
    # and the suggestion is true and the largest: the same plan with it fits, one more does not
    mb = int(msg.split("would fit: --set learner.micro_batch_size=")[1].split(";")[0])
    assert 1 <= mb < 8 and fit(one_gpu(A3B, f"learner.micro_batch_size={mb}"), 24, shared=True)[1].fits
    assert not plan_memory(one_gpu(A3B, f"learner.micro_batch_size={mb + 1}", "learner.gradient_checkpointing=true"),
                           24, shared=True).fits


def test_3_7b_on_16_gib_refuses_and_names_the_weights_and_a_second_gpu():
    with pytest.raises(ValueError) as e:
        fit(one_gpu(A3B), 16, shared=True)
    msg = str(e.value)
    assert "the two copies of the weights 14.0" in msg  # 2 x 3.76e9 x 2 bytes
    assert "would fit: a second GPU (--actor-gpus 0 --learner-gpus 1) with --set learner.micro_batch_size=" in msg
    mb = int(msg.rsplit("=", 1)[1])
    assert fit(one_gpu(A3B, f"learner.micro_batch_size={mb}"), 16, shared=False)[1].fits


def test_needs_grow_with_the_knobs_the_refusal_names():
    base = one_gpu(V41, "learner.gradient_checkpointing=true")
    need = lambda **u: plan_memory(with_updates(base, u), 24, shared=True)  # noqa: E731
    ref = need()
    assert need(num_generations=32).actor.total > ref.actor.total
    assert need(num_generations=32).learner.total == ref.learner.total  # G is the actor's KV, not the learner's
    assert need(**{"learner.micro_batch_size": 16}).learner.total > ref.learner.total
    assert need(max_seq_length=4096).need > ref.need
    off = need(**{"learner.gradient_checkpointing": False}).learner.items["activations"]
    assert off > 5 * ref.learner.items["activations"]
    # ZeRO-3 over 4 ranks partitions the frozen weights; ZeRO-2 does not
    four = with_updates(base, {"learner.ranks": 4})
    z3 = plan_memory(with_updates(four, {"learner.zero_stage": 3}), 24, shared=False).learner.items["weights"]
    assert z3 == pytest.approx(plan_memory(four, 24, shared=False).learner.items["weights"] / 4)
    # merged serving has no LoRA slots; fp32 engines need twice the weights
    assert "LoRA slots" not in need(**{"actor.serve_mode": "merged"}).actor.items
    assert need(**{"actor.dtype": "float32"}).actor.items["weights"] == pytest.approx(2 * ref.actor.items["weights"])


def test_dedicated_gpus_check_the_learner_and_vllms_fraction():
    cfg, plan = fit(load_config(A3B), 80, shared=False)  # Scenario A's 4 + 4 on 80 GiB GPUs
    assert plan.fits and plan.actor_share == 0.85 and cfg.actor.kv_cache_gb is None
    with pytest.raises(ValueError, match="does not fit on 16 GiB GPUs .* would fit: --set learner.micro_batch_size="):
        fit(load_config(A3B), 16, shared=False)
