"""``python -m learner --config FILE [--set k=v ...] [--resume RUN_DIR] [--rollouts zmq|local]``

The learner process (one per rank under the ``deepspeed`` launcher, or a single CPU process). This file
parses the typed config and checks inputs before importing anything heavy: a missing model, pair file
or database is one line on stderr and exit code 2. Rank 0 binds the ZeroMQ rollout and weight
channels (``sync.ZmqRolloutTransport`` / ``sync.ZmqWeightPublisher``) that the actors connect to;
``--rollouts local`` uses the in-process HF stand-in (:mod:`learner.rollouts_local`) instead.
Exit codes: 0 done, 1 stopped by a sync failure or a learner error (one line), 2 bad input.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path


def model_problem(model_id: str) -> str | None:
    """Why ``model_id`` cannot be loaded without a download, or None."""
    p = Path(model_id)
    if p.is_dir():
        return None if (p / "config.json").exists() else f"model directory {p} has no config.json"
    if p.is_absolute() or model_id.startswith(".") or model_id.count("/") != 1:
        return f"model {model_id} not found (no such directory)"
    try:
        from huggingface_hub import try_to_load_from_cache

        if isinstance(try_to_load_from_cache(model_id, "config.json"), str):
            return None
    except Exception:  # noqa: BLE001 - hub missing or broken cache: treated as not cached
        pass
    if os.environ.get("TUCANO2_ALLOW_DOWNLOAD") == "1":
        return None
    return (
        f"model {model_id} is neither a local directory nor in the Hugging Face cache "
        f"(fetch it first: `huggingface-cli download {model_id}`, or set TUCANO2_ALLOW_DOWNLOAD=1)"
    )


def preflight(cfg, resume: Path | None = None, need_data: bool = True) -> str | None:
    """The first problem with the run's inputs, as one line, or None (pair files are read through)."""
    if cfg.learner.device == "cuda":  # the plan put this learner on a GPU: never train on the CPU instead
        import torch

        if not torch.cuda.is_available():
            from configs.device import no_gpu_line

            return ("learner.device is cuda (the plan put this learner on a GPU), but "
                    + no_gpu_line(torch.__version__, torch.version.cuda))
    why = model_problem(cfg.model_id)
    if why:
        return why
    if cfg.init_adapter is not None and not (Path(cfg.init_adapter) / "adapter_config.json").exists():
        return f"init_adapter {cfg.init_adapter} is not a PEFT adapter directory (no adapter_config.json)"
    if cfg.rewards.custom:  # the user's own rewards import and take TRL's arguments, before any model loads
        from rewards.custom import load_custom

        for task, spec in cfg.rewards.custom.items():
            try:
                load_custom(task, spec)
            except ValueError as e:
                return str(e)
    if cfg.tools:  # the user's own tools import, are typed and documented, before any model loads
        from rewards.tools import load_tools

        try:
            load_tools(cfg.tools)
        except ValueError as e:
            return str(e)
    if cfg.sft.enabled and cfg.init_adapter is None:
        sft = Path(cfg.run_dir or "runs/run") / "sft" / "adapter"
        if not (sft / "adapter_config.json").exists():
            return f"sft.enabled but no SFT adapter at {sft}: run `python -m learner.sft --config ...` first"
    if need_data:
        from commerce.sources import problem as source_problem  # a file, a saved dataset or a Hub id (stdlib)

        why = source_problem(cfg.data.train_pairs)
        if why:
            return (f"training pairs not found: {cfg.data.train_pairs} (build them with `python -m commerce build`)"
                    if why[0] else f"training pairs: {why[1]}")
        why = source_problem(cfg.data.eval_pairs) if cfg.eval.every or cfg.eval.at_start else None
        if why:
            return f"eval pairs not found: {cfg.data.eval_pairs}" if why[0] else f"eval pairs: {why[1]}"
        if not cfg.rewards.toy_token and not Path(cfg.data.db_path).is_file():
            return f"database not found: {cfg.data.db_path} (build it with `python -m commerce build`)"
        # The pair files through the trainer's own reader (stdlib only): too many malformed rows stop
        # the run here, before any model loads; a few are one BadRowsWarning, and the trainer skips them.
        from commerce.rows import PairsError, load_pairs

        files = [cfg.data.train_pairs] + ([cfg.data.eval_pairs] if cfg.eval.every or cfg.eval.at_start else [])
        custom = tuple(cfg.rewards.custom)
        for path in files:
            try:
                pf = load_pairs(path, custom_tasks=custom)
            except PairsError as e:
                return f"{e} (`python -m commerce check --pairs {path}` lists every bad row)"
            if not any(r.task in cfg.data.tasks for r in pf.rows):
                found = ", ".join(f"{t} {n}" for t, n in pf.counts().items())
                return f"{path}: no pairs of data.tasks {', '.join(cfg.data.tasks)} (rows per task: {found})"
    if resume is not None:
        from learner.checkpoint import latest_checkpoint

        if latest_checkpoint(resume) is None:
            return f"--resume {resume}: no checkpoint under {resume}/checkpoints"
    return None


