"""Sync channels between real processes: an actor process killed mid-request, fan-out to processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from configs.schema import SyncConfig
from sync.endpoint import ActorEndpoint
from sync.rollout import ZmqRolloutTransport
from sync.weights import ZmqWeightPublisher
from sync.wire import Completion, PromptResult, RolloutGroup, RolloutRequest, SamplingSpec

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]
CFG = SyncConfig(heartbeat_s=0.1)

ACTOR = r"""
import sys, time
from configs.schema import SyncConfig
from sync import tensors as T
from sync.endpoint import ActorEndpoint, serve_forever
from sync.wire import Completion, PromptResult, RolloutGroup

mode, name, rport, wport, shm = sys.argv[1:6]
ep = ActorEndpoint(SyncConfig(heartbeat_s=0.1), name, shm, rollout_port=int(rport), weight_port=int(wport),
                   gate_on_weights=(mode == "serve"))
print("ready", flush=True)
if mode == "hang":  # take requests, never answer
    while True:
        item = ep.poll(1.0)
        if item is not None:
            print("got", getattr(item, "request_id", item), flush=True)
else:
    seen = []
    def load(w):
        seen.append(w.version)
        print("loaded", w.version, flush=True)
        return T.checksum_file(w.adapter_dir / "adapter_model.safetensors")
    def handle(req):
        comps = [Completion([1], [-0.1], "x", "stop")]
        return RolloutGroup(req.request_id, name, ep.version, [PromptResult([1], comps)], {}, meta={"seen": seen})
    print("shutdown:", serve_forever(ep, handle, load, 0.1), flush=True)
    ep.close()
"""


def spawn(tmp_path, mode, name, rport, wport):
    script = tmp_path / "actor_proc.py"
    script.write_text(ACTOR)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    p = subprocess.Popen(
        [sys.executable, str(script), mode, name, str(rport), str(wport), str(tmp_path / name)],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
        cwd=REPO,
    )
    assert p.stdout.readline().strip() == "ready"
    return p


def wait_for(cond, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.05)


def test_killed_actor_process_request_goes_to_other(tmp_path):
    t = ZmqRolloutTransport(CFG, port=0)
    proc = spawn(tmp_path, "hang", "doomed", t.port, 1)
    ep = None
    try:
        wait_for(lambda: "doomed" in t.actors())
        t.submit(RolloutRequest("r0", [[1, 2]], SamplingSpec(1, 1.0, 1.0, 4)))
        assert proc.stdout.readline().strip() == "got r0"
        ep = ActorEndpoint(
            CFG, "survivor", tmp_path / "survivor", rollout_port=t.port, weight_port=1, gate_on_weights=False
        )
        wait_for(lambda: "survivor" in t.actors())
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        req = ep.poll(5)
        assert isinstance(req, RolloutRequest) and req.request_id == "r0"
        ep.send_group(RolloutGroup("r0", "survivor", 0, [PromptResult([1, 2], [Completion([3], [-1.0], "", "stop")])]))
        g = t.receive(5)
        assert g.request_id == "r0" and g.actor_id == "survivor"
        assert t.receive(0.5) is None
        assert "doomed" not in t.actors()
    finally:
        proc.kill()
        if ep is not None:
            ep.close()
        t.close()


def test_weight_fan_out_to_processes_and_late_joiner(tmp_path):
    t = ZmqRolloutTransport(CFG, port=0)
    pub = ZmqWeightPublisher(CFG, port=0)
    procs = []
    try:
        procs = [spawn(tmp_path, "serve", f"p{i}", t.port, pub.port) for i in range(2)]
        wait_for(lambda: len(pub.actors()) == 2)
        sd = {f"base_model.model.model.layers.0.mlp.down_proj.lora_{x}.weight": torch.randn(4, 4) for x in "AB"}
        for v in (1, 2, 3):
            sd = {k: x + 1 for k, x in sd.items()}
            c = pub.publish(v, sd, {"r": 4, "lora_alpha": 8, "target_modules": ["down_proj"]})
            acks = pub.wait_acks(v, 10)
            assert set(acks) == {"p0", "p1"} and all(a.checksum == c for a in acks.values())
        late = spawn(tmp_path, "serve", "late", t.port, pub.port)
        procs.append(late)
        assert late.stdout.readline().split() == ["loaded", "3"]  # the latest first, before any request
        assert pub.wait_acks(3, 10)["late"].ok
        for i in range(3):
            t.submit(RolloutRequest(f"r{i}", [[1]], SamplingSpec(1, 1.0, 1.0, 1), min_version=3))
        groups = [t.receive(10) for _ in range(3)]
        assert all(g is not None and g.version == 3 for g in groups)
        assert sorted(g.request_id for g in groups) == ["r0", "r1", "r2"]
        t.close()  # sends Shutdown
        for p in procs:
            out, _ = p.communicate(timeout=10)
            assert "shutdown: learner closed" in out
    finally:
        for p in procs:
            p.kill()
        t.close()
        pub.close()
