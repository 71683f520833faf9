"""Launch plans: the GPU split, the dry run on CPU, and the one-line errors before anything starts."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from launch.plan import LaunchError, cpu_plan, node_plan

REPO = Path(__file__).resolve().parents[2]
A3B = str(REPO / "configs" / "v4_2_a_3b.yaml")


def test_default_split_on_8_gpus(monkeypatch, tmp_path):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1,2,3,4,5,6,7")
    plan = node_plan(A3B, [], actor_gpus=None, learner_gpus=None, tp=None, run_dir=str(tmp_path), check=False)
    assert [a.env["CUDA_VISIBLE_DEVICES"] for a in plan.actors] == ["0", "1", "2", "3"]
    assert "--include" in plan.learner.argv and "localhost:4,5,6,7" in plan.learner.argv
    assert plan.config.actor.replicas == 4 and plan.config.learner.ranks == 4
    assert plan.learner.argv[plan.learner.argv.index("--module") + 1] == "learner"


def test_tensor_parallel_groups_and_uneven_split(monkeypatch, tmp_path):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1,2,3,4,5,6,7")
    plan = node_plan(A3B, [], actor_gpus="0,1,2,3,4,5", learner_gpus=None, tp=2, run_dir=str(tmp_path), check=False)
    assert [a.env["CUDA_VISIBLE_DEVICES"] for a in plan.actors] == ["0,1", "2,3", "4,5"]
    assert plan.config.actor.tensor_parallel_size == 2 and plan.config.learner.ranks == 2
    with pytest.raises(LaunchError, match="tensor parallel size 2"):
        node_plan(A3B, [], actor_gpus="0,1,2", learner_gpus="3", tp=2, run_dir=str(tmp_path), check=False)
    with pytest.raises(LaunchError, match="both actors and learner"):
        node_plan(A3B, [], actor_gpus="0,1", learner_gpus="1,2", tp=1, run_dir=str(tmp_path), check=False)


def test_errors_before_start(monkeypatch, tmp_path, tiny_model):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.setenv("PATH", "/usr/bin:/bin")  # no nvidia-smi on this machine either way
    with pytest.raises(LaunchError, match="no GPUs visible"):
        node_plan(A3B, [], actor_gpus=None, learner_gpus=None, tp=None, run_dir=str(tmp_path))
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    with pytest.raises(LaunchError, match=r"asked for GPUs \[2, 3\] but only 2 are visible"):
        node_plan(A3B, [], actor_gpus="0,1", learner_gpus="2,3", tp=1, run_dir=str(tmp_path))
    with pytest.raises(LaunchError, match="model directory not found"):
        cpu_plan(str(REPO / "configs" / "smoke_cpu.yaml"), [f"model_id={tmp_path / 'nope'}"], run_dir=str(tmp_path))
    data = tmp_path / "data"
    (data / "pairs").mkdir(parents=True)
    for f in ("pairs/train.jsonl", "pairs/eval.jsonl", "commerce.db"):
        (data / f).write_text("")
    base = [f"model_id={tiny_model}", f"data.train_pairs={data}/pairs/train.jsonl",
            f"data.eval_pairs={data}/pairs/eval.jsonl", f"data.db_path={data}/commerce.db"]
    from configs.schema import SyncConfig
    from sync._net import ipc_path

    port = 29999  # another run of this user listens on the same ipc name
    with socket.socket(socket.AF_UNIX) as s:
        path = ipc_path(SyncConfig(), port)
        path.unlink(missing_ok=True)
        s.bind(str(path))
        s.listen()
        try:
            with pytest.raises(LaunchError, match=f"{path} is in use by another run"):
                cpu_plan(str(REPO / "configs" / "smoke_cpu.yaml"), [*base, f"sync.rollout_port={port}"],
                         run_dir=str(tmp_path / "run"))
        finally:
            path.unlink()
    keys = tmp_path / "k"
    subprocess.run([sys.executable, "-m", "sync.keys", str(keys)], check=True, capture_output=True)
    with socket.socket() as s:  # over TCP: a taken port
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        with pytest.raises(LaunchError, match=f"port {port} on 127.0.0.1 is taken"):
            cpu_plan(str(REPO / "configs" / "smoke_cpu.yaml"),
                     [*base, f"sync.rollout_port={port}", "sync.transport=tcp", f"sync.keys_dir={keys}"],
                     run_dir=str(tmp_path / "run"))
    with pytest.raises(LaunchError, match="holds no CURVE keys"):
        cpu_plan(str(REPO / "configs" / "smoke_cpu.yaml"),
                 [*base, "sync.host=10.9.9.9", f"sync.keys_dir={tmp_path / 'keys'}"], run_dir=str(tmp_path / "run"))
    plan = cpu_plan(str(REPO / "configs" / "smoke_cpu.yaml"), base, run_dir=str(tmp_path / "run"))
    plan.write()
    written = json.loads((tmp_path / "run" / "plan.json").read_text())
    assert [c["name"] for c in written["components"]] == ["actor-0", "learner"]
    assert "--config" in (tmp_path / "run" / "commands.sh").read_text()
    assert "model_id: " + str(tiny_model) in (tmp_path / "run" / "config.yaml").read_text()


def test_hostfile_sets_learner_ranks(monkeypatch, tmp_path):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1,2,3,4,5,6,7")
    hf = tmp_path / "hostfile"
    hf.write_text("# two learner nodes\nnode-a slots=8\nnode-b slots=8\n")
    plan = node_plan(A3B, [], actor_gpus="0,1,2,3,4,5,6,7", learner_gpus=None, tp=1, run_dir=str(tmp_path),
                     hostfile=str(hf), check=False)
    assert plan.config.learner.ranks == 16 and "--hostfile" in plan.learner.argv
    hf.write_text("node-a gpus=8\n")
    with pytest.raises(LaunchError, match="expected 'HOST slots=N'"):
        node_plan(A3B, [], actor_gpus="0", learner_gpus=None, tp=1, run_dir=str(tmp_path), hostfile=str(hf),
                  check=False)


def test_shell_launchers_dry_run_on_cpu():
    proc = subprocess.run(["bash", str(REPO / "launch" / "v4_2_3b.sh"), "--dry-run"], capture_output=True,
                          text=True, check=False, env={"PATH": "/usr/bin:/bin", "PY": sys.executable})
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert "planned for an 8-GPU node" in lines[0]
    assert sum(line.lstrip().startswith("actor-") for line in lines) == 4
    assert any("deepspeed --include localhost:4,5,6,7" in line for line in lines)
    bad = subprocess.run(["bash", str(REPO / "launch" / "cpu.sh")], capture_output=True, text=True, check=False)
    assert bad.returncode == 2 and "usage" in bad.stderr
