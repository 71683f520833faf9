"""The SFT warm-up: task-balanced batch order, and a few real steps of the demo's stand-in model."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from learner.sft import BatchOrder, encode_pair


def test_batch_order_unbalanced_is_reshuffled_passes():
    tasks = ["a"] * 6 + ["b"] * 2
    order = BatchOrder(tasks, seed=0)
    first, second = order.take(8), order.take(8)
    assert sorted(first) == sorted(second) == list(range(8)) and first != second


def test_batch_order_balanced_takes_tasks_in_turn():
    tasks = ["a"] * 90 + ["b"] * 10  # 9:1, as extraction is to push in the four-task mix
    order = BatchOrder(tasks, seed=0, balance=True)
    drawn = [tasks[i] for _ in range(10) for i in order.take(8)]
    assert Counter(drawn) == {"a": 40, "b": 40}
    b_idx = [i for _ in range(5) for i in order.take(8) if tasks[i] == "b"]
    assert Counter(b_idx) == {i: 2 for i in range(90, 100)}  # each b once per pass over b's pairs


def test_encode_pair_masks_everything_but_the_answer_and_its_eos(tiny_model):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model)
    ids, labels = encode_pair(tok, [{"role": "user", "content": "Oi"}], "Olá!", 64)
    answer = [t for t in labels if t != -100]
    assert tok.decode(answer) == "Olá!<|im_end|>\n" and len(ids) == len(labels)


@pytest.mark.slow
def test_sft_smoke_on_the_small_stand_in(commerce_data, tmp_path):
    """A few balanced SFT steps of the demo's model shape (random weights) write a loadable PEFT adapter."""
    from configs import load_config
    from learner.sft import run_sft
    from zoo import build_model

    model = build_model(tmp_path / "small", shape="small", seed=0, db_path=commerce_data / "commerce.db")
    cfg = load_config("configs/demo_cpu.yaml", [f"model_id={model}", f"run_dir={tmp_path / 'run'}",
                                                f"data.train_pairs={commerce_data / 'pairs' / 'train.jsonl'}",
                                                "sft.max_steps=3", "sft.batch_size=4"])
    out = run_sft(cfg, log=lambda *_: None, balance=True)
    lines = [json.loads(x) for x in (out.parent / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines] == [1, 2, 3] and all(0 < r["sft/loss"] < 20 for r in lines)
    assert json.loads((out / "adapter_config.json").read_text())["r"] == cfg.lora_r
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(model), str(out))
