"""The job driver: what ``RUN_DIR/job.sbatch`` runs on the batch host (``python -m launch slurm-job RUN_DIR``).

1. Nodes from the allocation (``scontrol show hostnames $SLURM_JOB_NODELIST``, Slurm's order): the first M run
   the learner, the next N the actors. The learner's address is the first learner node's ``NodeAddr``
   (``scontrol show node``) resolved to an IP: rank 0 binds the sync sockets and torch's store there.
2. CURVE keys into ``RUN_DIR/keys`` unless they are there already (a requeued start keeps them).
3. A shared filesystem: one step on every node of the allocation checks that the node sees the venv's python,
   the code (the job's working directory), the run directory and the keys, and a local model directory when
   the config names one. The run directory must be the same one, not a same-named local directory: the driver
   writes a marker with a fresh nonce into it just before, and the step must read that nonce back. A node that
   fails ends the job (code 1) with one line naming the node and what it cannot see, before any component
   starts.
4. One ``srun`` step per actor and the learner's step, started together: actors and learner are on separate
   nodes, so the learner loads its model and DeepSpeed while the engines start, and waits for every actor
   to connect before its first publication (``sync.actor_start_timeout_s``, set from ``--ready-timeout``;
   ``learner.__main__.wait_for_actors``), as on one node.
5. Resume: the learner gets ``--resume RUN_DIR`` whenever the run directory holds a checkpoint (a requeued
   start, ``SLURM_RESTART_COUNT`` > 0; ``sbatch RUN_DIR/job.sbatch`` again after a time limit; a submission
   with ``--resume``), since ``launch/slurm.sh`` refuses a fresh run in a directory with checkpoints. A
   requeued start without any checkpoint starts over, with the earlier start's ``metrics.jsonl`` moved
   aside, so every step is logged once.
6. While the learner runs, an actor step that ends (a lost node, a crashed engine) is started again on its
   node after a back-off (none the first time, then 5 s doubling to 60 s; reset once it ran 2 minutes). The
   learner re-sends that actor's requests to the others meanwhile; the restarted actor announces itself and
   loads the newest version before it serves.
7. The learner's exit ends the job with its code (0: done). Its transport sends Shutdown to the actors;
   steps still running after ``grace_s`` are sent SIGTERM through ``scancel --signal`` (never through
   srun: srun turns a SIGTERM into SIGKILL for its tasks), and the job's end takes whatever is left.
8. SIGTERM or SIGINT to the driver (``scancel``, ``scontrol requeue``, preemption, the time limit: Slurm
   signals every step at once) stops restarts; the driver passes SIGTERM to the learner's step (harmless
   when Slurm did already), which checkpoints after its current step, and waits for every step to end.
   Slurm's KillWait (default 30 s) bounds that wait.

Every line goes to the job's output (``RUN_DIR/slurm-JOBID.out``) as ``[actor-K] (NODE) ...`` /
``[learner] (NODE) ...`` (``(NODE rank R)`` with several ranks), and to ``RUN_DIR/logs/NAME.log``.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

from launch.plan import Component, LaunchError
from launch.slurm import KEYS_DIR, SlurmSpec, actor_step, checkpoints, learner_step
from launch.supervise import Proc

BACKOFF_S = (0.0, 5.0, 10.0, 20.0, 40.0, 60.0)
SHARED_CHECK = r"""
py=$1 wd=$2 marker=$3 nonce=$4 rd=$5 keys=$6 model=$7; shift 7
node=${SLURMD_NODENAME:-$(hostname -s)}
miss() { echo "SHARED $node missing $1"; exit 0; }
"$py" -c '' 2>/dev/null || miss "the venv's python $py"
[ -f "$wd/launch/slurm_job.py" ] || miss "the code $wd"
[ "$(cat "$marker" 2>/dev/null)" = "$nonce" ] || miss "the run directory $rd (the marker the job wrote there)"
for f in "$@"; do [ -r "$f" ] || miss "the CURVE keys $keys ($f)"; done
[ -z "$model" ] || [ -f "$model/config.json" ] || miss "the model $model"
echo "SHARED $node ok"
"""
"""The shared-filesystem check one task runs on each node (``sh -c``): ``SHARED NODE ok`` or ``SHARED NODE missing
WHAT``."""
HEALTHY_AFTER_S = 120.0


def say(msg: str) -> None:
    print(f"slurm: {time.strftime('%H:%M:%S')} {msg}", flush=True)


def _out(argv: list[str]) -> str:
    try:
        r = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise LaunchError(f"{argv[0]} failed: {e}") from None
    if r.returncode != 0:
        raise LaunchError(f"{' '.join(argv)} exited {r.returncode}: {r.stderr.strip()}")
    return r.stdout


def allocation_nodes() -> list[str]:
    nodelist = os.environ.get("SLURM_JOB_NODELIST") or os.environ.get("SLURM_NODELIST")
    if not nodelist:
        raise LaunchError("SLURM_JOB_NODELIST is not set: this runs inside a Slurm job (sbatch RUN_DIR/job.sbatch)")
    return _out(["scontrol", "show", "hostnames", nodelist]).split()


def node_addr(node: str) -> str:
    """The node's NodeAddr from Slurm, as an IP when it resolves (ZeroMQ binds an address, not a name)."""
    m = re.search(r"\bNodeAddr=(\S+)", _out(["scontrol", "show", "node", "-o", node]))
    addr = m.group(1) if m else node
    try:
        return socket.gethostbyname(addr)
    except OSError:
        return addr


