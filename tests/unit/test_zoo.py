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


def test_small_shape_is_the_demo_stand_in():
    """Four layers, head_dim 64 (vLLM's CPU attention), ~2M parameters with the 2,048-token tokenizer."""
    from zoo.build import SHAPES

    s = SHAPES["small"]
    assert (s["num_hidden_layers"], s["head_dim"], s["hidden_size"] // s["num_attention_heads"]) == (4, 64, 64)
    assert 1_500_000 < count_parameters("small") < 2_500_000


def test_pretrain_texts_hold_out_eval_and_join_train_pairs(commerce_data):
    from commerce.schema import ENRICHED_DOC
    from zoo.pretrain import pretrain_texts, read_pairs

    train, held = commerce_data / "pairs" / "train.jsonl", commerce_data / "pairs" / "eval.jsonl"
    texts, _ = pretrain_texts(commerce_data / "commerce.db", train, held)
    blob = "\n".join(texts)
    eval_prompts = [u for u, _ in read_pairs(held)]
    assert eval_prompts and not any(u.split("\n\n")[-1] in blob for u in eval_prompts)  # not even the question
    docs = set(texts)
    pairs = read_pairs(train)
    sql = [(u, a) for u, a in pairs if u.startswith(ENRICHED_DOC)]
    other = [(u, a) for u, a in pairs if not u.startswith(ENRICHED_DOC)]
    assert all(f"{u}\n\n{a}" in docs for u, a in other)  # prompt and answer as one document
    with_doc = sum(f"{u}\n\n{a}" in docs for u, a in sql)
    without = sum(f"{u[len(ENRICHED_DOC):].lstrip()}\n\n{a}" in docs for u, a in sql)
    assert with_doc + without == len(sql) and with_doc == len(sql) // 20  # the schema text once in 20
    assert not any(t == a for _, a in pairs for t in texts)  # no answer alone, apart from its prompt


def test_task_documents_add_other_seeds_up_to_the_caps_without_eval_prompts(commerce_data):
    import json

    from zoo.pretrain import read_pairs, task_documents

    train, held = commerce_data / "pairs" / "train.jsonl", commerce_data / "pairs" / "eval.jsonl"
    eval_prompts = {u for u, _ in read_pairs(held)}
    caps = {"extraction": 300, "sql_qa": 200, "insights": 150, "push": 250}
    docs = task_documents(commerce_data / "commerce.db", train, eval_prompts, caps)
    prompts = [d.rsplit("\n\n", 1)[0] for d in docs]
    assert len(prompts) == len(set(prompts)) and not eval_prompts & set(prompts)
    n_train = {t: 0 for t in caps}
    for line in train.read_text().splitlines():
        n_train[json.loads(line)["task"]] += 1
    assert len(docs) == sum(caps.values()) > sum(min(n, caps[t]) for t, n in n_train.items())
