"""Caps per channel (sync.limits): derived from the run, exact for the adapter, and enforced by the decoder
before anything big is allocated."""

from __future__ import annotations

import tracemalloc

import msgpack
import pytest

from configs import load_config
from sync.limits import ChannelLimits, lora_nbytes
from sync.wire import WIRE_VERSION, Completion, PromptResult, RolloutGroup, WireError, decode, encode


def test_lora_nbytes_is_the_adapter_peft_builds(tiny_model):
    import torch
    from peft import LoraConfig, get_peft_model, get_peft_model_state_dict
    from transformers import AutoConfig, AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)
    peft = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, target_modules="all-linear"))
    real = sum(t.numel() * 2 for t in get_peft_model_state_dict(peft).values())  # bf16 on the wire
    assert lora_nbytes(AutoConfig.from_pretrained(tiny_model), 16, 2) == real


@pytest.mark.parametrize("name", ["v4_1.yaml", "v4_2_a_3b.yaml", "smoke_cpu.yaml"])
def test_caps_fit_the_largest_legitimate_group_and_little_more(name):
    cfg = load_config(name)
    lim = ChannelLimits.for_run(cfg)
    n, c = max(cfg.num_generations, 8), cfg.max_completion_length
    # the largest group the learner asks for: long token ids, float64 logprobs, 4 bytes of text per token, and
    # a version run per token (the most a completion can carry: versions alternating at every token)
    runs = [x for i in range(c) for x in (i, 1000 + i % 2)]
    comps = [Completion([49151] * c, [-1.234567] * c, "ãé" * c, "length", runs) for _ in range(n)]
    big = RolloutGroup("train-s9-p0", "node-a0", 3, [PromptResult([49151] * (cfg.max_seq_length - c), comps)],
                       {"generate_s": 1.0}, None, {"kind": "train", "step": 9}, "abc")
    size = sum(len(f) for f in encode(big))
    assert size <= lim.group_bytes
    assert lim.group_bytes < 40 * size  # no blanket 1 GiB any more
    decode(encode(big), lim.group_bytes, lim.max_array_len, lim.max_map_len)  # and it decodes under the caps


def test_a_run_per_token_fits_when_completions_are_most_of_the_sequence():
    """``version_runs`` holds two ints per run: a completion longer than half of ``max_seq_length`` with a run
    per token is a list longer than any token list, and must still decode under the caps."""
    cfg = load_config("smoke_cpu.yaml", ["max_seq_length=100", "max_completion_length=80", "num_generations=2"])
    lim, c = ChannelLimits.for_run(cfg), 80
    runs = [x for i in range(c) for x in (i, i % 2)]
    g = RolloutGroup("r", "a0", 0, [PromptResult([5] * 20, [Completion([7] * c, [-1.0] * c, "x" * c, "length",
                                                                       runs)] * 2)], {}, None, {}, "abc")
    assert decode(encode(g), lim.group_bytes, lim.max_array_len, lim.max_map_len).results[0].completions[0] \
        .version_runs == runs


@pytest.mark.parametrize(
    "payload",
    [
        b"\xdd\xff\xff\xff\xff",  # array32 claiming 4 billion elements
        b"\xdf\xff\xff\xff\xff",  # map32 claiming 4 billion pairs
        b"\xdb\xff\xff\xff\xff",  # str32 claiming 4 GiB
        b"\xc6\xff\xff\xff\xff",  # bin32 claiming 4 GiB
        b"\x91" * 100_000 + b"\xc0",  # 100k levels of nesting
        b"\xdd\x00\x10\x00\x00" + b"\x90" * 2**20,  # a million empty lists (64 MB of Python objects)
    ],
    ids=["array32", "map32", "str32", "bin32", "deep", "empty-lists"],
)
def test_msgpack_bombs_are_refused_in_bounded_memory(payload):
    lim = ChannelLimits.for_run(load_config("v4_1.yaml"))
    tracemalloc.start()
    try:
        with pytest.raises(WireError):
            decode([payload], lim.group_bytes, lim.max_array_len, lim.max_map_len)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 8 * 2**20, f"decoding a refused bomb allocated {peak / 2**20:.1f} MiB"


def test_oversized_message_refused_before_unpacking():
    body = msgpack.packb(["t2", WIRE_VERSION, "bye", {"reason": "x" * 5000}])
    with pytest.raises(WireError, match="exceeds"):
        decode([body], 4096)


def test_default_caps_bound_everything():
    d = ChannelLimits.default()
    assert d.group_bytes < 64 * 2**20 and d.request_bytes < 8 * 2**20 and d.control_bytes == 64 * 2**10


def test_eval_groups_of_several_samples_fit_the_caps():
    """An eval request carries 8 prompts; with ``eval.samples`` each has that many completions."""
    cfg = load_config("smoke_cpu.yaml", ["eval.samples=8", "eval.temperature=1.0"])
    lim, c = ChannelLimits.for_run(cfg), cfg.max_completion_length
    res = [PromptResult([49151] * 200, [Completion([49151] * c, [-1.2345] * c, "ãé" * c, "length")] * 8)] * 8
    g = RolloutGroup("eval-s0-0", "a0", 0, res, {}, None, {"kind": "eval"}, "abc")
    assert sum(len(f) for f in encode(g)) <= lim.group_bytes
    assert lim.group_bytes > ChannelLimits.for_run(load_config("smoke_cpu.yaml")).group_bytes


def test_refusals_are_rate_limited_and_summed_once_at_the_end(caplog):
    import logging
    import time

    from sync._net import Refusals

    r = Refusals(logging.getLogger("t2.refusals"), "rollouts", every_s=30, burst=3)
    with caplog.at_level(logging.INFO, "t2.refusals"):
        for i in range(10):
            r.refuse("message", f"bad {i}")
        r.refuse("ack", "late")
        r.refuse("connection (closed by a peer)", "ipc://x", logging.INFO)  # ordinary: not in the total
        r.flush(time.monotonic() + 31)  # the window ends: the held ones in one line
        r.summary()
    lines = [rec.getMessage() for rec in caplog.records]
    assert lines[:3] == [f"rollouts: refused message: bad {i}" for i in range(3)]
    assert lines[3].startswith("rollouts: refused 9 more in the last")
    assert "(message x7, ack x1, connection (closed by a peer) x1)" in lines[3]
    assert lines[4:] == ["rollouts: refused 11 in total (message x10, ack x1)"]


def test_no_refusal_no_summary_line(caplog):
    import logging

    from sync._net import Refusals

    with caplog.at_level(logging.INFO, "t2.refusals"):
        Refusals(logging.getLogger("t2.refusals"), "weights").summary()
    assert caplog.records == []
