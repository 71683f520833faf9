"""``launch/slurm.sh CONFIG``: one training run as one Slurm batch job, actors and learner ranks on separate nodes.

The job (``RUN_DIR/job.sbatch``, whole nodes: N actor nodes + M learner nodes of G GPUs each):

- The first M nodes of the allocation (in Slurm's order) run the learner: one ``srun`` step with one task per
  rank (G per node; one per node on CPU nodes, ``--gpus-per-node 0``). :mod:`launch.slurm_task` turns
  ``SLURM_PROCID`` / ``SLURM_NTASKS`` / ``SLURM_LOCALID`` into ``RANK`` / ``WORLD_SIZE`` / ``LOCAL_RANK``;
  ``MASTER_ADDR`` is the first learner node's address from the allocation (``scontrol show node``), where
  rank 0 also binds the sync sockets. No ssh, no pdsh, no hostfile, no DeepSpeed launcher.
- The other N nodes run the actors: one ``srun`` step per actor, G / TP actors per node, each on its own
  group of TP of the node's GPUs (one actor per CPU node), connecting to the learner node's address.
- The job spans more than one node, so the sync runs over TCP with CURVE: the job driver makes the keys in
  ``RUN_DIR/keys`` (0600 files in a 0700 directory) before any component starts, once per run directory.
- The batch script runs the job driver (:mod:`launch.slurm_job`), which first checks, with one step on every
  node, that each sees the venv, the code, the run directory and the keys (a shared filesystem), then starts
  those steps, actors and learner together (the learner waits for the actors to connect), restarts a dead
  actor step, and passes Slurm's signals on.

Why the steps are started by a Python driver rather than written out in bash: the job has to wait for
READY lines, tag every line with its component and node, restart one actor step with a back-off while the
others run, and tell a requeued start from a fresh one; that is :mod:`launch.supervise`'s work, reused.
``job.sbatch`` keeps the ``#SBATCH`` header and lists the step commands (``commands.sh`` has them too).

Every step runs with ``--overlap``: steps on one node share its CPUs and memory (by default the first step
on a node would hold all of them and the next would wait). GPUs are handed out by position in the GPU list
the step sees (``CUDA_VISIBLE_DEVICES`` as Slurm sets it, else 0..G-1), as ``launch/v4_2_3b.sh`` does on
one node. Faults: ``--no-kill`` keeps the job alive when an actor node is lost (the learner re-sends that
actor's requests); ``--requeue`` (on by default) lets Slurm restart the job after preemption or a failed
node, and the restarted learner resumes from the run directory's last checkpoint.
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

from configs.schema import SyncConfig
from launch.plan import Component, LaunchError, Plan, _with, preflight, resolve, weights_travel

JOB_FILE = "job.sbatch"
KEYS_DIR = "keys"


@dataclass
class SlurmSpec:
    """The job's layout: what the job driver needs besides the plan's components (stored in plan.json)."""

    actor_nodes: int
    learner_nodes: int
    gpus_per_node: int
    tp: int
    actors_per_node: int
    ranks_per_node: int
    master_port: int
    python: str
    workdir: str
    run_dir: str
    resume: bool = False
    requeue: bool = True
    ready_timeout_s: float = 900.0
    sbatch: list[str] = field(default_factory=list)

    @property
    def nodes(self) -> int:
        return self.actor_nodes + self.learner_nodes

    @property
    def world(self) -> int:
        return self.learner_nodes * self.ranks_per_node


def checkpoints(run_dir: str | Path) -> list[Path]:
    """Complete checkpoints of a run directory, oldest first (``learner.checkpoint.list_checkpoints``'s
    rule, without importing torch here)."""
    root = Path(run_dir) / "checkpoints"
    if not root.is_dir():
        return []
    return sorted(p for p in root.glob("step-*") if (p / "trainer_state.json").is_file())


def _explicit(overrides: list[str], key: str) -> str | None:
    """The value given with ``--set key=...`` (the last one), or None."""
    found = None
    for item in overrides:
        k, _, v = item.partition("=")
        if k.strip() == key:
            found = v
    return found


def fit(cfg, overrides: list[str], actor_nodes: int, learner_nodes: int, gpus_per_node: int,
        tp: int | None) -> tuple[int, int, int]:
    """(tensor parallel size, actors per node, learner ranks per node), or a LaunchError saying what does
    not fit: node counts, GPUs per node against TP, and replicas/ranks the caller pinned with ``--set``."""
    if actor_nodes < 1:
        raise LaunchError(f"--actor-nodes {actor_nodes}: at least one node must run actors")
    if learner_nodes < 1:
        raise LaunchError(f"--learner-nodes {learner_nodes}: at least one node must run the learner")
    if gpus_per_node < 0:
        raise LaunchError(f"--gpus-per-node {gpus_per_node}: must be >= 0 (0: CPU nodes)")
    tp = tp or cfg.actor.tensor_parallel_size
    if gpus_per_node == 0:
        if tp != 1:
            raise LaunchError(f"--gpus-per-node 0 (CPU nodes) runs one actor per node: tensor parallel size "
                              f"must be 1, got {tp}")
        per_node, ranks_per_node = 1, 1
    else:
        if tp > gpus_per_node or gpus_per_node % tp:
            raise LaunchError(f"tensor parallel size {tp} does not split a node's {gpus_per_node} GPU(s) into "
                              f"actor groups (an actor does not span nodes)")
        per_node, ranks_per_node = gpus_per_node // tp, gpus_per_node
    replicas, ranks = actor_nodes * per_node, learner_nodes * ranks_per_node
    layout = f"{actor_nodes} actor node(s) x {max(gpus_per_node, 1)} {'GPU' if gpus_per_node else 'CPU node'}"
    pinned = _explicit(overrides, "actor.replicas")
    if pinned is not None and pinned.strip() != str(replicas):
        raise LaunchError(f"--set actor.replicas={pinned} does not fit {layout} / tensor parallel {tp} = "
                          f"{replicas} actor(s); drop it or change --actor-nodes/--gpus-per-node/--tp")
    pinned = _explicit(overrides, "learner.ranks")
    if pinned is not None and pinned.strip() != str(ranks):
        raise LaunchError(f"--set learner.ranks={pinned} does not fit {learner_nodes} learner node(s) x "
                          f"{ranks_per_node} rank(s) = {ranks}; drop it or change --learner-nodes/--gpus-per-node")
    if ranks > cfg.completions_per_step:
        raise LaunchError(f"{ranks} learner ranks for {cfg.completions_per_step} completions per step "
                          f"(prompts_per_step x grad_accum x num_generations): some ranks would train "
                          f"only padding; use fewer --learner-nodes")
    return tp, per_node, ranks_per_node


def sbatch_options(spec: SlurmSpec, run_dir: Path, name: str, *, partition: str | None, time: str | None,
                   account: str | None, extra: list[str]) -> list[str]:
    opts = [f"--job-name={name}", f"--nodes={spec.nodes}", "--exclusive",
            f"--output={run_dir / 'slurm-%j.out'}", "--open-mode=append", f"--chdir={spec.workdir}",
            "--requeue" if spec.requeue else "--no-requeue", "--no-kill"]
    if spec.gpus_per_node:
        opts.insert(2, f"--gres=gpu:{spec.gpus_per_node}")
    opts += [f"--partition={partition}"] * bool(partition) + [f"--time={time}"] * bool(time)
    opts += [f"--account={account}"] * bool(account)
    line: list[str] = []
    for tok in extra:  # `-- --qos high --mail-type=END`: one #SBATCH line per option
        if tok.startswith("-") and line:
            opts.append(shlex.join(line))
            line = []
        line.append(tok)
    if line:
        opts.append(shlex.join(line))
    return opts


def slurm_plan(config: str, overrides: list[str], *, actor_nodes: int = 1, learner_nodes: int = 1,
               gpus_per_node: int = 8, tp: int | None = None, run_dir: str | None = None,
               partition: str | None = None, time: str | None = None, account: str | None = None,
               requeue: bool = True, resume: bool = False, ready_timeout_s: float | None = None,
               extra: list[str] | None = None, check: bool = True) -> tuple[Plan, SlurmSpec]:
    """The job's plan (components and layout); ``check``: inputs exist and the cluster can run it."""
    cfg = resolve(config, overrides, run_dir)
    tp, per_node, ranks_per_node = fit(cfg, overrides, actor_nodes, learner_nodes, gpus_per_node, tp)
    rd = Path(cfg.run_dir)
    updates = dict(actor__replicas=actor_nodes * per_node, actor__tensor_parallel_size=tp,
                   learner__ranks=learner_nodes * ranks_per_node, sync__keys_dir=str(rd / KEYS_DIR))
    if "transport" in SyncConfig.model_fields:  # more than one node: TCP, and TCP always with CURVE
        updates["sync__transport"] = "tcp"
    if ready_timeout_s is not None:  # the learner bounds its wait for the actors with it
        updates["sync__actor_start_timeout_s"] = ready_timeout_s
    if gpus_per_node:  # on GPU nodes a component that finds no GPU refuses to start (configs.device)
        updates.update(actor__device="cuda", learner__device="cuda")
    cfg = _with(cfg, **updates)
    if check:
        check_cluster(partition, actor_nodes + learner_nodes, gpus_per_node)
        preflight(cfg, check_ports=False, keys=False)  # ports and keys belong to the nodes, at job start
        done = checkpoints(rd)
        if resume and not done:
            raise LaunchError(f"--resume: no checkpoint under {rd / 'checkpoints'}")
        if done and not resume:
            raise LaunchError(f"{rd} already holds checkpoints (last: {done[-1].name}): pass --resume to continue "
                              f"that run, or pick another --run-dir (a requeued job resumes from the last one)")
    spec = SlurmSpec(actor_nodes=actor_nodes, learner_nodes=learner_nodes, gpus_per_node=gpus_per_node, tp=tp,
                     actors_per_node=per_node, ranks_per_node=ranks_per_node, master_port=cfg.sync.master_port,
                     python=sys.executable, workdir=str(Path.cwd()), run_dir=str(rd), resume=resume,
                     requeue=requeue, ready_timeout_s=cfg.sync.actor_start_timeout_s)
    spec.sbatch = sbatch_options(spec, rd.resolve(), f"tucano2-{rd.name}", partition=partition, time=time,
                                 account=account, extra=list(extra or []))
    conf = str(rd / "config.yaml")
    py = [sys.executable, "-m"]
    actors = []
    for k in range(actor_nodes * per_node):
        node, g = divmod(k, per_node)
        gpus = f"GPU {g * tp}-{g * tp + tp - 1}" if tp > 1 else f"GPU {g}"
        actors.append(Component(name=f"actor-{k}", argv=py + ["actor", "--config", conf, "--replica", str(k)],
                                devices=f"actor node {node}, {gpus if gpus_per_node else 'CPU'}",
                                ports=[cfg.sync.rollout_port, cfg.sync.weight_port]))
    learner = Component(name="learner", argv=py + ["learner", "--config", conf],
                        devices=f"{learner_nodes} node(s) x {ranks_per_node} rank(s)",
                        ports=[cfg.sync.rollout_port, cfg.sync.weight_port, spec.master_port])
    if resume:
        learner.argv += ["--resume", str(rd)]
    plan = Plan("slurm", rd, cfg, actors, learner, extra={"slurm": asdict(spec)})
    plan.commands = [(f"{a.name} ({a.devices})", placeholder_join(actor_step(spec, a, k, f"$ACTOR_NODE_{k // per_node}",
                                                                       "$LEARNER_ADDR")))
                     for k, a in enumerate(actors)]
    plan.commands.append((f"learner ({learner.devices})", placeholder_join(learner_step(spec, learner, "$LEARNER_NODES",
                                                                                 "$LEARNER_ADDR"))))
    return plan, spec


