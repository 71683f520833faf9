"""The Slurm launcher without a cluster: the dry run's job script, the checks that a layout fits the config,
and the per-task environment (GPU groups, torch.distributed ranks from Slurm's variables)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from launch.plan import LaunchError
from launch.slurm import fit, slurm_plan
from launch.slurm_task import TaskError, actor_env, learner_env

REPO = Path(__file__).resolve().parents[2]
A3B = str(REPO / "configs" / "v4_2_a_3b.yaml")


def dry_run(tmp_path: Path, *args: str, path: str | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PY": sys.executable, "PATH": path or os.environ["PATH"]}
    return subprocess.run(["bash", str(REPO / "launch" / "slurm.sh"), A3B, "--run-dir", str(tmp_path / "run"),
                           "--dry-run", *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)


def test_dry_run_writes_the_job_script_for_scenario_a_on_two_8_gpu_nodes(tmp_path):
    bin_dir = tmp_path / "bin"  # no sbatch, no sinfo: a dry run needs neither and submits nothing
    bin_dir.mkdir()
    for tool in ("bash", "env", "dirname"):
        (bin_dir / tool).symlink_to(f"/usr/bin/{tool}")
    r = dry_run(tmp_path, "--actor-nodes", "1", "--learner-nodes", "1", "--gpus-per-node", "8", "--tp", "2",
                "--partition", "gpu", "--time", "4:00:00", "--", "--qos", "high", "--mail-type=END",
                path=str(bin_dir))
    assert r.returncode == 0, r.stderr
    run = tmp_path / "run"
    script = (run / "job.sbatch").read_text()
    assert script in r.stdout and "dry run: not submitted" in r.stdout
    sbatch = re.findall(r"^#SBATCH (.+)$", script, re.M)
    for opt in ("--nodes=2", "--gres=gpu:8", "--exclusive", "--requeue", "--no-kill", "--partition=gpu",
                "--time=4:00:00", "--open-mode=append", f"--output={run.resolve()}/slurm-%j.out",
                f"--chdir={REPO}", "--qos high", "--mail-type=END"):
        assert opt in sbatch, (opt, sbatch)
    steps = re.findall(r"^#     (srun .+)$", script, re.M)
    actors = [s for s in steps if " -m actor " in s]
    assert len(actors) == 4  # 8 GPUs / tensor parallel 2
    for k, s in enumerate(actors):
        assert '"--nodelist=$ACTOR_NODE_0"' in s and f"--job-name=actor-{k}" in s and "--overlap" in s
        assert f"--group {k} --tp 2" in s and f"--replica {k}" in s and f'--actor-id "$ACTOR_NODE_0-a{k}"' in s
        assert '--set "sync.host=$LEARNER_ADDR"' in s and '--set "sync.connect_host=$LEARNER_ADDR"' in s
    (learner,) = [s for s in steps if " -m learner " in s]
    for part in ("--nodes=1", "--ntasks=8", "--ntasks-per-node=8", '"--nodelist=$LEARNER_NODES"', "--label",
                 '--master-addr "$LEARNER_ADDR"', "-m launch.slurm_task learner"):
        assert part in learner, (part, learner)
    assert "ssh" not in script and "pdsh" not in script and "--hostfile" not in script
    assert script.rstrip().endswith(f"-m launch slurm-job {run.resolve()}")
    plan = json.loads((run / "plan.json").read_text())
    assert plan["mode"] == "slurm" and [c["name"] for c in plan["components"]][-1] == "learner"
    assert (plan["slurm"]["actors_per_node"], plan["slurm"]["ranks_per_node"], plan["slurm"]["tp"]) == (4, 8, 2)
    config = (run / "config.yaml").read_text()
    assert "replicas: 4" in config and "tensor_parallel_size: 2" in config and "ranks: 8" in config
    assert f"keys_dir: {run}/keys" in config and "transport: tcp" in config  # two nodes: TCP, with CURVE
    assert config.count("device: cuda") == 2  # actors and learner refuse to start without a GPU (configs.device)
    assert (run / "commands.sh").read_text().count("srun ") == 5
    assert not (run / "keys").exists()  # made by the job, on its nodes, before any component starts


def test_layouts_that_do_not_fit_are_one_line_errors(tmp_path):
    for args, msg in (
        (["--tp", "3"], "tensor parallel size 3 does not split a node's 8 GPU"),
        (["--gpus-per-node", "0", "--tp", "2"], "CPU nodes) runs one actor per node"),
        (["--actor-nodes", "0"], "--actor-nodes 0: at least one node"),
        (["--learner-nodes", "3"], "24 learner ranks for 16 completions per step"),
        (["--set", "actor.replicas=3"], "actor.replicas=3 does not fit 1 actor node(s) x 8 GPU"),
        (["--set", "learner.ranks=4", "--learner-nodes", "2"], "learner.ranks=4 does not fit 2 learner node(s)"),
    ):
        r = dry_run(tmp_path, *args)
        assert r.returncode == 2, (args, r.stdout, r.stderr)
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and msg in lines[0], (args, r.stderr)
    assert not (tmp_path / "run" / "job.sbatch").exists()  # nothing written for a layout that does not fit


def test_fit_on_cpu_nodes_is_one_actor_and_one_rank_per_node():
    from configs import load_config

    cfg = load_config(REPO / "configs" / "smoke_cpu.yaml")
    assert fit(cfg, [], 2, 1, 0, None) == (1, 1, 1)
    plan, spec = slurm_plan(str(REPO / "configs" / "smoke_cpu.yaml"), [], actor_nodes=2, learner_nodes=1,
                            gpus_per_node=0, check=False)
    assert plan.config.actor.replicas == 2 and plan.config.learner.ranks == 1 and spec.world == 1
    assert plan.config.actor.device == plan.config.learner.device == "auto"  # CPU nodes: no GPU asked for
    assert [a.devices for a in plan.actors] == ["actor node 0, CPU", "actor node 1, CPU"]


def test_submitting_without_sbatch_is_one_line(tmp_path):
    env = {**os.environ, "PATH": str(tmp_path)}  # neither sbatch nor sinfo
    r = subprocess.run([sys.executable, "-m", "launch", "slurm", "--config", str(REPO / "configs" / "smoke_cpu.yaml"),
                        "--gpus-per-node", "0", "--run-dir", str(tmp_path / "run")],
                       cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2
    assert r.stderr.strip() == "launch: sbatch not found on PATH: run this on a Slurm login node (or --dry-run)"


def test_actor_task_gets_its_gpu_group_by_position():
    env = {"CUDA_VISIBLE_DEVICES": "4,5,6,7"}  # what Slurm may hand a step
    assert actor_env(env, 4, 1, 2)["CUDA_VISIBLE_DEVICES"] == "6,7"
    assert actor_env({}, 8, 3, 1)["CUDA_VISIBLE_DEVICES"] == "3"
    assert "CUDA_VISIBLE_DEVICES" not in actor_env({}, 0, 0, 1)  # CPU nodes
    with pytest.raises(TaskError, match="actor group 2 needs GPUs 4..5 but the step sees 4"):
        actor_env(env, 4, 2, 2)


def test_learner_task_ranks_come_from_slurm():
    env = learner_env({"SLURM_PROCID": "9", "SLURM_NTASKS": "16", "SLURM_LOCALID": "1"}, "10.0.0.5", 29612)
    assert (env["RANK"], env["WORLD_SIZE"], env["LOCAL_RANK"]) == ("9", "16", "1")
    assert (env["MASTER_ADDR"], env["MASTER_PORT"]) == ("10.0.0.5", "29612")
    with pytest.raises(TaskError, match="SLURM_PROCID is not set: run this under srun"):
        learner_env({}, "a", 1)


def test_layout_errors_name_the_options():
    with pytest.raises(LaunchError, match="--gpus-per-node -1"):
        slurm_plan(A3B, [], gpus_per_node=-1, check=False)


def test_job_output_names_component_node_and_rank(tmp_path, capfd):
    """The driver's pump on an ``srun --label``-style process: ``K: line`` becomes ``[learner] (NODE rank K)``."""
    from launch.plan import Component
    from launch.supervise import Proc

    code = "print('0: learner: rank 0 of 2'); print('1: learner: rank 1 of 2'); print('srun: error: n3: task 1')"
    p = Proc(Component("learner", [sys.executable, "-c", code]), tmp_path, tag="n3",
             rank_tags=["n3 rank 0", "n4 rank 1"])
    assert p.popen.wait(30) == 0
    p.stop(1)
    out = capfd.readouterr().out.splitlines()
    assert out == ["[learner] (n3 rank 0) learner: rank 0 of 2", "[learner] (n4 rank 1) learner: rank 1 of 2",
                   "[learner] (n3) srun: error: n3: task 1"]
    assert (tmp_path / "learner.log").read_text().splitlines()[1] == "(n4 rank 1) learner: rank 1 of 2"
