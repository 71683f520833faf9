"""Weight channel over real loopback sockets: fan-out, late joiners, refusals, acks."""

from __future__ import annotations

import logging
import threading
import time

import msgpack
import pytest
import torch
from safetensors.torch import load_file

from configs.schema import SyncConfig
from sync import tensors as T
from sync.endpoint import ActorEndpoint
from sync.interfaces import ReceivedWeights, SyncError
from sync.weights import ZmqWeightPublisher
from sync.wire import WIRE_VERSION, Shutdown, TensorBlob, WeightAck, WeightUpdate, encode

CFG = SyncConfig(heartbeat_s=0.1, max_message_mb=1)
ADAPTER = {"r": 2, "lora_alpha": 4, "target_modules": {"q_proj", "v_proj"}, "peft_type": "LORA"}


def state(seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        f"base_model.model.model.layers.0.self_attn.{m}.lora_{ab}.weight": torch.randn(shape, generator=g)
        for m in ("q_proj", "v_proj")
        for ab, shape in (("A", (2, 8)), ("B", (8, 2)))
    }


class Actor:
    """An endpoint plus a serve loop in a thread that loads by re-reading the written file."""

    def __init__(self, pub, name, tmp_path, ack_checksum=None):
        self.ep = ActorEndpoint(CFG, name, tmp_path / name, weight_port=pub.port, rollout_port=1, gate_on_weights=False)
        self.received: list[ReceivedWeights] = []
        self.ack_checksum = ack_checksum
        self.thread = threading.Thread(target=self._loop, daemon=True)
        self.thread.start()

    def _loop(self):
        while True:
            item = self.ep.poll(0.05)
            if isinstance(item, Shutdown):
                return
            if isinstance(item, ReceivedWeights):  # "load" = re-read the written file, ack its checksum
                self.received.append(item)
                got = self.ack_checksum or T.checksum_file(item.adapter_dir / "adapter_model.safetensors")
                self.ep.send_ack(WeightAck(self.ep.actor_id, item.version, True, 0.0, got, learner=item.learner))

    def close(self):
        with self.ep._cv:
            self.ep._shutdown = Shutdown("test over")
            self.ep._cv.notify_all()
        self.thread.join(5)
        self.ep.close()


@pytest.fixture
def pub():
    p = ZmqWeightPublisher(CFG, port=0)
    yield p
    p.close()


def wait_for(cond, timeout=5.0):
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.02)


def test_two_actors_receive_and_ack_every_version(pub, tmp_path):
    actors = [Actor(pub, f"a{i}", tmp_path) for i in range(2)]
    try:
        wait_for(lambda: len(pub.actors()) == 2)
        for v in (1, 2, 3):
            sd = state(v)
            checksum = pub.publish(v, sd, ADAPTER)
            acks = pub.wait_acks(v, 5)
            assert set(acks) == {"a0", "a1"}
            assert all(a.ok and a.version == v and a.checksum == checksum for a in acks.values())
        for a in actors:
            assert [w.version for w in a.received] == [1, 2, 3]
            last = a.received[-1]
            assert last.adapter_config["target_modules"] == ["q_proj", "v_proj"]
            loaded = load_file(last.adapter_dir / "adapter_model.safetensors")
            assert loaded.keys() == sd.keys()
            for k, t in sd.items():  # bf16 on the wire by default
                assert loaded[k].dtype == torch.bfloat16 and torch.equal(loaded[k], t.bfloat16())
        assert pub.latest_version() == 3
    finally:
        for a in actors:
            a.close()


def test_late_actor_gets_latest_first(pub, tmp_path):
    for v in (1, 2, 3):
        pub.publish(v, state(v), ADAPTER)
    late = Actor(pub, "late", tmp_path)
    try:
        acks = pub.wait_acks(3, 5)
        assert acks["late"].version == 3
        assert [w.version for w in late.received] == [3]
        assert late.ep.version == 3
    finally:
        late.close()


