"""The offline Tucano2-family builder: real shapes by count, the tiny model in transformers and PEFT."""

from __future__ import annotations

import hashlib
import json

import pytest
import torch

from zoo import build_model
from zoo.build import count_parameters


@pytest.mark.parametrize("shape,expected", [("0.5b", 490_799_104), ("3.7b", 3_759_341_056)])
def test_real_shapes_have_the_real_parameter_counts(shape, expected):
    assert count_parameters(shape) == expected


def test_tiny_model_is_a_tucano2_shaped_hf_directory(tiny_model):
    cfg = json.loads((tiny_model / "config.json").read_text())
    assert cfg["model_type"] == "qwen3" and cfg["tie_word_embeddings"] is True and cfg["head_dim"] == 64
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model)
    text = tok.apply_chat_template([{"role": "user", "content": "Avaliação: chegou rápido, nota 4,5"}],
                                   tokenize=False, add_generation_prompt=True)
    assert text == "<|im_start|>user\nAvaliação: chegou rápido, nota 4,5<|im_end|>\n<|im_start|>assistant\n"
    ids = tok(text)["input_ids"]
    assert tok.decode(ids) == text  # byte-level BPE: lossless on PT-BR accents
    assert tok.eos_token == "<|im_end|>" and tok.convert_tokens_to_ids("<|im_start|>") in ids
    model = AutoModelForCausalLM.from_pretrained(tiny_model)
    assert model.get_input_embeddings().weight.data_ptr() == model.get_output_embeddings().weight.data_ptr()
    out = model.generate(torch.tensor([ids]), max_new_tokens=5, do_sample=False)
    assert out.shape[1] == len(ids) + 5 or tok.eos_token_id in out[0, len(ids):].tolist()


def test_tiny_model_takes_a_peft_lora(tiny_model):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model)
    peft_model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, target_modules="all-linear",
                                                  lora_dropout=0.0))
    names = [n for n, p in peft_model.named_parameters() if p.requires_grad]
    # 7 linear layers (q, k, v, o, gate, up, down) x 2 layers x (A, B); the tied lm_head is left alone.
    assert len(names) == 28 and all("lora_" in n for n in names)
    loss = peft_model(input_ids=torch.tensor([[5, 6, 7, 8]]), labels=torch.tensor([[5, 6, 7, 8]])).loss
    loss.backward()
    assert all(p.grad is not None for n, p in peft_model.named_parameters() if "lora_B" in n)


def test_build_is_deterministic_and_atomic(tmp_path):
    a = build_model(tmp_path / "a", shape="tiny", seed=3)
    b = build_model(tmp_path / "b", shape="tiny", seed=3)
    c = build_model(tmp_path / "c", shape="tiny", seed=4)

    def digest(d):
        blob = (d / "model.safetensors").read_bytes() + (d / "tokenizer.json").read_bytes()
        return hashlib.sha256(blob).hexdigest()

    assert digest(a) == digest(b) != digest(c)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b", "c"]  # no temporary leftovers


def test_pretrain_lowers_loss_and_writes_a_loadable_model(tiny_model, commerce_data, tmp_path):
    from transformers import AutoModelForCausalLM

    from zoo.pretrain import pretrain

    out = pretrain(tiny_model, tmp_path / "pt", db_path=commerce_data / "commerce.db", steps=30, batch=4,
                   block=64, log=lambda *_: None)
    meta = json.loads((out / "zoo.json").read_text())["pretrain"]
    assert meta["loss_last"] < meta["loss_first"] - 1.0
    AutoModelForCausalLM.from_pretrained(out)
    assert [p.name for p in tmp_path.iterdir()] == ["pt"]