# ------------------------------------------------------------------------------------------------ steps
def placeholder_join(argv: list[str]) -> str:
    """``shlex.join`` that leaves ``$NAME`` placeholders expandable (double quotes instead of single)."""
    return re.sub(r"'([^'$]*\$[A-Z_0-9]+[^']*)'", r'"\1"', shlex.join(argv))


def runtime_sets(addr: str) -> list[str]:
    """What only the allocation knows: the learner node's address (bind and connect)."""
    return ["--set", f"sync.host={addr}", "--set", f"sync.connect_host={addr}"]


def actor_step(spec: SlurmSpec, comp: Component, k: int, node: str, addr: str) -> list[str]:
    """``srun`` for actor ``k`` on ``node``: one task, its GPU group, an actor id naming the node."""
    group = k % spec.actors_per_node
    return ["srun", "--overlap", "--nodes=1", "--ntasks=1", f"--nodelist={node}", f"--job-name={comp.name}",
            "--kill-on-bad-exit=1", "--mpi=none", spec.python, "-m", "launch.slurm_task", "actor",
            "--gpus", str(spec.gpus_per_node), "--group", str(group), "--tp", str(spec.tp), "--",
            *comp.argv, "--actor-id", f"{node}-a{k}", *runtime_sets(addr)]


def learner_step(spec: SlurmSpec, comp: Component, nodes: str, addr: str, resume: bool = False) -> list[str]:
    """``srun`` for the learner: one task per rank on the learner nodes, rank 0 on the first."""
    argv = list(comp.argv)
    if resume and "--resume" not in argv:
        argv += ["--resume", spec.run_dir]
    label = ["--label"] if spec.world > 1 else []
    return ["srun", "--overlap", f"--nodes={spec.learner_nodes}", f"--ntasks={spec.world}",
            f"--ntasks-per-node={spec.ranks_per_node}", f"--nodelist={nodes}", "--job-name=learner",
            "--kill-on-bad-exit=1", "--mpi=none", *label, spec.python, "-m", "launch.slurm_task", "learner",
            "--master-addr", addr, "--master-port", str(spec.master_port), "--", *argv, *runtime_sets(addr)]