def test_gate_holds_requests_until_latest_served(pub, tmp_path):
    pub.publish(1, state(1), ADAPTER)
    ep = ActorEndpoint(CFG, "g", tmp_path / "g", weight_port=pub.port, rollout_port=1)
    try:
        first = ep.poll(5)
        assert isinstance(first, ReceivedWeights) and first.version == 1
        ep.send_ack(WeightAck("g", 1, True, 0.0, first.checksum, learner=first.learner))
        assert pub.wait_acks(1, 5)["g"].ok
    finally:
        ep.close()


def test_wait_acks_raises_on_checksum_mismatch(pub, tmp_path):
    bad = Actor(pub, "bad", tmp_path, ack_checksum="xxh3_128:" + "0" * 32)
    try:
        wait_for(lambda: "bad" in pub.actors())
        pub.publish(1, state(1), ADAPTER)
        with pytest.raises(SyncError, match="bad acked v1 with checksum"):
            pub.wait_acks(1, 5)
    finally:
        bad.close()


def test_wait_acks_raises_on_timeout_and_failed_load(pub, tmp_path):
    ep = ActorEndpoint(CFG, "mute", tmp_path / "mute", weight_port=pub.port, rollout_port=1)
    try:
        wait_for(lambda: "mute" in pub.actors())
        pub.publish(1, state(1), ADAPTER)
        with pytest.raises(SyncError, match="timed out .* v1 from mute"):
            pub.wait_acks(1, 0.5)
        w = ep.poll(5)
        ep.send_ack(WeightAck("mute", w.version, False, 0.0, "", "engine refused it", w.learner))
        with pytest.raises(SyncError, match="failed to load v1: engine refused it"):
            pub.wait_acks(1, 5)
    finally:
        ep.close()
    wait_for(lambda: not pub.actors())  # silent for 5 heartbeats: presumed dead, no longer awaited
    with pytest.raises(SyncError, match="timed out"):  # nobody connected at all
        pub.wait_acks(1, 0.2)


def test_wait_acks_ends_when_stop_turns_true(pub):
    """Ctrl-C while no actor is left to ack: the learner stops waiting at once, not after the timeout."""
    pub.publish(1, state(1), ADAPTER)
    t_stop = time.monotonic() + 0.3
    t0 = time.monotonic()
    with pytest.raises(SyncError, match="interrupted while waiting for acks of v1"):
        pub.wait_acks(1, 60, stop=lambda: time.monotonic() > t_stop)
    assert time.monotonic() - t0 < 30


def test_publish_refuses_old_versions_and_oversized(pub):
    pub.publish(2, state(2), ADAPTER)
    with pytest.raises(SyncError, match="not newer"):
        pub.publish(2, state(3), ADAPTER)
    with pytest.raises(SyncError, match="over what actors accept"):
        pub.publish(3, {"big": torch.zeros(1024, 1024)}, ADAPTER)  # 2 MiB in bf16 > 1 MiB


# --------------------------------------------------------------- refusals, with a hand-driven learner



def update(version: int, seed: int) -> WeightUpdate:
    blobs, buf = T.pack(state(seed), "bf16")
    return WeightUpdate(version, {"r": 2}, blobs, T.checksum(blobs, buf), buf)