def main(argv: list[str] | None = None) -> int:
    t_main = time.time()
    from configs import ConfigError, load_config
    from configs.__main__ import add_config_args

    p = argparse.ArgumentParser(prog="python -m learner", description=__doc__.split("\n\n")[0])
    add_config_args(p)
    p.add_argument(
        "--resume",
        type=Path,
        default=None,
        metavar="RUN_DIR",
        help="continue the run in RUN_DIR from its latest checkpoint",
    )
    p.add_argument(
        "--rollouts",
        choices=("zmq", "local"),
        default="zmq",
        help="zmq: actors over the wire (default); local: in-process HF generate stand-in",
    )
    p.add_argument("--local_rank", type=int, default=None, help=argparse.SUPPRESS)  # deepspeed launcher
    args = p.parse_args(argv)
    overrides = list(args.overrides)
    if args.resume is not None:
        overrides.append(f"run_dir={args.resume}")
    try:
        cfg = load_config(args.config, overrides)
    except ConfigError as e:
        print(f"learner: invalid config: {e}", file=sys.stderr)
        return 2
    from configs import private_run_dir

    private_run_dir(cfg.run_dir or "runs/run")
    problem = preflight(cfg, args.resume)
    if problem:
        print(f"learner: {problem}", file=sys.stderr)
        return 2

    clock = StartupClock(t_main)
    from learner.trainer import LearnerError, Trainer

    clock.mark("imports")
    rank = int(os.environ.get("RANK", "0"))
    transport = publisher = None
    try:
        if rank == 0:
            transport, publisher = _transports(cfg, args.rollouts)
            clock.mark("channels")
        trainer = Trainer(cfg, transport, publisher, resume=args.resume is not None)
        clock.add(trainer.policy.startup, "trainer")
        if args.rollouts == "zmq":
            wait_for_actors(publisher, cfg.actor.replicas, cfg.sync.actor_start_timeout_s, trainer.world)
            clock.mark("actors")
        if rank == 0:
            print(f"learner: start-up: {clock}; then the first publish", flush=True)
        result = trainer.run()
    except LearnerError as e:
        print(f"learner: {e}", file=sys.stderr)
        from learner import comm

        comm.shutdown()
        return 1
    finally:
        for t in (transport, publisher):
            if t is not None:
                t.close()
    if result.stopped and result.stopped.startswith("sync failed"):
        print(f"learner: {result.stopped} (checkpoint written; fix the actors and --resume)", file=sys.stderr)
        return 1
    return 0


