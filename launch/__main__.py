"""``python -m launch node|cpu|slurm --config FILE [options]``: plan, check, write and run a training run.

The shell launchers (``launch/v4_2_3b.sh``, ``launch/v4_1_05b.sh``, ``launch/cpu.sh``, ``launch/slurm.sh``) are
thin wrappers around this. ``--dry-run`` prints the plan and starts nothing. ``slurm`` writes a batch job and
submits it (``--dry-run``: writes and prints it); ``slurm-job RUN_DIR`` is what that job runs on its first node.
"""

from __future__ import annotations

import argparse
import os
import sys

from configs.__main__ import add_config_args
from launch.plan import LaunchError, cpu_plan, node_plan


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    from configs import private_run_dir

    private_run_dir(None)  # umask 077: the plan, the logs and every component it starts write privately
    if argv[:1] == ["slurm"]:
        from launch.slurm import cli

        return cli(argv[1:])
    if argv[:1] == ["slurm-job"] and len(argv) == 2:
        from launch.slurm_job import main as job_main

        return job_main(argv[1])
    p = argparse.ArgumentParser(prog="python -m launch", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="mode", required=True)
    for mode in ("node", "cpu"):
        s = sub.add_parser(mode)
        add_config_args(s)
        s.add_argument("--run-dir", default=None, help="default: the config's run_dir (runs/<config stem>)")
        s.add_argument("--dry-run", action="store_true", help="print the plan, start nothing")
        s.add_argument("--resume", action="store_true", help="continue the run in --run-dir from its last checkpoint")
        s.add_argument("--restart-actors", action="store_true", help="restart an actor that dies instead of failing")
        s.add_argument("--ready-timeout", type=float, default=None,
                       help="seconds the learner waits for the actors to connect (sets sync.actor_start_timeout_s; "
                            "default 900)")
    node = sub.choices["node"]
    node.add_argument("--actor-gpus", default=os.environ.get("ACTOR_GPUS"), help="e.g. 0,1,2,3 (env ACTOR_GPUS)")
    node.add_argument("--learner-gpus", default=os.environ.get("LEARNER_GPUS"), help="e.g. 4,5,6,7 (env LEARNER_GPUS)")
    node.add_argument("--tp", type=int, default=int(os.environ["TP"]) if os.environ.get("TP") else None,
                      help="tensor parallel size per actor (env TP)")
    node.add_argument("--gpus", default=os.environ.get("GPUS"),
                      help="GPUs actors and learner share, e.g. 0 on a one-GPU machine (env GPUS)")
    node.add_argument("--gpu-mem", type=float, default=float(os.environ.get("GPU_MEM") or 0) or None,
                      metavar="GIB", help="memory per GPU in GiB for the plan when nvidia-smi cannot tell, e.g. for a "
                                          "dry run on a laptop; an L4 has 22.5 (env GPU_MEM)")
    node.add_argument("--hostfile", default=os.environ.get("HOSTFILE"),
                      help="DeepSpeed hostfile: learner ranks across nodes (env HOSTFILE)")
    sub.add_parser("slurm", help="write RUN_DIR/job.sbatch and submit it (python -m launch slurm --help)")
    sub.add_parser("slurm-job", help="inside that job: RUN_DIR (what job.sbatch runs)")
    cpu = sub.choices["cpu"]
    cpu.add_argument("--actor-cores", default=os.environ.get("ACTOR_CORES"), help="pin the actor (taskset list)")
    cpu.add_argument("--learner-cores", default=os.environ.get("LEARNER_CORES"), help="pin the learner")
    args = p.parse_args(argv)
    if args.mode.startswith("slurm"):
        p.error(f"{args.mode}: see python -m launch {args.mode} --help")

    if args.ready_timeout is not None:
        args.overrides.append(f"sync.actor_start_timeout_s={args.ready_timeout}")
    try:
        if args.mode == "node":
            plan = node_plan(args.config, args.overrides, actor_gpus=args.actor_gpus, learner_gpus=args.learner_gpus,
                             tp=args.tp, run_dir=args.run_dir, hostfile=args.hostfile, check=not args.dry_run,
                             gpus=args.gpus, gpu_mem=args.gpu_mem)
        else:
            plan = cpu_plan(args.config, args.overrides, run_dir=args.run_dir, actor_cores=args.actor_cores,
                            learner_cores=args.learner_cores, check=not args.dry_run)
    except LaunchError as e:
        print(f"launch: {e}", file=sys.stderr)
        return 2
    if args.resume:
        plan.learner.argv += ["--resume", str(plan.run_dir)]
    print(plan.describe(), flush=True)
    if args.dry_run:
        return 0
    plan.write()
    from launch.supervise import run

    return run(plan, restart_actors=args.restart_actors)


if __name__ == "__main__":
    sys.exit(main())
