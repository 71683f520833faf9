"""sync.wire: every message type round-trips; anything malformed is refused with WireError only."""

from __future__ import annotations

import subprocess
import sys

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sync import tensors as T
from sync.wire import (
    WIRE_VERSION,
    Completion,
    Heartbeat,
    Hello,
    PromptResult,
    RolloutGroup,
    RolloutRequest,
    SamplingSpec,
    Shutdown,
    TensorBlob,
    WeightAck,
    WeightUpdate,
    Welcome,
    WireError,
    decode,
    encode,
)


def _weight_update(version: int = 3) -> WeightUpdate:
    blobs = {
        "b.lora_B.weight": TensorBlob("F32", (2, 3), bytes(range(24))),
        "a.lora_A.weight": TensorBlob("BF16", (3, 2), bytes(range(100, 112))),
    }
    return WeightUpdate(version, {"r": 2, "lora_alpha": 4, "target_modules": ["q_proj"]}, blobs, T.checksum(blobs))


MESSAGES = [
    RolloutRequest(
        "req-1",
        [[{"role": "user", "content": "Olá"}]],
        SamplingSpec(4, 1.0, 0.9, 32, 7),
        min_version=2,
        meta={"kind": "train", "step": 3},
    ),
    RolloutRequest("req-2", [[1, 2, 3], [4]], SamplingSpec(2, 0.7, 1.0, 8, None)),
    RolloutGroup(
        "req-1",
        "actor-0",
        2,
        [
            PromptResult(
                [1, 2], [Completion([5, 6], [-0.5, -1.25], "oi", "stop"), Completion([7], [-0.1], "x", "length")]
            )
        ],
        {"generate_s": 1.5},
        rewards=[[0.5, 1.0]],
        meta={"kind": "eval"},
    ),
    RolloutGroup("req-2", "actor-1", 0, [], {}),
    WeightAck("actor-0", 3, True, 0.25, "xxh3_128:00", None),
    WeightAck("actor-0", 4, False, 0.0, "", "checksum mismatch"),
    Heartbeat("actor-0", 3, 2, 1, 1234.5, "abc"),
    Hello("actor-0", "abc", 0),
    Welcome(5),
    Shutdown("done"),
]


@pytest.mark.parametrize("msg", MESSAGES, ids=lambda m: type(m).__name__)
def test_round_trip(msg):
    assert decode(encode(msg)) == msg


def test_round_trip_weight_update_per_tensor_and_packed():
    u = _weight_update()
    d = decode(encode(u))
    assert (d.version, d.adapter_config, d.checksum) == (u.version, u.adapter_config, u.checksum)
    assert {n: (t.dtype, t.shape, bytes(t.data)) for n, t in d.tensors.items()} == {
        n: (t.dtype, t.shape, bytes(t.data)) for n, t in u.tensors.items()
    }
    assert T.checksum(d.tensors, d.buffer) == u.checksum
    # packed: one contiguous data frame in name order
    buf = b"".join(bytes(u.tensors[n].data) for n in sorted(u.tensors))
    packed = WeightUpdate(
        3,
        u.adapter_config,
        {
            n: TensorBlob(t.dtype, t.shape, memoryview(buf)[o : o + t.nbytes])
            for n, t, o in [
                ("a.lora_A.weight", u.tensors["a.lora_A.weight"], 0),
                ("b.lora_B.weight", u.tensors["b.lora_B.weight"], 12),
            ]
        },
        u.checksum,
        buf,
    )
    frames = encode(packed)
    assert len(frames) == 2
    d2 = decode(frames)
    assert bytes(d2.buffer) == buf and T.checksum(d2.tensors, d2.buffer) == u.checksum


def test_ints_widen_to_float_fields():
    frames = [
        msgpack.packb(
            ["t2", WIRE_VERSION, "hb",
             {"actor_id": "a", "version": 1, "queue_depth": 0, "in_flight": 0, "tokens_per_s": 10}]
        )
    ]
    assert decode(frames).tokens_per_s == 10.0


def _hdr(tag, body):
    return msgpack.packb(["t2", WIRE_VERSION, tag, body], use_bin_type=True)


@pytest.mark.parametrize(
    "frames, reason",
    [
        ([], "no frames"),
        ([b"\xc1"], "not msgpack"),
        ([_hdr("nope", {})], "unknown tag"),
        ([msgpack.packb(["t2", 99, "bye", {"reason": "x"}])], "wire version"),
        ([msgpack.packb(["xx", WIRE_VERSION, "bye", {"reason": "x"}])], "bad magic"),
        ([_hdr("bye", {"reason": 5})], "expected str"),
        ([_hdr("bye", {})], "missing field"),
        ([_hdr("bye", {"reason": "x"}), b"extra"], "expected 1 frame"),
        (
            [_hdr("hb", {"actor_id": "a", "version": "1", "queue_depth": 0, "in_flight": 0, "tokens_per_s": 1.0})],
            "expected int",
        ),
        (
            [_hdr("hb", {"actor_id": "a", "version": True, "queue_depth": 0, "in_flight": 0, "tokens_per_s": 1.0})],
            "expected int",
        ),
        (
            [
                _hdr(
                    "req",
                    {
                        "request_id": "r",
                        "prompts": [[1, "x"]],
                        "sampling": {"n": 1, "temperature": 1.0, "top_p": 1.0, "max_tokens": 1},
                    },
                )
            ],
            "matches none",
        ),
        (
            [
                _hdr(
                    "grp",
                    {
                        "request_id": "r",
                        "actor_id": "a",
                        "version": 0,
                        "results": [{"prompt_token_ids": [1], "completions": [{}]}],
                    },
                )
            ],
            "missing field",
        ),
        ([msgpack.packb(["t2", WIRE_VERSION, "bye", {"reason": "x"}]) + b"trailing"], "not msgpack"),
        (
            [
                msgpack.packb(
                    [
                        "t2",
                        1,
                        "req",
                        {
                            "request_id": "r",
                            "prompts": [],
                            "meta": msgpack.ExtType(5, b"x"),
                            "sampling": {"n": 1, "temperature": 1.0, "top_p": 1.0, "max_tokens": 1},
                        },
                    ]
                )
            ],
            "extension",
        ),
    ],
)
def test_refused(frames, reason):
    with pytest.raises(WireError, match=reason):
        decode(frames)