def local_model(config: Path, workdir: Path) -> str:
    """The run's model directory when it is a local path (absolute), else "" (a hub id: each node's cache)."""
    from configs import load_config

    mid = str(load_config(config).model_id)
    p = Path(mid).expanduser()
    if mid.startswith((".", "/", "~")) or mid.count("/") != 1 or p.exists():
        return str(p if p.is_absolute() else workdir / p)
    return ""


def step_ids(job: str) -> dict[str, str]:
    """Running steps of this job by name (the newest when a name repeats)."""
    try:
        out = _out(["squeue", "-h", "--steps", "-j", job, "-o", "%i|%j"])
    except LaunchError:
        return {}
    ids: dict[str, str] = {}
    for row in out.split():
        sid, _, name = row.partition("|")
        ids[name] = sid
    return ids


def term_steps(job: str, names: list[str]) -> None:
    """SIGTERM to the tasks of the named steps through slurmstepd (``scancel --signal``)."""
    ids = step_ids(job)
    for n in names:
        if n in ids:
            subprocess.run(["scancel", "--signal=TERM", ids[n]], capture_output=True, timeout=30, check=False)


class Job:
    def __init__(self, run_dir: Path, grace_s: float = 30.0):
        self.run_dir = Path(run_dir)
        plan = json.loads((self.run_dir / "plan.json").read_text())
        self.spec = SlurmSpec(**plan["slurm"])
        comps = [Component(**c) for c in plan["components"]]
        self.actors, self.learner = comps[:-1], comps[-1]
        self.grace_s = grace_s
        self.job = os.environ.get("SLURM_JOB_ID", "?")
        self.restart = int(os.environ.get("SLURM_RESTART_COUNT", "0") or 0)
        self.stopping = threading.Event()
        self.log_dir = self.run_dir / "logs"

    # ---------------------------------------------------------------------------------------- set-up
    def layout(self) -> tuple[list[str], list[str], str]:
        nodes = allocation_nodes()
        s = self.spec
        if len(nodes) != s.nodes:
            raise LaunchError(f"the allocation has {len(nodes)} node(s) ({','.join(nodes)}), the plan needs {s.nodes}")
        learners, actors = nodes[:s.learner_nodes], nodes[s.learner_nodes:]
        return learners, actors, node_addr(learners[0])

    def make_keys(self) -> None:
        keys = Path(self.spec.run_dir) / KEYS_DIR
        if (keys / "server.key_secret").is_file():
            return
        from sync.keys import make_keys

        make_keys(keys)
        say(f"CURVE keys written to {keys}")

    def resume(self) -> bool:
        have = checkpoints(self.spec.run_dir)
        if self.spec.resume or have:  # launch/slurm.sh refuses a fresh run in a directory with checkpoints
            if have:
                say(f"resuming from {have[-1].name}" + (f" (restart {self.restart})" if self.restart else ""))
            return True
        metrics = Path(self.spec.run_dir) / "metrics.jsonl"
        if self.restart and metrics.exists():
            aside = metrics.with_name(f"metrics.before-restart-{self.restart}.jsonl")
            metrics.rename(aside)
            say(f"restart {self.restart} without a checkpoint: starting over ({metrics.name} moved to {aside.name})")
        return False

    # ---------------------------------------------------------------------------------------- run
    def run(self) -> int:
        def on_signal(signum, frame):  # noqa: ARG001
            if not self.stopping.is_set():
                say(f"got {signal.Signals(signum).name}: stopping (the learner checkpoints first)")
            self.stopping.set()

        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, on_signal)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        actors: list[Proc | None] = [None] * len(self.actors)
        learner: Proc | None = None
        code = 1
        try:
            learners, actor_nodes, addr = self.layout()
            say(f"job {self.job} (restart {self.restart}): learner on {','.join(learners)} at {addr}, "
                f"actors on {','.join(actor_nodes)}")
            self.make_keys()
            self.check_shared(learners + actor_nodes)
            if self.stopping.is_set():
                return self.finish(143, learner, actors)
            per = self.spec.actors_per_node
            homes = [actor_nodes[k // per] for k in range(len(self.actors))]
            argv = [actor_step(self.spec, c, k, homes[k], addr) for k, c in enumerate(self.actors)]
            actors = [self.start(Component(c.name, argv[k]), homes[k]) for k, c in enumerate(self.actors)]
            lstep = learner_step(self.spec, self.learner, ",".join(learners), addr, resume=self.resume())
            tags = [f"{learners[r // self.spec.ranks_per_node]} rank {r}" for r in range(self.spec.world)]
            say(f"starting the learner with the actors (it waits for them to connect): {' '.join(lstep)}")
            learner = Proc(Component("learner", lstep), self.log_dir, tag=learners[0],
                           rank_tags=tags if self.spec.world > 1 else None)
            code = self.supervise(learner, actors, argv, homes)
        except LaunchError as e:
            print(f"slurm: {e}", file=sys.stderr, flush=True)
            code = 1
        return self.finish(code, learner, actors)

    def finish(self, code: int, learner: Proc | None, actors: list[Proc | None]) -> int:
        self.shutdown(learner, [a for a in actors if a is not None])
        say(f"job {self.job} ends with code {code}")
        return code

    def start(self, comp: Component, node: str) -> Proc:
        say(f"starting {comp.name} on {node}: {' '.join(comp.argv)}")
        return Proc(comp, self.log_dir, tag=node)

    def check_shared(self, nodes: list[str]) -> None:
        """One step on each node: it must see the venv's python, the code, this run directory (the nonce just
        written there) and the keys, and the model when it is a local directory; else a LaunchError naming the
        first node that does not."""
        import secrets

        s = self.spec
        rd, keys = Path(s.run_dir).resolve(), (Path(s.run_dir) / KEYS_DIR).resolve()
        nonce = secrets.token_hex(8)
        marker = rd / f".shared-check-{self.job}"
        marker.write_text(nonce + "\n")
        files = sorted(str(p) for p in keys.rglob("*.key*"))
        model = local_model(rd / "config.yaml", Path(s.workdir))
        argv = ["srun", "--overlap", f"--nodes={len(nodes)}", f"--ntasks={len(nodes)}", "--ntasks-per-node=1",
                f"--nodelist={','.join(nodes)}", "--job-name=shared-fs-check", "--mpi=none", "--kill-on-bad-exit=0",
                "/bin/sh", "-c", SHARED_CHECK, "shared-check", s.python, s.workdir, str(marker), nonce, str(rd),
                str(keys), model, *files]
        try:
            r = subprocess.run(argv, capture_output=True, text=True, timeout=300, check=False)
        except (OSError, subprocess.TimeoutExpired) as e:
            raise LaunchError(f"the shared-filesystem check did not finish: {e}") from None
        finally:
            marker.unlink(missing_ok=True)
        answers = dict(re.findall(r"^SHARED (\S+) (.*)$", r.stdout, re.M))
        bad = [(n, answers.get(n)) for n in nodes if answers.get(n) != "ok"]
        if bad:
            node, what = bad[0]
            more = f" (and {len(bad) - 1} more node(s))" if len(bad) > 1 else ""
            if what is None:
                why = (r.stderr.strip().splitlines() or [f"srun exited {r.returncode}"])[-1]
                raise LaunchError(f"node {node} did not answer the shared-filesystem check{more}: {why}")
            raise LaunchError(f"node {node} cannot see {what.removeprefix('missing ')}{more}: the venv, the code, "
                              "the run directory and the keys must be on a filesystem every node of the job shares")
        say(f"shared filesystem: {', '.join(nodes)} see the venv, the code, the run directory and the keys")

    def supervise(self, learner: Proc, actors: list[Proc | None], argv: list[list[str]], homes: list[str]) -> int:
        started = [time.monotonic()] * len(actors)
        fails = [0] * len(actors)
        due: list[float | None] = [None] * len(actors)
        while True:
            rc = learner.poll()
            if rc is not None:
                say(f"learner ended with code {rc}")
                return rc
            if self.stopping.is_set():
                return self.stop_learner(learner)
            now = time.monotonic()
            for k, a in enumerate(actors):
                if a is not None and a.poll() is not None:
                    fails[k] = 0 if now - started[k] > HEALTHY_AFTER_S else fails[k]
                    delay = BACKOFF_S[min(fails[k], len(BACKOFF_S) - 1)]
                    say(f"{a.comp.name} on {homes[k]} ended with code {a.poll()}; starting its step again"
                        + (f" in {delay:.0f}s" if delay else ""))
                    a.stop(0)
                    actors[k], due[k] = None, now + delay
                    fails[k] += 1
                if actors[k] is None and due[k] is not None and now >= due[k]:
                    actors[k] = self.start(Component(self.actors[k].name, argv[k]), homes[k])
                    started[k], due[k] = now, None
            time.sleep(0.2)

    def stop_learner(self, learner: Proc) -> int:
        term_steps(self.job, ["learner"])
        try:
            rc = learner.popen.wait(timeout=600)
        except subprocess.TimeoutExpired:
            say("learner still running 600 s after the stop; killing it")
            learner.stop(0)
            rc = learner.poll()
        say(f"learner ended with code {rc} after the stop")
        return rc if rc not in (0, None) else 143

    def shutdown(self, learner: Proc | None, actors: list[Proc]) -> None:
        """Every step ends: the actors by themselves (Shutdown from the learner, or Slurm's SIGTERM), else
        SIGTERM through scancel after ``grace_s``, else SIGKILL to their srun (the job's end does the rest)."""
        if learner is not None:
            if learner.poll() is None:  # through slurmstepd, so it may checkpoint (srun would SIGKILL it)
                term_steps(self.job, ["learner"])
                try:
                    learner.popen.wait(self.grace_s)
                except subprocess.TimeoutExpired:
                    pass
            learner.stop(0)
        for rounds, signal_them in ((self.grace_s, True), (10.0, False)):
            deadline = time.monotonic() + rounds
            while any(a.poll() is None for a in actors) and time.monotonic() < deadline:
                time.sleep(0.5)
            left = [a.comp.name for a in actors if a.poll() is None]
            if not left:
                break
            if signal_them:
                say(f"{', '.join(left)} still running; SIGTERM to their step(s)")
                term_steps(self.job, left)
        for a in actors:
            a.stop(0)


def main(run_dir: str) -> int:
    return Job(Path(run_dir)).run()