class StartupClock:
    """Where the learner's start-up goes: seconds per phase from the process's start (``python``: the interpreter
    and this module's own imports), printed as one ``start-up:`` line that ``launch.compare`` reads."""

    def __init__(self, t_main: float):
        try:
            import psutil

            born = psutil.Process().create_time()
        except Exception:  # noqa: BLE001 - no psutil: the interpreter's start is not counted
            born = t_main
        self.t0 = born
        self.parts: dict[str, float] = {"python": t_main - born}
        self.t = t_main

    def mark(self, name: str) -> None:
        now = time.time()
        self.parts[name] = now - self.t
        self.t = now

    def add(self, parts: dict[str, float], rest: str) -> None:
        """``parts`` measured inside the phase that ends now; what they leave is ``rest``."""
        now = time.time()
        self.parts.update(parts)
        self.parts[rest] = max(0.0, now - self.t - sum(parts.values()))
        self.t = now

    def __str__(self) -> str:
        parts = ", ".join(f"{k} {v:.1f} s" for k, v in self.parts.items())
        return f"{parts} ({self.t - self.t0:.1f} s since the process started)"


def wait_for_actors(publisher, expected: int, timeout_s: float, world: int, poll_s: float = 0.5) -> float:
    """Until ``expected`` actors are connected to rank 0's weight channel (an actor connects once its engine is
    up): the launchers start actors and learner together, so the learner loads its model while the engines start,
    and its first publication and requests wait for them here. Every rank takes part (rank 0 broadcasts what it
    sees every ``poll_s``), so no rank sits in one long collective. After ``timeout_s`` the run stops with one
    :class:`learner.evaluate.LearnerError` line on every rank. Returns the seconds waited."""
    from learner import comm
    from learner.evaluate import LearnerError

    t0 = time.monotonic()
    last_note = None
    while True:
        status = None
        if publisher is not None:
            seen = sorted(publisher.actors())
            waited = time.monotonic() - t0
            if len(seen) >= expected:
                status = "ok"
            elif waited > timeout_s:
                status = (f"{len(seen)} of {expected} actor(s) connected within {timeout_s:.0f} s of the learner's "
                          f"start-up (connected: {', '.join(seen) or 'none'}); not training. See the actors' logs "
                          "(RUN_DIR/logs/actor-K.log); a slow engine start needs a longer --ready-timeout "
                          "(sync.actor_start_timeout_s)")
            else:
                if last_note is None or time.monotonic() - last_note > 30:
                    print(f"learner: waiting for actors: {len(seen)} of {expected} connected "
                          f"({waited:.0f} s; engines still starting)", flush=True)
                    last_note = time.monotonic()
                time.sleep(poll_s)
                status = "wait"
        if world > 1:
            status = comm.broadcast_object(status)
        if status == "ok":
            return time.monotonic() - t0
        if status != "wait":
            raise LearnerError(status)


def _transports(cfg, kind: str):
    if kind == "local":
        from learner.rollouts_local import HFLocalActor, local_device_dtype

        device, dtype = local_device_dtype(cfg)  # the learner's GPU when it has one
        actor = HFLocalActor(
            cfg.model_id, lora_r=cfg.lora_r, lora_alpha=cfg.lora_alpha, wire_dtype=cfg.sync.wire_dtype,
            device=device, dtype=dtype,
        )
        return actor, actor
    import sync
    from sync._net import new_incarnation

    limits = channel_limits(cfg)
    incarnation = new_incarnation()  # one id for both channels: actors tell this learner from a dead one
    transport = sync.ZmqRolloutTransport(cfg.sync, limits=limits, incarnation=incarnation)
    try:
        pub = sync.ZmqWeightPublisher(cfg.sync, limits=limits, incarnation=incarnation)
    except BaseException:
        transport.close(shutdown_actors=False)
        raise
    print(f"learner: weight transfer {pub.transfer}" + (f", fetch port {pub.fetch_port}" if pub.fetch_port else ""),
          flush=True)
    return transport, pub


def channel_limits(cfg):
    """The caps both ends derive from the run (:mod:`sync.limits`), with the model's sizes."""
    from transformers import AutoConfig

    from sync.limits import ChannelLimits

    try:
        hf = AutoConfig.from_pretrained(cfg.model_id).get_text_config()
    except (OSError, ValueError):
        hf = None
    return ChannelLimits.for_run(cfg, hf)


if __name__ == "__main__":
    sys.exit(main())