def test_endpoint_refuses_bad_updates_and_keeps_serving(tmp_path, caplog, fake_learner):
    caplog.set_level(logging.INFO, logger="sync")
    fake = fake_learner(CFG)
    ep = ActorEndpoint(CFG, "victim", tmp_path / "victim", weight_port=fake.port, rollout_port=1, gate_on_weights=False)
    try:
        from sync.wire import Hello

        ident, _ = fake.recv(Hello)
        good = update(1, 1)
        fake.send(ident, encode(good))
        w = ep.poll(5)
        assert isinstance(w, ReceivedWeights) and w.version == 1
        ep.send_ack(WeightAck("victim", 1, True, 0.0, w.checksum))
        fake.recv(WeightAck)

        # corrupted checksum: refused with an ok=False ack
        u = update(2, 2)
        u.checksum = "xxh3_128:" + "f" * 32
        fake.send(ident, encode(u))
        _, ack = fake.recv(WeightAck)
        assert (ack.version, ack.ok) == (2, False) and "checksum mismatch" in ack.error

        # truncated tensor frame
        frames = [bytes(f) for f in encode(update(3, 3))]
        fake.send(ident, [frames[0], frames[1][:-2]])
        _, ack = fake.recv(WeightAck)
        assert (ack.version, ack.ok) == (3, False) and "truncated" in ack.error

        # oversized in total (each frame under MAXMSGSIZE, so it reaches decode)
        blobs = {f"t{i}": TensorBlob("BF16", (300_000,), bytes(600_000)) for i in range(2)}
        big = WeightUpdate(4, {"r": 2}, blobs, T.checksum(blobs))
        fake.send(ident, encode(big))
        _, ack = fake.recv(WeightAck)
        assert (ack.version, ack.ok) == (4, False) and "exceeds" in ack.error

        # malformed header: dropped with a logged reason
        fake.send(ident, [msgpack.packb(["t2", WIRE_VERSION, "wu", {"version": "five"}])])

        # out of order: an older version with another checksum is dropped, logged
        old = update(1, 99)
        fake.send(ident, encode(old))
        # the endpoint still runs, still serves v1, and accepts the next good version
        time.sleep(0.3)
        assert ep.poll(0.1) is None and ep.version == 1
        fake.send(ident, encode(update(5, 5)))
        w = ep.poll(5)
        assert isinstance(w, ReceivedWeights) and w.version == 5
        text = caplog.text
        assert "out-of-order weight update: v1 (have v1)" in text
        assert "expected int" in text
        assert not (tmp_path / "victim" / "v2").exists() and not (tmp_path / "victim" / "v3").exists()
    finally:
        ep.close()


def test_learner_resumed_from_older_checkpoint(tmp_path):
    first = ZmqWeightPublisher(CFG, port=0)
    port = first.port
    for v in (1, 2, 3):
        first.publish(v, state(v), ADAPTER)
    actor = Actor(first, "a", tmp_path)  # connects after all three: gets the latest only
    try:
        first.wait_acks(3, 5)
        first.close()  # the learner dies; a new one resumes from its v2 checkpoint on the same port
        second = ZmqWeightPublisher(CFG, port=port)
        try:
            second.publish(2, state(22), ADAPTER)
            acks = second.wait_acks(2, 5)
            assert acks["a"].version == 2 and actor.ep.version == 2
            second.publish(3, state(33), ADAPTER)
            assert second.wait_acks(3, 5)["a"].ok
            assert [w.version for w in actor.received] == [3, 2, 3]  # published before it connected: latest only
        finally:
            second.close()
    finally:
        actor.close()


def test_sync_dirs_of_dead_actors_are_swept(tmp_path):
    """A SIGKILLed actor cannot remove its /dev/shm directory: the next endpoint on the box does."""
    import os
    import subprocess

    from sync.endpoint import _default_shm_dir

    gone = subprocess.Popen(["true"])
    gone.wait()
    dead = tmp_path / f"tucano2-sync-p{gone.pid}-A-x1"
    (dead / "v3").mkdir(parents=True)
    alive = _default_shm_dir("B", base=tmp_path)            # ours: this process is alive
    other = tmp_path / "unrelated-dir"
    other.mkdir()
    fresh = _default_shm_dir("C", base=tmp_path)
    assert not dead.exists()
    assert alive.is_dir() and fresh.is_dir() and other.is_dir()
    assert fresh.name.startswith(f"tucano2-sync-p{os.getpid()}-C-")


