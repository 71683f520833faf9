"""One task of a Slurm step: set what the component needs from Slurm's variables, then exec it.

``python -m launch.slurm_task actor --gpus G --group g --tp T -- CMD...``
    ``CUDA_VISIBLE_DEVICES`` = the g-th group of T GPUs among those the step sees (Slurm's
    ``CUDA_VISIBLE_DEVICES`` when it sets one, else 0..G-1); left alone on CPU nodes (G = 0).
``python -m launch.slurm_task learner --master-addr A --master-port P -- CMD...``
    ``RANK`` = ``SLURM_PROCID``, ``WORLD_SIZE`` = ``SLURM_NTASKS``, ``LOCAL_RANK`` = ``SLURM_LOCALID``,
    ``MASTER_ADDR`` / ``MASTER_PORT`` as given: torch.distributed's env:// rendezvous, which
    ``learner.engine.init_distributed`` (DeepSpeed) uses.

The component replaces this process (``exec``), so Slurm's signals reach it directly. Stdlib only: it runs
once per task before anything heavy.
"""

from __future__ import annotations

import argparse
import os
import sys


class TaskError(RuntimeError):
    """The step's environment does not fit the task; one line."""


def actor_env(env: dict[str, str], gpus: int, group: int, tp: int) -> dict[str, str]:
    """The actor's environment: its GPU group (by position in what the step sees)."""
    if gpus == 0:
        return dict(env)
    seen = [x for x in env.get("CUDA_VISIBLE_DEVICES", "").split(",") if x.strip()] or [str(i) for i in range(gpus)]
    mine = seen[group * tp:(group + 1) * tp]
    if len(mine) != tp:
        raise TaskError(f"actor group {group} needs GPUs {group * tp}..{group * tp + tp - 1} but the step sees "
                        f"{len(seen)} ({','.join(seen)})")
    return {**env, "CUDA_VISIBLE_DEVICES": ",".join(mine)}


def learner_env(env: dict[str, str], master_addr: str, master_port: int) -> dict[str, str]:
    """The rank's torch.distributed variables from Slurm's task variables."""
    try:
        rank, world, local = env["SLURM_PROCID"], env["SLURM_NTASKS"], env["SLURM_LOCALID"]
    except KeyError as e:
        raise TaskError(f"{e.args[0]} is not set: run this under srun") from None
    return {**env, "RANK": rank, "WORLD_SIZE": world, "LOCAL_RANK": local,
            "MASTER_ADDR": master_addr, "MASTER_PORT": str(master_port)}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--" not in argv:
        print("slurm_task: expected `-- COMMAND ...` after the options", file=sys.stderr)
        return 2
    cut = argv.index("--")
    opts, cmd = argv[:cut], argv[cut + 1:]
    p = argparse.ArgumentParser(prog="python -m launch.slurm_task")
    sub = p.add_subparsers(dest="kind", required=True)
    a = sub.add_parser("actor")
    a.add_argument("--gpus", type=int, required=True)
    a.add_argument("--group", type=int, required=True)
    a.add_argument("--tp", type=int, default=1)
    lr = sub.add_parser("learner")
    lr.add_argument("--master-addr", required=True)
    lr.add_argument("--master-port", type=int, required=True)
    args = p.parse_args(opts)
    if not cmd:
        print("slurm_task: no command after --", file=sys.stderr)
        return 2
    try:
        env = (actor_env(dict(os.environ), args.gpus, args.group, args.tp) if args.kind == "actor"
               else learner_env(dict(os.environ), args.master_addr, args.master_port))
    except TaskError as e:
        print(f"slurm_task: {e}", file=sys.stderr)
        return 2
    os.execvpe(cmd[0], cmd, env)
    return 127  # pragma: no cover - exec does not return


if __name__ == "__main__":
    sys.exit(main())
