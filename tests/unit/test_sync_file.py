"""``sync.weight_transfer: file`` (one node): the learner writes each version once, the actors link it and check it.
Real sockets, real files on /dev/shm; a fake learner (a bare ROUTER) sends what a broken or hostile one could."""

from __future__ import annotations

import os

import pytest
import torch
from safetensors.torch import load_file

from adapters import ADAPTER, received, state
from configs.schema import SyncConfig
from sync import tensors as T
from sync.carry import KEEP_FILES, resolve_transfer
from sync.endpoint import ActorEndpoint
from sync.interfaces import SyncError
from sync.weights import ZmqWeightPublisher
from sync.wire import Hello, WeightAck, WeightFile, encode

CFG = SyncConfig(heartbeat_s=0.1, max_message_mb=1)


def test_auto_is_file_on_one_node_and_sealed_across():
    assert resolve_transfer(CFG) == "file"
    tcp = SyncConfig(host="10.0.0.1", keys_dir="/tmp/k")
    assert resolve_transfer(tcp) == "sealed"
    with pytest.raises(ValueError, match="sync.weight_transfer file needs every actor on the learner's node"):
        SyncConfig(host="10.0.0.1", keys_dir="/tmp/k", weight_transfer="file")


@pytest.mark.parametrize("same_fs", [True, False])
def test_each_version_is_written_once_and_linked_by_every_actor(tmp_path, same_fs):
    """Same filesystem (the default: both on /dev/shm): one inode for all; else (the actors' directories on
    /tmp here) each actor copies the file, and checks its copy."""
    pub = ZmqWeightPublisher(CFG, port=0, file_dir=tmp_path / "pub" if same_fs else None)
    assert pub.transfer == "file" and oct(pub.file_dir.stat().st_mode & 0o777) == "0o700"
    eps = [ActorEndpoint(CFG, f"a{i}", tmp_path / f"a{i}", weight_port=pub.port, rollout_port=1,
                         gate_on_weights=False) for i in range(2)]
    try:
        for v in range(1, KEEP_FILES + 3):
            sd = state(v)
            checksum = pub.publish(v, sd, ADAPTER)
            for ep in eps:
                w = received(ep)
                assert (w.version, w.checksum) == (v, checksum)
                ep.send_ack(WeightAck(ep.actor_id, v, True, 0.0, w.checksum, learner=w.learner))
            assert set(pub.wait_acks(v, 5)) == {"a0", "a1"}
            src = pub.file_dir / f"v{v}.safetensors"
            links = [w_dir / f"v{v}" / "adapter_model.safetensors" for w_dir in (tmp_path / "a0", tmp_path / "a1")]
            assert all((os.stat(p).st_ino == os.stat(src).st_ino) == same_fs for p in links)  # one copy of the bytes
            loaded = load_file(links[0])
            assert all(torch.equal(loaded[k], t.bfloat16()) for k, t in sd.items())
        kept = sorted(int(p.name[1:].split(".")[0]) for p in pub.file_dir.glob("v*.safetensors"))
        assert kept == list(range(3, KEEP_FILES + 3))  # the newest KEEP_FILES
        assert (tmp_path / "a0" / f"v{KEEP_FILES + 2}").is_dir()  # an actor keeps its link whatever the learner prunes
        assert pub.timings[KEEP_FILES + 2]["write_ms"] > 0
    finally:
        for ep in eps:
            ep.close()
        pub.close()
    assert not pub.file_dir.exists()


def test_a_write_that_fails_stops_the_next_publish_in_one_line(tmp_path):
    pub = ZmqWeightPublisher(CFG, port=0, file_dir=tmp_path / "gone")
    try:
        (tmp_path / "gone").rmdir()
        pub.publish(1, state(1), ADAPTER)
        assert pub.flush(5)
        with pytest.raises(SyncError, match=r"publish: cannot write the weights to .*gone: FileNotFoundError"):
            pub.publish(2, state(2), ADAPTER)
    finally:
        pub.close()


def written(path, seed):
    blobs, buf = T.pack(state(seed), "bf16")
    return T.write_file_once(path, blobs, buf), T.checksum(blobs, buf)


def test_the_actor_refuses_a_file_that_is_not_what_was_announced(tmp_path, fake_learner):
    fake = fake_learner(CFG)
    ep = ActorEndpoint(CFG, "victim", tmp_path / "victim", weight_port=fake.port, rollout_port=1,
                       gate_on_weights=False)
    src = tmp_path / "learner"
    src.mkdir()
    try:
        ident, _ = fake.recv(Hello)

        def send(v, path, nbytes, checksum):
            fake.sock.send_multipart([ident, *encode(WeightFile(v, ADAPTER, checksum, str(path), nbytes))])
            return fake.recv(WeightAck)[1]

        n1, c1 = written(src / "v1.safetensors", 1)
        n2, c2 = written(src / "v2.safetensors", 2)
        # another version's bytes under this one's checksum
        ack = send(1, src / "v2.safetensors", n2, c1)
        assert (ack.version, ack.ok) == (1, False) and "checksum mismatch" in ack.error
        # a size other than announced, a size over the cap, a path that is not there, a symlink
        ack = send(2, src / "v1.safetensors", n1 + 1, c1)
        assert not ack.ok and "not a regular file of this user of" in ack.error
        ack = send(3, src / "v1.safetensors", 2 * 2**20, c1)
        assert not ack.ok and "over the 1 MiB this actor accepts" in ack.error
        ack = send(4, src / "v9.safetensors", n1, c1)
        assert not ack.ok and "No such file" in ack.error
        (src / "link.safetensors").symlink_to(src / "v1.safetensors")
        ack = send(5, src / "link.safetensors", n1, c1)
        assert not ack.ok
        assert [p.name for p in (tmp_path / "victim").iterdir()] == []  # nothing refused is left behind
        # the endpoint still runs and takes a good one
        fake.sock.send_multipart([ident, *encode(WeightFile(6, ADAPTER, c1, str(src / "v1.safetensors"), n1))])
        w = received(ep)
        assert (w.version, w.checksum) == (6, c1) and ep.refusals.counts["weight file"] == 5
    finally:
        ep.close()


def test_sync_bench_compares_every_transfer_in_one_run(tmp_path, capsys):
    """``python -m sync.bench`` at a small shape: one table and JSON row per transport and transfer it supports,
    the file's write and the seal timed."""
    import json

    from sync.bench import main

    out = tmp_path / "sync.json"
    assert main(["--shapes", "tiny", "--transports", "ipc,tcp", "--subscribers", "1,2", "--repeats", "2",
                 "--json", str(out)]) == 0
    res = json.loads(out.read_text())
    assert set(res) == {"tiny ipc inline", "tiny ipc file", "tiny tcp+curve inline", "tiny tcp+curve sealed"}
    assert res["tiny ipc file"]["write_ms_p50"] > 0 and res["tiny ipc inline"]["write_ms_p50"] == 0
    assert res["tiny tcp+curve sealed"]["write_ms_p50"] > 0  # the seal
    assert all(r["transport_ms_p50"] > 0 and r["transport_ms_2sub_p50"] > 0 for r in res.values())
    printed = capsys.readouterr().out
    assert "tiny ipc file" in printed and "tiny tcp+curve sealed" in printed