def _group_with_runs(token_ids, runs):
    comp = {"token_ids": token_ids, "logprobs": [-1.0] * len(token_ids), "text": "x", "finish_reason": "stop",
            "version_runs": runs}
    return [_hdr("grp", {"request_id": "r", "actor_id": "a", "version": 3,
                         "results": [{"prompt_token_ids": [1], "completions": [comp]}]})]


def test_version_runs_round_trip_and_spans():
    c = Completion([5, 6, 7, 8, 9], [-0.5] * 5, "oi", "length", [0, 3, 2, 4])
    g = RolloutGroup("r", "a", 3, [PromptResult([1], [c, Completion([5], [-0.1], "x", "stop")])])
    d = decode(encode(g))
    assert d == g
    assert d.results[0].completions[0].runs(3) == [(0, 2, 3), (2, 5, 4)]
    assert d.results[0].completions[1].runs(3) == [(0, 1, 3)]  # none sent: every token by the group's version
    decode(_group_with_runs([5, 6], [0, 3, 1, 4]))  # a run per token is the most there can be


@pytest.mark.parametrize(
    "tokens, runs, reason",
    [
        ([5, 6, 7], [0, 3, 1], "odd length"),
        ([5, 6, 7], [1, 3], "starts at token 1, not 0"),
        ([5, 6, 7], [0, 3, 2, 4, 2, 5], "do not rise"),
        ([5, 6, 7], [0, 3, 1, 4, 0, 5], "do not rise"),
        ([5, 6, 7], [0, 3, 3, 4], "starts at token 3 of a 3-token"),
        ([], [0, 3, 1, 4], "starts at token 1 of a 0-token"),
        ([5, 6, 7], [0, -2], "version -2"),
        ([5, 6, 7], [0, 3, 1, 3], "neighbouring runs of version 3"),
        ([5, 6, 7], [0, "3"], "list of ints"),
    ],
)
def test_version_runs_refused(tokens, runs, reason):
    with pytest.raises(WireError, match=reason) as e:
        decode(_group_with_runs(tokens, runs))
    assert "version_runs" in str(e.value) and "\n" not in str(e.value)


def test_weight_update_refusals():
    frames = encode(_weight_update())
    head = bytes(frames[0])
    good = [head, *[bytes(f) for f in frames[1:]]]
    decode(good)
    with pytest.raises(WireError, match="truncated|holds"):
        decode([head, good[1][:-1], good[2]])
    with pytest.raises(WireError, match="bad frame reference"):
        decode([head, good[1]])  # a data frame missing
    with pytest.raises(WireError, match="holds"):
        decode([head, good[1] + b"\0", good[2]])  # trailing garbage
    with pytest.raises(WireError, match="exceeds"):
        decode(good, max_bytes=30)
    body = msgpack.unpackb(head)[3]
    body["tensors"][0][1] = "F64"
    with pytest.raises(WireError, match="unknown dtype"):
        decode([_hdr("wu", body), *good[1:]])
    body = msgpack.unpackb(head)[3]
    body["tensors"][0][2] = [5, 5]
    with pytest.raises(WireError, match="do not match"):
        decode([_hdr("wu", body), *good[1:]])
    body = msgpack.unpackb(head)[3]
    body["tensors"][1][0] = body["tensors"][0][0]
    with pytest.raises(WireError, match="repeated"):
        decode([_hdr("wu", body), *good[1:]])


def test_oversized_refused_before_parsing():
    with pytest.raises(WireError, match="exceeds"):
        decode([b"\xc1" * 2000], max_bytes=1000)


def test_encode_refuses_non_messages():
    with pytest.raises(WireError):
        encode({"not": "a message"})
    with pytest.raises(WireError, match="cannot encode"):
        encode(RolloutRequest("r", [], SamplingSpec(1, 1.0, 1.0, 1), meta={"s": {1, 2}}))


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.binary(max_size=200), min_size=0, max_size=4))
def test_fuzz_random_bytes_only_wire_error(frames):
    try:
        decode(frames)
    except WireError:
        pass


_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats() | st.text(max_size=5),
    lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=3), c, max_size=3),
    max_leaves=10,
)


@settings(max_examples=300, deadline=None)
@given(
    st.sampled_from(["req", "grp", "wu", "ack", "hb", "hello", "welcome", "bye"]),
    st.dictionaries(
        st.sampled_from(
            [
                "request_id",
                "actor_id",
                "version",
                "results",
                "prompts",
                "sampling",
                "reason",
                "tensors",
                "checksum",
                "adapter_config",
                "ok",
                "load_s",
                "queue_depth",
                "in_flight",
                "tokens_per_s",
                "incarnation",
            ]
        ),
        _values,
        max_size=8,
    ),
    st.lists(st.binary(max_size=50), max_size=2),
)
def test_fuzz_structured_only_wire_error(tag, body, extra):
    try:
        decode([_hdr(tag, body), *extra])
    except WireError:
        pass


def test_import_without_torch():
    code = "import sys, sync, sync.wire; assert 'torch' not in sys.modules and 'zmq' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