def test_a_new_learner_takes_over_an_actor_serving_a_newer_version(tmp_path):
    """The learner dies while its actor serves v3 and holds its requests; a new learner (resumed from an
    older checkpoint) binds the same ports with a new incarnation. The actor serves nothing until it loaded
    the new learner's v1; the old learner's queued request is dropped, its in-flight answer is not taken by
    the new learner even though the request id is the same, and then the new learner's requests flow."""
    from sync.rollout import ZmqRolloutTransport
    from sync.wire import Completion, PromptResult, RolloutGroup, RolloutRequest, SamplingSpec

    def req(rid):
        return RolloutRequest(rid, [[1, 2]], SamplingSpec(1, 1.0, 1.0, 2), 0)

    t1 = ZmqRolloutTransport(CFG, port=0, incarnation="L1")
    p1 = ZmqWeightPublisher(CFG, port=0, incarnation="L1")
    ports = (t1.port, p1.port)
    ep = ActorEndpoint(CFG, "a", tmp_path / "a", rollout_port=ports[0], weight_port=ports[1])
    try:
        for v in (0, 1, 2, 3):
            p1.publish(v, state(v), ADAPTER)
        w = ep.poll(5)
        while w.version < 3:  # a slow machine may take an older update before the newer ones arrive
            w = ep.poll(5)
        assert w.version == 3 and w.learner == "L1"
        ep.send_ack(WeightAck("a", 3, True, 0.0, w.checksum, learner=w.learner))
        p1.wait_acks(3, 5)
        t1.submit(req("train-s4-p0"))
        in_flight = ep.poll(5)
        assert in_flight.request_id == "train-s4-p0" and in_flight.learner == "L1"
        t1.submit(req("train-s4-p1"))
        wait_for(lambda: len(ep._requests) == 1)  # queued at the actor, not started
        t1.close(shutdown_actors=False)  # the learner dies (SIGKILL: no Shutdown)
        p1.close()

        t2 = ZmqRolloutTransport(CFG, port=ports[0], incarnation="L2")
        p2 = ZmqWeightPublisher(CFG, port=ports[1], incarnation="L2")
        try:
            t2.submit(req("train-s4-p0"))  # the resumed learner asks for the same step again
            wait_for(lambda: ep.dropped_foreign == 1)  # L1's queued request is gone
            assert ep.poll(1.0) is None  # serving L1's v3, nothing from L2 loaded yet: nothing is served
            comps = [Completion([3], [-1.0], "x", "stop")]
            ep.send_group(RolloutGroup("train-s4-p0", "a", 3, [PromptResult([1, 2], comps)]))  # L1's answer
            wait_for(lambda: t2.dropped_foreign == 1)
            assert t2.receive(0.3) is None and t2.pending() == 1
            p2.publish(1, state(11), ADAPTER)  # older than what the actor serves: taken anyway
            w = ep.poll(5)
            assert isinstance(w, ReceivedWeights) and (w.version, w.learner) == (1, "L2")
            ep.send_ack(WeightAck("a", 1, True, 0.0, w.checksum, learner=w.learner))
            assert p2.wait_acks(1, 5)["a"].ok and ep.version == 1
            mine = ep.poll(5)
            assert (mine.request_id, mine.learner) == ("train-s4-p0", "L2")
            ep.send_group(RolloutGroup(mine.request_id, "a", 1, [PromptResult([1, 2], comps)]))
            g = t2.receive(5)
            assert (g.request_id, g.version, g.learner) == ("train-s4-p0", 1, "L2")
            p2.publish(3, state(33), ADAPTER)  # v3 again, now the new learner's: sent, not mistaken for L1's
            assert isinstance(ep.poll(5), ReceivedWeights)
        finally:
            t2.close(shutdown_actors=False)
            p2.close()
    finally:
        ep.close()


def test_a_request_already_held_is_not_taken_twice(tmp_path):
    from sync.rollout import ZmqRolloutTransport
    from sync.wire import RolloutRequest, SamplingSpec

    t = ZmqRolloutTransport(CFG, port=0, request_timeout_s=0.2)  # one actor: re-sends go back to it
    ep = ActorEndpoint(CFG, "solo", tmp_path / "solo", rollout_port=t.port, weight_port=1, gate_on_weights=False)
    try:
        wait_for(lambda: "solo" in t.actors())
        t.submit(RolloutRequest("r", [[1]], SamplingSpec(1, 1.0, 1.0, 1)))
        first = ep.poll(5)
        wait_for(lambda: t.resent >= 2)  # re-sent twice while "generating"
        wait_for(lambda: ep.dropped_duplicates >= 2)
        assert ep.poll(0.3) is None  # the copies are not handed out again
        assert first.request_id == "r"
    finally:
        ep.close()
        t.close()
