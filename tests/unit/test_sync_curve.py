"""CURVE authentication and key files: refused without keys, works with them, wrong keys get nothing."""

from __future__ import annotations

import shutil
import stat
import subprocess
import sys
import time

import pytest
from pydantic import ValidationError

from configs.schema import SyncConfig
from sync.endpoint import ActorEndpoint
from sync.interfaces import SyncError
from sync.rollout import ZmqRolloutTransport
from sync.weights import ZmqWeightPublisher
from sync.wire import RolloutRequest, SamplingSpec


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    d = tmp_path_factory.mktemp("keys") / "k"
    subprocess.run([sys.executable, "-m", "sync.keys", str(d)], check=True, capture_output=True)
    return d


def test_keys_command_writes_private_files(keys):
    files = sorted(p.relative_to(keys).as_posix() for p in keys.rglob("*") if p.is_file())
    assert files == ["authorized/client.key", "client.key", "client.key_secret", "server.key", "server.key_secret"]
    for p in keys.rglob("*"):
        mode = stat.S_IMODE(p.stat().st_mode)
        assert mode == (0o700 if p.is_dir() else 0o600), (p, oct(mode))
    assert stat.S_IMODE(keys.stat().st_mode) == 0o700
    again = subprocess.run([sys.executable, "-m", "sync.keys", str(keys)], capture_output=True, text=True)
    assert again.returncode == 2 and "already holds keys" in again.stderr


def test_tcp_without_keys_refused(tmp_path):
    for cfg in ({"host": "0.0.0.0"}, {"transport": "tcp"}):
        with pytest.raises(ValidationError, match="TCP channels always use CURVE"):
            SyncConfig(**cfg)
    unchecked = SyncConfig.model_construct(host="0.0.0.0", keys_dir=None, transport="auto")  # bypasses the validator
    for cls in (ZmqRolloutTransport, ZmqWeightPublisher):
        with pytest.raises(SyncError, match="require CURVE authentication: set sync.keys_dir"):
            cls(unchecked, port=0)
    missing = SyncConfig(transport="tcp", keys_dir=tmp_path / "nowhere")  # valid config, keys not on disk
    for cls in (ZmqRolloutTransport, ZmqWeightPublisher):
        with pytest.raises(SyncError, match="server.key_secret is missing"):
            cls(missing, port=0)
    with pytest.raises(SyncError, match="client.key_secret is missing"):
        ActorEndpoint(missing, "a", tmp_path / "shm", rollout_port=1, weight_port=2)


def _serve_one(t, ep, rid):
    t.submit(RolloutRequest(rid, [[1]], SamplingSpec(1, 1.0, 1.0, 1)))
    return ep.poll(5)


def test_tcp_on_loopback_uses_curve_and_authenticated_client_works(keys, tmp_path):
    cfg = SyncConfig(heartbeat_s=0.1, transport="tcp", keys_dir=keys)
    t = ZmqRolloutTransport(cfg, port=0)
    ep = ActorEndpoint(cfg, "good", tmp_path / "shm", rollout_port=t.port, weight_port=1, gate_on_weights=False)
    try:
        req = _serve_one(t, ep, "r1")
        assert isinstance(req, RolloutRequest) and req.request_id == "r1"
        assert "good" in t.actors()
    finally:
        ep.close()
        t.close()


def test_curve_wrong_key_or_plain_client_gets_nothing(keys, tmp_path):
    import zmq

    other = tmp_path / "other"
    subprocess.run([sys.executable, "-m", "sync.keys", str(other)], check=True, capture_output=True)
    wrong = tmp_path / "wrong"  # the right server public key, an unauthorised client pair
    wrong.mkdir()
    shutil.copy(keys / "server.key", wrong / "server.key")
    shutil.copy(other / "client.key", wrong / "client.key")
    shutil.copy(other / "client.key_secret", wrong / "client.key_secret")
    cfg = SyncConfig(heartbeat_s=0.1, transport="tcp", keys_dir=keys)
    t = ZmqRolloutTransport(cfg, port=0)
    intruder = ActorEndpoint(cfg.model_copy(update={"keys_dir": wrong}), "intruder", tmp_path / "s1",
                             rollout_port=t.port, weight_port=1, gate_on_weights=False)
    ctx = zmq.Context()
    plain = ctx.socket(zmq.DEALER)  # no CURVE at all: a client speaking plain ZMTP to the TCP port
    plain.setsockopt(zmq.IDENTITY, b"plain")
    plain.connect(f"tcp://127.0.0.1:{t.port}")
    try:
        from sync.wire import Hello, encode

        plain.send_multipart(encode(Hello("plain", "x", 0)))
        t.submit(RolloutRequest("r1", [[1]], SamplingSpec(1, 1.0, 1.0, 1)))
        time.sleep(1.0)  # ten heartbeat periods
        assert t.actors() == {}
        assert intruder.poll(0.2) is None and plain.poll(200) == 0
        assert t.pending() == 1
        assert t.refusals.counts[next(k for k in t.refusals.counts if "handshake" in k)] >= 1
    finally:
        intruder.close()
        plain.close(0)
        ctx.term()
        t.close()
