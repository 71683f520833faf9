"""``sync.weight_transfer: sealed`` (across nodes): the learner encrypts each version once, every actor fetches it.
Real TCP + CURVE sockets on loopback and real endpoints; a fake learner (bare sockets) sends what a broken or hostile
one could, and a plain client at the fetch port plays the network attacker."""

from __future__ import annotations

import doctest
import subprocess
import sys

import pytest
import torch
import zmq
from safetensors.torch import load_file

from adapters import ADAPTER, received, state
from configs.schema import SyncConfig
from sync import seal
from sync import tensors as T
from sync.carry import resolve_transfer
from sync.endpoint import ActorEndpoint
from sync.weights import ZmqWeightPublisher
from sync.wire import Fetch, Hello, Sealed, WeightAck, WeightSealed, WeightUpdate, decode, encode


@pytest.fixture(scope="module")
def cfg(tmp_path_factory):
    keys = tmp_path_factory.mktemp("keys") / "k"
    subprocess.run([sys.executable, "-m", "sync.keys", str(keys)], check=True, capture_output=True)
    return SyncConfig(heartbeat_s=0.1, max_message_mb=1, transport="tcp", keys_dir=keys)


def test_seal_doctests():
    assert doctest.testmod(seal).failed == 0


def test_auto_is_sealed_across_nodes_and_sealed_needs_tcp(cfg):
    assert resolve_transfer(cfg) == "sealed"
    with pytest.raises(ValueError, match="sync.weight_transfer sealed is for actors across nodes"):
        SyncConfig(weight_transfer="sealed")
    with pytest.raises(ValueError, match="sync.fetch_port 29611 is taken"):
        SyncConfig(transport="tcp", keys_dir="/tmp/k", fetch_port=29611)


def test_each_version_is_sealed_once_and_fetched_by_every_actor(cfg, tmp_path):
    pub = ZmqWeightPublisher(cfg, port=0)
    assert pub.transfer == "sealed" and pub.fetch_port > 0
    eps = [ActorEndpoint(cfg, f"a{i}", tmp_path / f"a{i}", weight_port=pub.port, rollout_port=1,
                         gate_on_weights=False) for i in range(2)]
    try:
        for v in range(1, 5):
            sd = state(v)
            checksum = pub.publish(v, sd, ADAPTER)
            for ep in eps:
                w = received(ep)
                assert (w.version, w.checksum) == (v, checksum)
                loaded = load_file(w.adapter_dir / "adapter_model.safetensors")
                assert all(torch.equal(loaded[k], t.bfloat16()) for k, t in sd.items())
                ep.send_ack(WeightAck(ep.actor_id, v, True, 0.0, w.checksum, learner=w.learner))
            assert set(pub.wait_acks(v, 5)) == {"a0", "a1"}
            assert pub.timings[v]["seal_ms"] > 0
        assert sorted(pub._fetchable) == [3, 4]  # the newest two are kept for fetching
    finally:
        for ep in eps:
            ep.close()
        pub.close()


def test_the_fetch_port_gives_nothing_without_the_ticket_and_only_sealed_bytes_with_it(cfg, tmp_path):
    """A plain client on the network: a guessed ticket, a wrong message and garbage get no answer and are
    counted; a ticket sniffed off the wire buys sealed bytes that do not contain the tensors and open only with
    the key the actors got over CURVE."""
    pub = ZmqWeightPublisher(cfg, port=0)
    ep = ActorEndpoint(cfg, "ours", tmp_path / "ours", weight_port=pub.port, rollout_port=1, gate_on_weights=False)
    ctx = zmq.Context()
    spy = ctx.socket(zmq.DEALER)
    spy.setsockopt(zmq.LINGER, 0)
    spy.connect(f"tcp://127.0.0.1:{pub.fetch_port}")
    try:
        sd = state(1)
        pub.publish(1, sd, ADAPTER)
        received(ep)
        for frames in (encode(Fetch(1, "0" * 32)), encode(Fetch(7, "0" * 32)), encode(Hello("evil", "e", 0)),
                       [b"\xdd\xff\xff\xff\xff"]):
            spy.send_multipart(frames)
        assert spy.poll(1000) == 0
        assert pub.refusals.counts["fetch"] == 4
        ticket = pub._fetchable[1][0].decode()  # as if sniffed off the network
        spy.send_multipart(encode(Fetch(1, ticket)))
        assert spy.poll(5000)
        head, s_header, s_tensors = spy.recv_multipart()
        assert decode([head]) == Sealed(1, pub.incarnation)
        plain = bytes(T.pack(sd, "bf16")[1])
        assert plain not in s_tensors and plain[:64] not in s_tensors
        with pytest.raises(ValueError, match="failed authentication"):
            seal.open_sealed(seal.new_key(), s_header, s_tensors)
    finally:
        spy.close(0)
        ctx.term()
        ep.close()
        pub.close()


