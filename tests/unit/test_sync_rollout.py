"""Rollout channel over real loopback sockets: load balance, re-send on death, exactly-once delivery."""

from __future__ import annotations

import time

import pytest

from configs.schema import SyncConfig
from sync.endpoint import ActorEndpoint
from sync.interfaces import RolloutTransport
from sync.rollout import ZmqRolloutTransport
from sync.wire import (
    Completion,
    Heartbeat,
    PromptResult,
    RolloutGroup,
    RolloutRequest,
    SamplingSpec,
    Shutdown,
)

CFG = SyncConfig(heartbeat_s=0.1, max_message_mb=4)


def request(i: int, **kw) -> RolloutRequest:
    return RolloutRequest(f"req-{i}", [[1, 2, i]], SamplingSpec(2, 1.0, 1.0, 4, i), **kw)


def group(req: RolloutRequest, actor: str) -> RolloutGroup:
    comps = [Completion([7, 8], [-0.5, -0.25], "ok", "stop") for _ in range(req.sampling.n)]
    return RolloutGroup(req.request_id, actor, 0, [PromptResult(p, comps) for p in req.prompts], {"generate_s": 0.01},
                        learner=req.learner)


@pytest.fixture
def transport():
    t = ZmqRolloutTransport(CFG, port=0)
    yield t
    t.close()


def endpoint(t, name, tmp_path, **kw) -> ActorEndpoint:
    return ActorEndpoint(CFG, name, tmp_path / name, rollout_port=t.port, weight_port=1, gate_on_weights=False, **kw)


def wait_for(cond, timeout=5.0):
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.02)


def drain(ep: ActorEndpoint, timeout=0.5) -> list[RolloutRequest]:
    out = []
    while (item := ep.poll(timeout)) is not None:
        assert isinstance(item, RolloutRequest)
        out.append(item)
    return out


def receive_all(t, n, timeout=5.0) -> list[RolloutGroup]:
    got = []
    deadline = time.monotonic() + timeout
    while len(got) < n and time.monotonic() < deadline:
        g = t.receive(0.1)
        if g is not None:
            got.append(g)
    return got


def test_protocol(transport):
    assert isinstance(transport, RolloutTransport)


def test_load_balances_across_two_actors(transport, tmp_path):
    eps = [endpoint(transport, f"a{i}", tmp_path) for i in range(2)]
    try:
        wait_for(lambda: len(transport.actors()) == 2)
        reqs = [request(i) for i in range(6)]
        for r in reqs:
            transport.submit(r)
        held = {ep.actor_id: drain(ep, 0.3) for ep in eps}
        assert sorted(len(v) for v in held.values()) == [3, 3]
        for ep in eps:
            for r in held[ep.actor_id]:
                ep.send_group(group(r, ep.actor_id))
        got = receive_all(transport, 6)
        assert sorted(g.request_id for g in got) == sorted(r.request_id for r in reqs)
        assert got[0].results[0].completions[0].logprobs == [-0.5, -0.25]
        assert transport.receive(0.3) is None and transport.pending() == 0
    finally:
        for ep in eps:
            ep.close()


def test_dead_actor_request_resent_and_delivered_once(transport, tmp_path):
    a, b = endpoint(transport, "a", tmp_path), endpoint(transport, "b", tmp_path)
    try:
        wait_for(lambda: len(transport.actors()) == 2)
        transport.submit(request(0))
        transport.submit(request(1))
        got_a, got_b = drain(a), drain(b)
        assert len(got_a) == len(got_b) == 1
        a.close()  # dies without answering
        b.send_group(group(got_b[0], "b"))
        resent = [b.poll(3.0)]  # after 5 silent heartbeats, a's request comes to b
        assert [r.request_id for r in resent] == [got_a[0].request_id]
        assert "a" not in transport.actors()
        b.send_group(group(resent[0], "b"))
        got = receive_all(transport, 2)
        assert sorted(g.request_id for g in got) == ["req-0", "req-1"]
        assert transport.receive(0.3) is None
    finally:
        a.close()
        b.close()


def test_duplicate_group_delivered_once(transport, tmp_path):
    a = endpoint(transport, "a", tmp_path)
    try:
        wait_for(lambda: "a" in transport.actors())
        transport.submit(request(0))
        (r,) = drain(a)
        a.send_group(group(r, "a"))
        a.send_group(group(r, "a"))
        a.send_group(group(request(42), "a"))  # never submitted
        assert transport.receive(5).request_id == "req-0"
        assert transport.receive(0.5) is None
        assert transport.dropped_duplicates == 1
    finally:
        a.close()


def test_unanswered_request_times_out_to_other_actor(tmp_path):
    t = ZmqRolloutTransport(CFG, port=0, request_timeout_s=0.3)
    a, b = endpoint(t, "a", tmp_path), endpoint(t, "b", tmp_path)
    try:
        wait_for(lambda: len(t.actors()) == 2)
        t.submit(request(0))
        wait_for(lambda: _owner(t, "req-0") != "?")
        slow, other = (a, b) if _owner(t, "req-0") == "a" else (b, a)
        first = slow.poll(2)
        assert first.request_id == "req-0"
        again = [other.poll(3.0)]  # the slow actor is alive (heartbeats) but silent about the request
        assert [r.request_id for r in again] == ["req-0"]
        other.send_group(group(again[0], other.actor_id))
        slow.send_group(group(first, slow.actor_id))  # the late answer: one of the two is dropped
        assert t.receive(5).request_id == "req-0"
        assert t.receive(0.5) is None
        assert t.dropped_duplicates == 1
    finally:
        a.close()
        b.close()
        t.close()