# ------------------------------------------------------------------------------------------------ script
def job_script(plan: Plan, spec: SlurmSpec) -> str:
    c = plan.config
    rd = Path(spec.run_dir).resolve()
    lines = ["#!/usr/bin/env bash",
             f"# Written by launch/slurm.sh: {c.model_id} on {spec.actor_nodes} actor node(s) "
             f"({spec.actors_per_node} actor(s) each) + {spec.learner_nodes} learner node(s) ({spec.ranks_per_node} "
             f"rank(s) each), {spec.gpus_per_node} GPU(s) per node.",
             *[f"#SBATCH {o}" for o in spec.sbatch],
             "#",
             "# The job driver (python -m launch slurm-job) runs these steps; the allocation fills in the nodes:",
             "#   LEARNER_NODES: the first learner node(s) of the allocation; ACTOR_NODE_i: the others, in order;",
             "#   LEARNER_ADDR: the first learner node's NodeAddr (rank 0 binds the sync sockets there).",
             *[f"#   {what}:\n#     {line}" for what, line in plan.commands or []],
             f"# CURVE keys: {rd / KEYS_DIR} (made before any step starts). Whenever the run directory holds a",
             "# checkpoint (a requeued start, or this script submitted again) the learner resumes from the last one.",
             "set -euo pipefail",
             "export PYTHONUNBUFFERED=1",
             f"exec {shlex.quote(spec.python)} -m launch slurm-job {shlex.quote(str(rd))}"]
    return "\n".join(lines) + "\n"


