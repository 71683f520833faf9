"""``launch/slurm.sh`` on a real Slurm cluster: slurmctld, two slurmd daemons (fake nodes n1, n2 on this
machine) and munged, brought up by ``tests/slurm/cluster.sh`` (the ``slurm_cluster`` fixture).

Real actor and learner processes (vLLM on CPU, DeepSpeed on gloo) on the tiny model with the toy reward,
on CPU nodes (``--gpus-per-node 0``): the learner on n1, the actor on n2. Where each component ran is read
from Slurm itself (``squeue --steps``); ``metrics.jsonl`` must hold each training step exactly once.
"""

from __future__ import annotations

import os
import re
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from e2e_helpers import e2e_overrides, train_steps
from learner.metrics import read_metrics

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
SMALL = {
    "learning_rate": 1e-3,
    "num_generations": 4,
    "prompts_per_step": 2,
    "max_completion_length": 16,
    "sync.heartbeat_s": 0.5,
}


def launch(cluster, run_dir: Path, overrides: list[str], *args: str) -> subprocess.CompletedProcess:
    dist_vars = {"RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"}
    env = {k: v for k, v in cluster.env.items() if k not in dist_vars}
    env.update(PY=sys.executable, TUCANO2_NO_PROGRESS="1", WANDB_MODE="disabled")
    argv = ["bash", str(REPO / "launch" / "slurm.sh"), "configs/smoke_cpu.yaml", "--gpus-per-node", "0",
            "--run-dir", str(run_dir), *args]
    for o in overrides:
        argv += ["--set", o]
    return subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)


def sigterm_reached(pid: int) -> bool:
    """SIGTERM is pending for ``pid`` (stopped, it cannot take it yet), or it no longer waits stopped."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return True
    fields = dict(line.split(":\t", 1) for line in status.splitlines() if ":\t" in line)
    pending = int(fields["ShdPnd"], 16) | int(fields["SigPnd"], 16)
    return bool(pending & (1 << (signal.SIGTERM - 1))) or not fields["State"].startswith("T")


class SlurmRun:
    """A submitted run: its job's state and steps as Slurm reports them, its output and metrics."""

    def __init__(self, cluster, run_dir: Path, overrides: list[str], *args: str):
        self.cluster, self.run_dir = cluster, run_dir
        r = launch(cluster, run_dir, overrides, *args)
        assert r.returncode == 0, r.stdout + r.stderr
        self.submit_out = r.stdout
        m = re.search(r"^Submitted batch job (\d+)$", r.stdout, re.M)
        assert m, r.stdout
        self.job = m.group(1)
        self.pids: set[int] = set()

    def slurm(self, *argv: str) -> str:
        r = subprocess.run(list(argv), env=self.cluster.env, capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, f"{argv}: {r.stderr}"
        return r.stdout

    def job_info(self) -> dict[str, str]:
        return dict(re.findall(r"(\w+)=(\S*)", self.slurm("scontrol", "show", "job", "-o", self.job)))

    def steps(self) -> dict[str, tuple[str, str]]:
        """Running steps: name -> (step id, node list), from ``squeue --steps``."""
        rows = self.slurm("squeue", "-h", "--steps", "-j", self.job, "-o", "%i|%j|%N").split()
        return {name: (sid, nodes) for sid, name, nodes in (r.split("|") for r in rows)}

    def output(self) -> str:
        p = self.run_dir / f"slurm-{self.job}.out"
        return p.read_text(errors="replace") if p.exists() else ""

    def last_step(self) -> int:
        steps = train_steps(read_metrics(self.run_dir))
        return steps[-1] if steps else 0

    def remember_processes(self) -> None:
        """Every process of this run now (the components name the run dir; their children too)."""
        import psutil

        for p in psutil.process_iter(["cmdline"]):
            try:
                if str(self.run_dir) in " ".join(p.info["cmdline"] or []):
                    self.pids |= {p.pid, *(c.pid for c in p.children(recursive=True))}
            except psutil.Error:
                continue

    def learner_pid(self) -> int:
        """The learner's process (one rank: ``launch.slurm_task`` execs it, so it is the step's task)."""
        import psutil

        found = [p.pid for p in psutil.process_iter(["cmdline"])
                 if "learner" in (c := p.info["cmdline"] or []) and str(self.run_dir) in " ".join(c)
                 and c[c.index("learner") - 1] == "-m"]
        assert len(found) == 1, found
        return found[0]

    def alive(self) -> list[str]:
        import psutil

        out = []
        for pid in sorted(self.pids):
            try:
                p = psutil.Process(pid)
                if p.status() != psutil.STATUS_ZOMBIE:
                    out.append(f"{pid} {' '.join(p.cmdline())[:120]}")
            except psutil.Error:
                pass
        return out

    def wait_until(self, cond, timeout: float, what: str, interval: float = 0.5):
        deadline = time.monotonic() + timeout
        while True:
            v = cond()
            if v:
                return v
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what} "
                                     f"(job {self.job_info().get('JobState')}):\n{self.output()[-5000:]}")
            time.sleep(interval)

    def placed(self) -> dict[str, str] | None:
        """{actor-0: node, learner: node} once both steps run."""
        s = self.steps()
        if "actor-0" in s and "learner" in s:
            return {"actor-0": s["actor-0"][1], "learner": s["learner"][1]}
        return None

    def state(self) -> str:
        return self.job_info().get("JobState", "")

    def __enter__(self) -> SlurmRun:
        return self

    def __exit__(self, *exc) -> None:
        subprocess.run(["scancel", self.job], env=self.cluster.env, capture_output=True, timeout=60)