def _owner(t, rid):
    with t._cv:
        return t._assigned.get(rid, ("?",))[0]


def test_restarted_actor_requests_resent(transport, tmp_path):
    a = endpoint(transport, "a", tmp_path)
    b = None
    try:
        wait_for(lambda: "a" in transport.actors())
        transport.submit(request(0))
        assert len(drain(a)) == 1
        inc = transport.actors()["a"].incarnation
        a.close()
        a2 = endpoint(transport, "a", tmp_path)  # same id, new incarnation: the old work is lost
        b = a2
        wait_for(lambda: transport.actors().get("a") is not None and transport.actors()["a"].incarnation != inc)
        r = a2.poll(3.0)
        a2.send_group(group(r, "a"))
        assert transport.receive(5).request_id == "req-0"
    finally:
        a.close()
        if b is not None:
            b.close()


def test_heartbeats_and_min_version_gate(transport, tmp_path):
    a = endpoint(transport, "a", tmp_path)
    try:
        a.heartbeat(Heartbeat("a", 0, 0, 0, 321.0))
        wait_for(lambda: transport.actors().get("a") is not None and transport.actors()["a"].tokens_per_s == 321.0)
        transport.submit(request(0, min_version=2))
        transport.submit(request(1))
        got = drain(a)
        assert [r.request_id for r in got] == ["req-1"]  # req-0 held until v2 is served
        wait_for(lambda: transport.actors()["a"].queue_depth == 1 and transport.actors()["a"].in_flight == 1)
    finally:
        a.close()


def test_close_shuts_actors_down(tmp_path):
    t = ZmqRolloutTransport(CFG, port=0)
    a = endpoint(t, "a", tmp_path)
    try:
        wait_for(lambda: "a" in t.actors())
        t.close()
        assert isinstance(a.poll(5), Shutdown)
    finally:
        a.close()
        t.close()


def test_submit_refuses_duplicate_ids(transport):
    from sync.interfaces import SyncError

    transport.submit(request(0))
    with pytest.raises(SyncError, match="already submitted"):
        transport.submit(request(0))


def test_inproc_implementations_keep_the_contract():
    import torch

    from sync import tensors as T
    from sync.inproc import InprocRolloutTransport, InprocWeightPublisher
    from sync.interfaces import SyncError, WeightPublisher

    t = InprocRolloutTransport(lambda r: group(r, "inproc-0"))
    assert isinstance(t, RolloutTransport)
    t.submit(request(0))
    assert t.receive(5).request_id == "req-0" and t.receive(0.05) is None
    t.close()
    good = InprocWeightPublisher({"a": lambda v, blobs, cfg: T.checksum(blobs)})
    assert isinstance(good, WeightPublisher)
    c = good.publish(1, {"x": torch.ones(2, 2)}, {"r": 2})
    assert good.wait_acks(1, 1)["a"].checksum == c
    bad = InprocWeightPublisher({"a": lambda v, blobs, cfg: "xxh3_128:0"})
    bad.publish(1, {"x": torch.ones(2, 2)}, {"r": 2})
    with pytest.raises(SyncError, match="checksum"):
        bad.wait_acks(1, 1)


def test_a_message_with_more_frames_than_the_protocol_sends_is_dropped(transport, tmp_path):
    """Each frame is under the size cap, but there are many: dropped whole and counted; the channel goes on."""
    import zmq

    from sync._net import connect_address
    from sync.wire import Hello, encode

    ctx = zmq.Context()
    peer = ctx.socket(zmq.DEALER)
    peer.setsockopt(zmq.IDENTITY, b"many")
    peer.setsockopt(zmq.LINGER, 0)
    peer.connect(connect_address(CFG, transport.port))
    ep = endpoint(transport, "ours", tmp_path)
    try:
        hello = encode(Hello("many", "x", 0))
        peer.send_multipart([*hello, *([b"\x00" * 1024] * 5000)])  # 5 MB over 5,001 frames of 1 KB
        wait_for(lambda: transport.refusals.counts.get("message with too many frames", 0) == 1)
        assert "many" not in transport.actors()  # its Hello was in the dropped message
        transport.submit(request(1))
        got = ep.poll(5.0)  # the request, then nothing more (drain waits its timeout out after the last one)
        assert isinstance(got, RolloutRequest) and drain(ep) == []
        ep.send_group(group(got, "ours"))
        assert [g.request_id for g in receive_all(transport, 1)] == ["req-1"]
        peer.send_multipart(hello)  # the same peer's well-formed message is read as ever
        wait_for(lambda: "many" in transport.actors())
    finally:
        ep.close()
        peer.close(0)
        ctx.term()
