"""One node: the channels are Unix sockets in a private directory that only this user can enter."""

from __future__ import annotations

import os
import stat

import pytest

from configs.schema import SyncConfig
from sync.endpoint import ActorEndpoint
from sync.interfaces import SyncError
from sync.rollout import ZmqRolloutTransport
from sync.wire import RolloutRequest, SamplingSpec


def test_loopback_means_ipc_in_a_0700_directory(tmp_path):
    cfg = SyncConfig(ipc_dir=tmp_path / "ipc", heartbeat_s=0.1)
    assert cfg.kind == "ipc"
    t = ZmqRolloutTransport(cfg, port=0)
    ep = ActorEndpoint(cfg, "a", tmp_path / "shm", rollout_port=t.port, weight_port=1, gate_on_weights=False)
    try:
        d = tmp_path / "ipc"
        assert stat.S_IMODE(d.stat().st_mode) == 0o700 and (d / f"p{t.port}.sock").is_socket()
        t.submit(RolloutRequest("r", [[1]], SamplingSpec(1, 1.0, 1.0, 1)))
        assert ep.poll(5).request_id == "r"
    finally:
        ep.close()
        t.close()
    assert not (tmp_path / "ipc" / f"p{t.port}.sock").exists()  # removed on close


@pytest.mark.skipif(os.getuid() != 0, reason="chown to another user needs root")
def test_a_directory_others_can_enter_or_own_is_refused(tmp_path):
    open_dir, foreign, link = tmp_path / "open", tmp_path / "foreign", tmp_path / "link"
    open_dir.mkdir(mode=0o755)
    open_dir.chmod(0o755)
    foreign.mkdir(mode=0o700)
    os.chown(foreign, 65534, 65534)
    link.symlink_to(tmp_path)
    for d, why in ((open_dir, "other users may enter it"), (foreign, "owned by uid 65534"), (link, "symlink")):
        with pytest.raises(SyncError, match=why):
            ZmqRolloutTransport(SyncConfig(ipc_dir=d), port=0)
        with pytest.raises(SyncError, match=why):
            ActorEndpoint(SyncConfig(ipc_dir=d), "a", tmp_path / "shm", rollout_port=5, weight_port=6)


def test_a_second_run_on_the_same_ports_is_refused_and_stale_files_are_reused(tmp_path):
    cfg = SyncConfig(ipc_dir=tmp_path / "ipc")
    first = ZmqRolloutTransport(cfg, port=0)
    try:
        with pytest.raises(SyncError, match="in use by another run"):
            ZmqRolloutTransport(cfg, port=first.port)
    finally:
        first.close()
    stale = tmp_path / "ipc" / "p31000.sock"  # a learner killed with SIGKILL leaves its socket file
    import socket

    s = socket.socket(socket.AF_UNIX)
    s.bind(str(stale))
    s.close()
    again = ZmqRolloutTransport(cfg, port=31000)
    again.close()