def sealed_update(v: int, seed: int, key: bytes, learner: str = "L"):
    blobs, buf = T.pack(state(seed), "bf16")
    checksum = T.checksum(blobs, buf)
    header, tensors = encode(WeightUpdate(v, ADAPTER, blobs, checksum, buf, learner))
    s_head, s_tensors = seal.seal(key, header, tensors)
    return checksum, [*encode(Sealed(v, learner)), s_head, bytes(s_tensors)]


def test_the_actor_refuses_sealed_frames_that_are_not_what_was_announced(cfg, tmp_path, fake_learner):
    fake = fake_learner(cfg)
    ep = ActorEndpoint(cfg, "victim", tmp_path / "victim", weight_port=fake.port, rollout_port=1,
                       gate_on_weights=False)
    try:
        ident, _ = fake.recv(Hello)

        def announce(v, checksum, key, nbytes=1000, ticket="t"):
            fake.sock.send_multipart([ident, *encode(WeightSealed(v, checksum, key.hex(), ticket, fake.fetch_port,
                                                                  nbytes, "L"))])
            return fake.recv(Fetch, sock=fake.fetch)

        # altered in transit: every fetch gets flipped bytes; after three the actor acks ok=False, nothing written
        key = seal.new_key()
        c1, answer = sealed_update(1, 1, key)
        fid, f = announce(1, c1, key)
        assert (f.version, f.ticket) == (1, "t")
        bad = bytearray(answer[2])
        bad[5] ^= 1
        for attempt in range(3):
            fake.fetch.send_multipart([fid, *answer[:2], bytes(bad)])
            if attempt < 2:
                fake.recv(Fetch, sock=fake.fetch)  # asked again at once
        _, ack = fake.recv(WeightAck)
        assert (ack.version, ack.ok) == (1, False) and "failed authentication" in ack.error
        # another version's sealed update under this version's notice (a replay): refused
        c2, _ = sealed_update(2, 2, key)
        _, old = sealed_update(1, 1, key)
        fid, _ = announce(2, c2, key)
        fake.fetch.send_multipart([fid, *encode(Sealed(2, "L")), *old[1:]])
        _, ack = fake.recv(WeightAck)
        assert (ack.version, ack.ok) == (2, False) and "not the version announced" in ack.error
        # a notice of more than the actor accepts is refused before anything is fetched
        fake.sock.send_multipart([ident, *encode(WeightSealed(3, c2, key.hex(), "t", fake.fetch_port, 2**30, "L"))])
        _, ack = fake.recv(WeightAck)
        assert (ack.version, ack.ok) == (3, False) and "over the" in ack.error
        assert fake.fetch.poll(300) == 0
        assert not list((tmp_path / "victim").glob("v*"))
        # and a good one still goes through
        key4 = seal.new_key()
        c4, answer = sealed_update(4, 4, key4)
        fid, _ = announce(4, c4, key4)
        fake.fetch.send_multipart([fid, *answer])
        w = received(ep)
        assert (w.version, w.checksum) == (4, c4)
    finally:
        ep.close()


def test_a_restarted_learner_on_another_fetch_port_is_fetched_from(cfg, tmp_path):
    """The learner dies and a new one (a new incarnation, its fetch port another free one) publishes: the actor
    follows the port its notices name."""
    first = ZmqWeightPublisher(cfg, port=0)
    port = first.port
    ep = ActorEndpoint(cfg, "a", tmp_path / "a", weight_port=port, rollout_port=1, gate_on_weights=False)
    try:
        first.publish(1, state(1), ADAPTER)
        w = received(ep)
        ep.send_ack(WeightAck("a", 1, True, 0.0, w.checksum, learner=w.learner))
        first.wait_acks(1, 5)
        old_fetch = first.fetch_port
        first.close()
        second = ZmqWeightPublisher(cfg, port=port)
        try:
            assert second.fetch_port != old_fetch and second.incarnation != first.incarnation
            checksum = second.publish(1, state(2), ADAPTER)  # the same version number, another learner
            w = received(ep, timeout=10)
            assert (w.version, w.checksum, w.learner) == (1, checksum, second.incarnation)
        finally:
            second.close()
    finally:
        ep.close()