def describe(plan: Plan, spec: SlurmSpec) -> str:
    c = plan.config
    busy = c.prompts_per_step * (c.sync.max_staleness + 1)
    note = (f"; note: {c.actor.replicas} actors but at most {busy} requests in flight (prompts_per_step x "
            f"(max_staleness + 1)): some will idle") if c.actor.replicas > busy else ""
    return (f"plan (slurm): {spec.nodes} node(s): {spec.learner_nodes} learner ({spec.world} rank(s)), "
            f"{spec.actor_nodes} actor ({c.actor.replicas} actor(s), tensor parallel {spec.tp}); model {c.model_id}; "
            f"run dir {plan.run_dir}{note}\n"
            f"sync: tcp to the first learner node, rollout port {c.sync.rollout_port}, weight port "
            f"{c.sync.weight_port}, CURVE keys {c.sync.keys_dir}; {weights_travel(c.sync)}; requeue "
            f"{'on' if spec.requeue else 'off'}")


def write(plan: Plan, spec: SlurmSpec) -> Path:
    plan.write()
    path = plan.run_dir / JOB_FILE
    path.write_text(job_script(plan, spec))
    path.chmod(0o755)
    return path


# ------------------------------------------------------------------------------------------------ cluster
def _run(argv: list[str], what: str) -> str:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise LaunchError(f"{what}: {argv[0]} failed ({e})") from None
    if out.returncode != 0:
        msg = (out.stderr or out.stdout).strip().splitlines()
        raise LaunchError(f"{what}: {shlex.join(argv)} exited {out.returncode}: {msg[-1] if msg else ''}")
    return out.stdout


