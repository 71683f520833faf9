"""``python -m actor`` processes driven by sync's learner side (ZmqRolloutTransport, ZmqWeightPublisher).

One scenario over the module, in file order, with two actor processes in all (engine starts are
~17 s): actor A (merged mode) serves from the start; bad updates are thrown at it; actor B (adapter
mode) starts after several updates; both acknowledge the next version; A is killed mid-request; B is
stopped with SIGTERM. Bad updates are made on the learner side by corrupting what the real publisher
sends (the adversary is the test).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid

import pytest

from configs.schema import SyncConfig
from sync import SyncError
from sync import tensors as T
from sync.rollout import ZmqRolloutTransport
from sync.weights import ZmqWeightPublisher, jsonable
from sync.wire import RolloutRequest, SamplingSpec, WeightUpdate

pytestmark = pytest.mark.slow
TOL = 1e-3
HEARTBEAT_S = 0.5
START_S = 240


class Cluster:
    def __init__(self, kit, tmp):
        self.kit = kit
        self.tmp = tmp
        self.cfg = SyncConfig(heartbeat_s=HEARTBEAT_S, request_timeout_s=120.0)
        self.transport = ZmqRolloutTransport(self.cfg, port=0)
        # inline: the bad-update test mangles the tensor frames on the wire (the file transfer's hostile cases are
        # in tests/unit/test_sync_file.py; the launched runs use it)
        self.publisher = ZmqWeightPublisher(self.cfg, port=0, transfer="inline")
        self.actors: dict[str, object] = {}
        self.adapters: dict[int, object] = {}   # version -> adapter dir (the reference's view)
        self.good: list[int] = []

    def start_actor(self, name: str, mode: str, replica: int):
        overrides = [f"model_id={self.kit.model}", f"actor.serve_mode={mode}", "actor.cpu_threads=1",
                     f"sync.rollout_port={self.transport.port}", f"sync.weight_port={self.publisher.port}",
                     f"sync.heartbeat_s={HEARTBEAT_S}", "sync.max_message_mb=1"]
        a = self.kit.ActorProc(self.kit.config, overrides, self.tmp / f"{name}.log", replica=replica,
                               actor_id=name, extra_args=["--grace-s", "60"])
        self.actors[name] = a
        self.kit.wait_for(lambda: name in self.transport.actors(), START_S, f"{name} to connect", proc=a)
        a.snapshot_children()
        return a

    def publish_good(self, seed: int | None = None) -> int:
        v = self.publisher.latest_version() + 1
        d = self.tmp / f"adapter-v{v}"
        self.kit.make_adapter(self.kit.model, d, seed=seed if seed is not None else v)
        tensors, config = self.kit.adapter_tensors(d)
        self.publisher.publish(v, tensors, config)
        self.adapters[v] = d
        self.good.append(v)
        return v

    def request(self, n=16, max_tokens=24, seed=3, min_version=-1, **meta) -> str:
        rid = uuid.uuid4().hex[:8]
        self.transport.submit(RolloutRequest(rid, [self.kit.chat], SamplingSpec(n, 1.0, 1.0, max_tokens, seed),
                                             min_version, meta))
        return rid

    def groups(self, rids, timeout=120.0) -> dict:
        out, deadline = {}, time.monotonic() + timeout
        while set(rids) - set(out):
            assert time.monotonic() < deadline, f"groups missing: {set(rids) - set(out)}\n{self.logs()}"
            g = self.transport.receive(0.5)
            if g is not None:
                assert g.request_id not in out, "a group was delivered twice"
                out[g.request_id] = g
        return out

    def one(self, **kw):
        rid = self.request(**kw)
        return self.groups([rid])[rid]

    def logs(self) -> str:
        return "\n".join(f"--- {n}\n{a.log()[-2500:]}" for n, a in self.actors.items())

    def assert_matches(self, group, version):
        res = group.results[0]
        toks = [c.token_ids for c in res.completions]
        ref = self.kit.reference.logprobs(self.adapters.get(version), res.prompt_token_ids, toks)
        got = [c.logprobs for c in res.completions]
        diff = max(abs(x - y) for a, b in zip(got, ref, strict=True) for x, y in zip(a, b, strict=True))
        assert diff < TOL, f"v{version}: logprobs differ from transformers+PEFT by {diff}"

    def close(self):
        import shutil
        from pathlib import Path

        for name, a in self.actors.items():
            a.kill_all()
            for d in Path("/dev/shm").glob(f"tucano2-sync-{name}-*"):   # a killed endpoint's directory
                shutil.rmtree(d, ignore_errors=True)
        self.transport.close(shutdown_actors=False)
        self.publisher.close()


@pytest.fixture(scope="module")
def cluster(actor_kit, tmp_path_factory):
    c = Cluster(actor_kit, tmp_path_factory.mktemp("actors"))
    try:
        c.start_actor("A", "merged", replica=0)
        yield c
    finally:
        c.close()


def test_actor_serves_a_request(cluster):
    g = cluster.one()
    assert g.actor_id == "A" and g.version == -1 and len(g.results) == 1  # base weights: nothing published
    res = g.results[0]
    assert len(res.completions) == 16
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(cluster.kit.model)
    for c in res.completions:
        assert len(c.logprobs) == len(c.token_ids) > 0
        assert all(x == x and x <= 0 and x > -1e9 for x in c.logprobs)
        assert tok.decode(c.token_ids, skip_special_tokens=True) == c.text
    assert g.timings["gen_tokens"] == sum(len(c.token_ids) for c in res.completions)
    cluster.assert_matches(g, -1)
    hb = cluster.transport.actors()["A"]
    assert hb.version == -1


def test_updates_are_followed_exactly(cluster):
    for _ in range(2):
        v = cluster.publish_good()
        acks = cluster.publisher.wait_acks(v, 60)
        assert acks["A"].ok and acks["A"].version == v
        g = cluster.one(min_version=v)   # same prompt and seed each time: the prefix cache is warm
        assert g.version == v
        cluster.assert_matches(g, v)


def _acked(cluster, version, timeout=30.0):
    def ack():
        a = cluster.publisher.acked().get("A")
        return a if a is not None and a.version == version else None

    return cluster.kit.wait_for(ack, timeout, f"an ack of v{version}", proc=cluster.actors["A"])


def test_bad_updates_are_refused_and_previous_version_kept(cluster, monkeypatch):
    import sync.weights as W

    if not cluster.good:
        cluster.publish_good()
        cluster.publisher.wait_acks(cluster.good[-1], 60)
    served = cluster.good[-1]
    real_encode = W.encode
    tensors, config = cluster.kit.adapter_tensors(cluster.adapters[served])

    def corrupt(frames):      # flip bytes of the tensor data after the checksum was computed
        data = bytearray(frames[1])
        data[:16] = bytes(b ^ 0xFF for b in data[:16])
        return [frames[0], bytes(data), *frames[2:]]

    def truncate(frames):     # the last tensor frame cut short
        return [*frames[:-1], bytes(frames[-1])[:-10]]

    cases = {
        "wrongly signed": dict(checksum="xxh3_128:" + "0" * 32),
        "corrupted": dict(mangle=corrupt),
        "truncated": dict(mangle=truncate),
        "oversized": dict(extra=True),
    }
    for what, case in cases.items():
        v = cluster.publisher.latest_version() + 1
        ts = dict(tensors)
        if case.get("extra"):   # 3 x 0.5 MiB frames: each under the actor's 1 MiB frame limit, 1.5 MiB in all
            import torch

            for i in range(3):
                ts[f"base_model.model.pad{i}.lora_A.weight"] = torch.zeros(256, 512, dtype=torch.float32)
        blobs = {n: T.TensorBlob("F32", tuple(t.shape), t.contiguous().numpy().tobytes()) for n, t in ts.items()}
        if "mangle" in case:
            monkeypatch.setattr(W, "encode", lambda m, f=case["mangle"]: f(real_encode(m))
                                if isinstance(m, WeightUpdate) else real_encode(m))
        cluster.publisher.publish_blobs(v, blobs, jsonable(config), checksum=case.get("checksum"))
        ack = _acked(cluster, v)
        monkeypatch.setattr(W, "encode", real_encode)
        assert not ack.ok, f"{what} update v{v} was accepted"
        with pytest.raises(SyncError):
            cluster.publisher.wait_acks(v, 5)
    g = cluster.one()
    assert g.version == served, "the actor should still serve the last good version"
    cluster.assert_matches(g, served)
    assert cluster.actors["A"].proc.poll() is None


def test_late_actor_serves_latest_and_both_ack(cluster):
    while len(cluster.good) < 3:
        cluster.publish_good()
    v = cluster.publish_good()        # three good updates at least before B starts
    cluster.publisher.wait_acks(v, 60)
    cluster.start_actor("B", "adapter", replica=1)
    acks = cluster.publisher.wait_acks(v, START_S, min_actors=2)
    assert set(acks) == {"A", "B"} and all(a.ok for a in acks.values())
    # B's first groups come from the latest version, never the base model
    rids = [cluster.request(seed=s) for s in range(4)]
    groups = cluster.groups(rids).values()
    from_b = [g for g in groups if g.actor_id == "B"]
    assert from_b, "B got no request"
    for g in groups:
        assert g.version == v
    cluster.assert_matches(from_b[0], v)
    # and every following version is acknowledged by both
    v2 = cluster.publish_good()
    acks = cluster.publisher.wait_acks(v2, 60, min_actors=2)
    assert set(acks) == {"A", "B"} and all(a.version == v2 and a.ok for a in acks.values())


def test_killing_an_actor_mid_request_loses_no_group(cluster):
    if "B" not in cluster.actors:
        cluster.start_actor("B", "adapter", replica=1)
    a = cluster.actors["A"]
    a.snapshot_children()

    def held_by_a():
        return {r for r, aid in cluster.transport.assignments().items() if aid == "A"}

    def generating():   # A holds requests and a heartbeat says it is generating them
        hb = cluster.transport.actors().get("A")
        return held_by_a() if hb is not None and hb.in_flight > 0 else set()

    # On a loaded box the test can be descheduled for seconds, long enough for A to finish what it held
    # (CI saw it). So A is frozen first (SIGSTOP, its EngineCore included): from then on what A holds it
    # cannot answer, and what it sent before the freeze has a moment to reach the learner.
    rids, held = [], set()
    for attempt in range(4):
        rids += [cluster.request(n=16, max_tokens=600, seed=4 * attempt + s, ignore_eos=True) for s in range(4)]
        cluster.kit.wait_for(generating, 60, "A to generate a request", proc=a)
        os.killpg(a.pid, signal.SIGSTOP)
        time.sleep(0.5)
        held = held_by_a()            # the learner's view of what A holds unanswered at the kill
        if held:
            break
        os.killpg(a.pid, signal.SIGCONT)   # A finished all it held before the freeze: once more
    assert held, "A answered everything it held before each of 4 freezes"
    a.kill_all()                      # SIGKILL, EngineCore included
    groups = cluster.groups(rids, timeout=300)
    assert set(groups) == set(rids)
    assert {g.actor_id for g in groups.values()} <= {"A", "B"}
    for g in groups.values():
        assert len(g.results[0].completions) == 16
        assert all(len(c.token_ids) == 600 for c in g.results[0].completions)
    # What A held unanswered when it was frozen was re-sent and B answered it
    assert {groups[r].actor_id for r in held} == {"B"}, f"A held {held} at the kill"
    assert cluster.transport.resent >= len(held)
    cluster.kit.wait_for(lambda: "A" not in cluster.transport.actors(), 30, "A to be declared dead")


def test_sigterm_exits_zero_with_no_child_left(cluster):
    if "B" not in cluster.actors:
        cluster.start_actor("B", "adapter", replica=1)
    b = cluster.actors["B"]
    b.snapshot_children()
    assert b.descendants, "the actor should have EngineCore children"
    before = cluster.transport.actors()["B"]
    rid = cluster.request(n=16, max_tokens=400, ignore_eos=True)

    def taken():   # a heartbeat newer than the submission says B is generating it
        hb = cluster.transport.actors()["B"]
        return hb is not before and hb.in_flight > 0

    cluster.kit.wait_for(taken, 60, "B to take the request", proc=b)
    b.signal(signal.SIGTERM)
    assert b.wait(120) == 0, b.log()[-3000:]
    assert cluster.groups([rid], timeout=30)[rid].actor_id == "B", "the request in flight is finished"
    time.sleep(0.5)
    assert b.alive_descendants() == [], b.log()[-3000:]


def test_non_loopback_bind_without_keys_is_refused(actor_kit):
    p = subprocess.run([sys.executable, "-m", "actor", "--config", str(actor_kit.config),
                        "--set", f"model_id={actor_kit.model}", "--set", "sync.host=0.0.0.0"],
                       capture_output=True, text=True, timeout=120, cwd=actor_kit.config.parent.parent)
    assert p.returncode == 2
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and "keys_dir" in lines[0], p.stderr