def test_run_on_two_nodes_survives_a_lost_actor_step_and_a_requeue(slurm_cluster, tiny_model, tmp_path):
    steps, every = 16, 4
    run = tmp_path / "run"
    over = e2e_overrides(tiny_model, tmp_path / "pairs", max_steps=steps, **SMALL,
                         **{"learner.checkpoint_every": every})
    with SlurmRun(slurm_cluster, run, over) as job:
        assert f"run dir: {run}" in job.submit_out and f"tail -f {run}/slurm-{job.job}.out" in job.submit_out
        assert (run / "job.sbatch").exists() and (run / "plan.json").exists()

        # Placement, from Slurm: the actor's step on n2, the learner's on n1.
        assert job.wait_until(job.placed, 300, "the actor and learner steps") == {"actor-0": "n2", "learner": "n1"}
        job.wait_until(lambda: job.last_step() >= 2, 300, "step 2")
        job.remember_processes()

        # The actor's step dies (as on a lost node): the job starts it again on n2 and training goes on.
        first_actor = job.steps()["actor-0"][0]
        job.slurm("scancel", "--signal=KILL", first_actor)
        job.wait_until(lambda: "actor-0 on n2 ended with code" in job.output(), 120, "the driver to see the actor go")
        killed_at = job.last_step()
        job.wait_until(lambda: job.steps().get("actor-0", (first_actor,))[0] != first_actor, 120, "a new actor step")
        assert job.steps()["actor-0"][1] == "n2"
        job.wait_until(lambda: job.last_step() >= killed_at + 2, 300, "steps after the actor came back")
        job.remember_processes()

        # Requeue mid-run: the learner checkpoints on Slurm's SIGTERM; the job starts again and resumes. The
        # learner is frozen from reading the step it reached until the requeue's SIGTERM is waiting for it: on a
        # loaded machine Slurm took long enough to deliver it that the run had finished (CI, stop 39).
        learner = job.learner_pid()
        os.kill(learner, signal.SIGSTOP)
        try:
            at_requeue = job.last_step()
            assert at_requeue < steps - 1, "the run finished before the requeue; make it longer"
            job.slurm("scontrol", "requeue", job.job)
            job.wait_until(lambda: sigterm_reached(learner), 60, "the requeue's SIGTERM to reach the learner")
        finally:
            os.kill(learner, signal.SIGCONT)
        job.wait_until(lambda: job.job_info().get("Restarts") == "1" and job.state() == "RUNNING", 180,
                       "the requeued job to start again")
        assert job.wait_until(job.placed, 300, "steps of the requeued job") == {"actor-0": "n2", "learner": "n1"}
        job.remember_processes()
        job.wait_until(lambda: job.state() == "COMPLETED", 400, "the requeued job to finish", interval=1.0)
        info, out = job.job_info(), job.output()

    assert info["ExitCode"] == "0:0" and info["Restarts"] == "1", info
    m = re.search(r"slurm: [\d:]+ resuming from step-(\d+) \(restart 1\)", out)
    assert m, out[-4000:]
    resumed = int(m.group(1))
    # The SIGTERM checkpoint: the step reached (or the one it was in), not an older one.
    assert at_requeue <= resumed <= at_requeue + 1, (at_requeue, resumed)
    assert f"[learner] (n1) learner: rank 0 of 1, step {resumed}/{steps}" in out
    # Every step exactly once: what the killed incarnation logged after its checkpoint was dropped on resume.
    assert train_steps(read_metrics(run)) == list(range(1, steps + 1))
    # Every line names its component and its Slurm node, in the job's output and in the per-component logs.
    assert re.search(r"^\[actor-0\] \(n2\) actor n2-a0: READY", out, re.M)
    # Each start checked first that both nodes share the filesystem; actors and learner then started together.
    assert len(re.findall(r"^slurm: [\d:]+ shared filesystem: n1, n2 see the venv, the code, the run directory and "
                          r"the keys$", out, re.M)) == 2
    assert re.search(r"^\[learner\] \(n1\) learner: start-up: .*actors [\d.]+ s", out, re.M), out[-3000:]
    assert re.search(r"^\[learner\] \(n1\) learner: stopped at step \d+: SIGTERM", out, re.M)
    # Across nodes each version is sealed once and fetched (sync.weight_transfer auto over TCP).
    assert re.search(r"^\[learner\] \(n1\) learner: weight transfer sealed, fetch port \d+$", out, re.M)
    assert all(ln.startswith("(n2) ") for ln in (run / "logs" / "actor-0.log").read_text().splitlines())
    # CURVE keys made in the run directory, private.
    keys = run / "keys"
    assert stat.S_IMODE(keys.stat().st_mode) == 0o700
    assert {stat.S_IMODE(p.stat().st_mode) for p in keys.glob("*.key*")} == {0o600}
    assert job.alive() == [], "processes left after the job"