def check_cluster(partition: str | None, nodes: int, gpus_per_node: int) -> None:
    """sbatch is there, the partition exists and has enough nodes (and GPUs per node, when sinfo says)."""
    for tool in ("sbatch", "sinfo"):
        if shutil.which(tool) is None:
            raise LaunchError(f"{tool} not found on PATH: run this on a Slurm login node (or --dry-run)")
    rows = [r.split("|") for r in _run(["sinfo", "-h", "-N", "-o", "%P|%N|%G"], "Slurm partitions").split()]
    parts = {p.rstrip("*") for p, _, _ in rows}
    if partition is None:
        default = [p.rstrip("*") for p, _, _ in rows if p.endswith("*")]
        if not default:
            raise LaunchError(f"no default partition; pick one with --partition ({', '.join(sorted(parts))})")
        partition = default[0]
    elif partition not in parts:
        raise LaunchError(f"partition {partition!r} does not exist (sinfo lists: {', '.join(sorted(parts)) or 'none'})")
    mine = {n: g for p, n, g in rows if p.rstrip("*") == partition}
    if len(mine) < nodes:
        raise LaunchError(f"the job needs {nodes} node(s) but partition {partition!r} has {len(mine)}")
    if gpus_per_node:
        counts = [sum(int(m) for m in re.findall(r"gpu(?::[^:,(]+)?:(\d+)", g)) for g in mine.values()]
        if max(counts, default=0) < gpus_per_node:
            raise LaunchError(f"--gpus-per-node {gpus_per_node}: partition {partition!r} nodes offer at most "
                              f"{max(counts, default=0)} GPU(s) (sinfo %G); use --gpus-per-node 0 on CPU nodes")


def submit(job: Path) -> str:
    """``sbatch job``; returns sbatch's own line (``Submitted batch job N``)."""
    return _run(["sbatch", str(job)], "sbatch").strip()


# ------------------------------------------------------------------------------------------------ command
def cli(argv: list[str]) -> int:
    """``python -m launch slurm --config FILE [options] [-- extra sbatch args]``."""
    import argparse

    from configs.__main__ import add_config_args

    extra: list[str] = []
    if "--" in argv:
        cut = argv.index("--")
        argv, extra = argv[:cut], argv[cut + 1:]
    p = argparse.ArgumentParser(prog="launch/slurm.sh CONFIG", description=__doc__.split("\n\n")[0])
    add_config_args(p)
    p.add_argument("--actor-nodes", type=int, default=1, help="nodes running actors (default 1)")
    p.add_argument("--learner-nodes", type=int, default=1, help="nodes running learner ranks (default 1)")
    p.add_argument("--gpus-per-node", type=int, default=8, help="GPUs per node (default 8; 0: CPU nodes)")
    p.add_argument("--tp", type=int, default=None, help="GPUs per actor (tensor parallel; default from the config)")
    p.add_argument("--partition", default=None, help="Slurm partition (default: the cluster's default)")
    p.add_argument("--time", default=None, help="time limit, as sbatch --time takes it")
    p.add_argument("--account", default=None, help="Slurm account to charge")
    p.add_argument("--run-dir", default=None, help="default: the config's run_dir (runs/<config stem>)")
    p.add_argument("--resume", action="store_true", help="continue the run in --run-dir from its last checkpoint")
    p.add_argument("--requeue", action=argparse.BooleanOptionalAction, default=True,
                   help="let Slurm requeue the job after preemption or a node failure (default on)")
    p.add_argument("--ready-timeout", type=float, default=None,
                   help="seconds the learner waits for the actors to connect (sets sync.actor_start_timeout_s; "
                        "default 900)")
    p.add_argument("--dry-run", action="store_true", help="write and print job.sbatch; submit nothing")
    args = p.parse_args(argv)
    try:
        plan, spec = slurm_plan(args.config, args.overrides, actor_nodes=args.actor_nodes,
                                learner_nodes=args.learner_nodes, gpus_per_node=args.gpus_per_node, tp=args.tp,
                                run_dir=args.run_dir, partition=args.partition, time=args.time,
                                account=args.account, requeue=args.requeue, resume=args.resume,
                                ready_timeout_s=args.ready_timeout, extra=extra, check=not args.dry_run)
    except LaunchError as e:
        print(f"launch: {e}", file=sys.stderr)
        return 2
    print(describe(plan, spec), flush=True)
    job = write(plan, spec)
    if args.dry_run:
        print(f"# {job} (dry run: not submitted)")
        print(job.read_text(), end="")
        return 0
    try:
        line = submit(job)
    except LaunchError as e:
        print(f"launch: {e}", file=sys.stderr)
        return 2
    print(line, flush=True)
    m = re.search(r"(\d+)", line)
    jid = m.group(1) if m else "JOBID"
    out = plan.run_dir / f"slurm-{jid}.out"
    print(f"run dir: {plan.run_dir}\nfollow: tail -f {out}   (per component: {plan.run_dir / 'logs'}/)\n"
          f"queue: squeue -j {jid} --steps   stop: scancel {jid} (the learner checkpoints first)")
    return 0
