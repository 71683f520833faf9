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
    # every component of a GPU plan refuses to start without a GPU (configs.device), none shares one here
    assert (plan.config.actor.device, plan.config.learner.device, plan.config.actor.shared_gpu) == ("cuda", "cuda",
                                                                                                    False)


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
        with pytest.raises(LaunchError, match=f"port {port} on 127.0.0.1 is taken"):  # the sealed weights' port
            cpu_plan(str(REPO / "configs" / "smoke_cpu.yaml"),
                     [*base, f"sync.fetch_port={port}", "sync.transport=tcp", f"sync.keys_dir={keys}"],
                     run_dir=str(tmp_path / "run"))
    with pytest.raises(LaunchError, match="holds no CURVE keys"):
        cpu_plan(str(REPO / "configs" / "smoke_cpu.yaml"),
                 [*base, "sync.host=10.9.9.9", f"sync.keys_dir={tmp_path / 'keys'}"], run_dir=str(tmp_path / "run"))
    tcp = cpu_plan(str(REPO / "configs" / "smoke_cpu.yaml"),
                   [*base, "sync.transport=tcp", f"sync.keys_dir={keys}", "sync.fetch_port=29700"],
                   run_dir=str(tmp_path / "run"))
    assert "weights sealed once, fetched from the learner's port 29700" in tcp.describe()
    plan = cpu_plan(str(REPO / "configs" / "smoke_cpu.yaml"), base, run_dir=str(tmp_path / "run"))
    assert "weights written once to /dev/shm" in plan.describe()
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


V41 = str(REPO / "configs" / "v4_1.yaml")


def fake_nvidia_smi(bin_dir: Path, total_mib: int, free_mib: int, n: int = 1) -> None:
    """A stand-in for the GPU driver's nvidia-smi (named as such: we ship no GPU): ``-L`` and the memory query."""
    bin_dir.mkdir(exist_ok=True)
    rows = "\\n".join(f"{i}, {total_mib}, {free_mib}" for i in range(n))
    gpus = "\\n".join(f"GPU {i}: NVIDIA L4 (UUID: GPU-fake-{i})" for i in range(n))
    exe = bin_dir / "nvidia-smi"
    exe.write_text(f'#!/bin/sh\ncase "$1" in -L) printf "{gpus}\\n";; *) printf "{rows}\\n";; esac\n')
    exe.chmod(0o755)


def test_one_gpu_shared_by_actor_and_learner(monkeypatch, tmp_path):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    plan = node_plan(V41, [], actor_gpus=None, learner_gpus=None, tp=None, run_dir=str(tmp_path), check=False,
                     gpus="0", gpu_mem=22.5)
    assert [a.env["CUDA_VISIBLE_DEVICES"] for a in plan.actors] == ["0"]
    assert "localhost:0" in plan.learner.argv and plan.learner.env["PYTORCH_CUDA_ALLOC_CONF"]
    c = plan.config
    assert (c.actor.replicas, c.learner.ranks) == (1, 1)
    assert 0 < c.actor.gpu_memory_utilization < 0.3 and c.actor.kv_cache_gb > 2
    assert c.actor.shared_gpu and c.actor.device == c.learner.device == "cuda"  # merged W0 stays off the learner's
    assert c.learner.gradient_checkpointing  # turned on to fit, and said so
    text = plan.describe()
    assert "share the GPUs" in text and "gpu_memory_utilization" in text and "gradient_checkpointing turned on" in text
    assert plan.learner.argv[plan.learner.argv.index("--master_port") + 1] == str(c.sync.master_port)
    # the same list to both sides is the same layout
    same = node_plan(V41, [], actor_gpus="0", learner_gpus="0", tp=None, run_dir=str(tmp_path), check=False,
                     gpu_mem=22.5)
    assert same.config.actor.gpu_memory_utilization == c.actor.gpu_memory_utilization
    # two GPUs shared: an actor replica and a learner rank on each
    two = node_plan(V41, [], actor_gpus=None, learner_gpus=None, tp=None, run_dir=str(tmp_path), check=False,
                    gpus="0,1", gpu_mem=40)
    assert [a.env["CUDA_VISIBLE_DEVICES"] for a in two.actors] == ["0", "1"] and two.config.learner.ranks == 2


def test_shared_gpu_errors(monkeypatch, tmp_path):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1,2")
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    kw = dict(tp=None, run_dir=str(tmp_path), check=False)
    with pytest.raises(LaunchError, match="to share GPUs give both the same list"):
        node_plan(V41, [], actor_gpus="0,1", learner_gpus="1,2", **kw)
    with pytest.raises(LaunchError, match="drop --actor-gpus"):
        node_plan(V41, [], actor_gpus="0", learner_gpus=None, gpus="0", **kw)
    with pytest.raises(LaunchError, match="pass --gpu-mem"):
        node_plan(V41, [], actor_gpus=None, learner_gpus=None, gpus="0", **kw)
    with pytest.raises(LaunchError, match="does not fit on one 16 GiB GPU"):
        node_plan(A3B, [], actor_gpus=None, learner_gpus=None, gpus="0", gpu_mem=16, **kw)


def test_a_real_launch_reads_gpu_memory_and_refuses_what_others_hold(monkeypatch, tmp_path):
    fake_nvidia_smi(tmp_path / "bin", total_mib=23034, free_mib=3000)  # an L4 with 20 GiB held elsewhere
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}:/usr/bin:/bin")
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    with pytest.raises(LaunchError, match=r"GPU 0 has 2\.9 GiB free of 22\.5 .* needs \d+\.\d GiB"):
        node_plan(V41, [], actor_gpus=None, learner_gpus=None, tp=None, run_dir=str(tmp_path), gpus="0")
    fake_nvidia_smi(tmp_path / "bin", total_mib=23034, free_mib=22500)
    # memory is fine now; the next check (no pairs there) is what stops this one
    with pytest.raises(LaunchError, match="train pairs not found: /nonexistent"):
        node_plan(V41, ["data.train_pairs=/nonexistent/train.jsonl"], actor_gpus=None, learner_gpus=None, tp=None,
                  run_dir=str(tmp_path), gpus="0")
    # a dry run with the figures from nvidia-smi (no --gpu-mem)
    plan = node_plan(V41, [], actor_gpus=None, learner_gpus=None, tp=None, run_dir=str(tmp_path), gpus="0",
                     check=False)
    assert "memory per GPU (22.5 GiB" in plan.describe()


def test_one_gpu_shell_launchers_dry_run():
    env = {"PATH": "/usr/bin:/bin", "PY": sys.executable}
    ok = subprocess.run(["bash", str(REPO / "launch" / "v4_1_05b.sh"), "--gpus", "0", "--gpu-mem", "24", "--dry-run"],
                        capture_output=True, text=True, check=False, env=env)
    assert ok.returncode == 0, ok.stderr
    assert "shared by an actor and a learner rank" in ok.stdout and "GPU 0 (shared)" in ok.stdout
    no = subprocess.run(["bash", str(REPO / "launch" / "v4_2_3b.sh"), "--gpus", "0", "--gpu-mem", "16", "--dry-run"],
                        capture_output=True, text=True, check=False, env=env)
    assert no.returncode == 2 and no.stdout == ""
    assert len(no.stderr.strip().splitlines()) == 1 and "would fit: a second GPU" in no.stderr