def test_scancel_checkpoints_and_leaves_nothing_behind(slurm_cluster, tiny_model, tmp_path):
    run = tmp_path / "run"
    over = e2e_overrides(tiny_model, tmp_path / "pairs", max_steps=300, **SMALL,
                         **{"learner.checkpoint_every": 100})
    with SlurmRun(slurm_cluster, run, over) as job:
        job.wait_until(lambda: job.last_step() >= 3, 400, "step 3")
        job.remember_processes()
        assert len(job.pids) >= 5, job.pids  # driver, 2 srun, actor (+ EngineCore), learner
        job.slurm("scancel", job.job)
        job.wait_until(lambda: job.state() == "CANCELLED" and job.alive() == [], 120,
                       "the job and its processes to end")
        out = job.output()
    ckpts = sorted(p.name for p in (run / "checkpoints").iterdir() if not p.name.startswith("."))
    m = re.search(r"^\[learner\] \(n1\) learner: stopped at step (\d+): SIGTERM$", out, re.M)
    assert m, out[-4000:]
    assert ckpts == [f"step-{int(m.group(1)):06d}"]  # written on scancel's SIGTERM (checkpoint_every is 100)
    assert int(m.group(1)) >= 3
    assert job.alive() == []


def test_submit_checks_the_cluster_and_the_run_dir_first(slurm_cluster, tiny_model, tmp_path):
    over = e2e_overrides(tiny_model, tmp_path / "pairs")
    run = tmp_path / "run"
    for args, msg in (
        (["--partition", "nope"], "partition 'nope' does not exist (sinfo lists: debug)"),
        (["--actor-nodes", "2"], "the job needs 3 node(s) but partition 'debug' has 2"),
        (["--gpus-per-node", "1"], "--gpus-per-node 1: partition 'debug' nodes offer at most 0 GPU(s)"),
        (["--resume"], f"--resume: no checkpoint under {run}/checkpoints"),
    ):
        r = launch(slurm_cluster, run, over, *args)
        assert r.returncode == 2, (args, r.stdout, r.stderr)
        assert len(r.stderr.strip().splitlines()) == 1 and msg in r.stderr, (args, r.stderr)
    (run / "checkpoints" / "step-000004").mkdir(parents=True)  # a run that was started before
    (run / "checkpoints" / "step-000004" / "trainer_state.json").write_text("{}")
    r = launch(slurm_cluster, run, over)
    assert r.returncode == 2 and "already holds checkpoints (last: step-000004): pass --resume" in r.stderr
    assert not (run / "job.sbatch").exists()
    queue = subprocess.run(["squeue", "-h"], env=slurm_cluster.env, capture_output=True, text=True, timeout=60)
    assert queue.returncode == 0 and queue.stdout == ""  # nothing was submitted


def test_a_node_that_cannot_see_the_run_directory_stops_the_job_first(slurm_cluster, tiny_model, tmp_path):
    """n2's slurmd restarted in a mount namespace where the run directory is an empty tmpfs: that node cannot
    see what the job writes there, as a node without the cluster's shared filesystem. The job ends with one line
    naming n2 before any component starts, and n2 is restored afterwards."""
    run = tmp_path / "run"
    run.mkdir(mode=0o700)
    over = e2e_overrides(tiny_model, tmp_path / "pairs", max_steps=4, **SMALL)

    def cluster(*a):
        r = subprocess.run(["bash", str(REPO / "tests" / "slurm" / "cluster.sh"), *a], env=slurm_cluster.env,
                           capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stdout + r.stderr

    cluster("hide", "n2", str(run))
    try:
        with SlurmRun(slurm_cluster, run, over) as job:
            job.wait_until(lambda: job.state() in ("FAILED", "COMPLETED", "CANCELLED"), 180, "the job to end")
            info, out = job.job_info(), job.output()
    finally:
        cluster("unhide", "n2")
    assert info["JobState"] == "FAILED" and info["ExitCode"] == "1:0", info
    said = [ln for ln in out.splitlines() if "cannot see" in ln]
    assert said == [f"slurm: node n2 cannot see the run directory {run} (the marker the job wrote there): the venv, "
                    "the code, the run directory and the keys must be on a filesystem every node of the job shares"]
    assert "starting actor-0" not in out and "[learner]" not in out and "[actor-0]" not in out
