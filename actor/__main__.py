"""``python -m actor --config FILE [--replica K] [--set k=v ...]``: one vLLM rollout server.

Parses and checks the config (and the CURVE keys when the learner is not on loopback) before the
engine starts; any problem there is one line on stderr and exit code 2. Then: start the engine,
connect to the learner (``sync.ActorEndpoint``), serve (``actor.serve.ActorServer``) until a Shutdown
message, SIGTERM or SIGINT, close the engine and exit 0 with no EngineCore process left.
"""

from __future__ import annotations

import argparse
import logging
import signal
import socket
import sys
import time
from pathlib import Path


def parse_args(argv=None) -> argparse.Namespace:
    from configs.__main__ import add_config_args

    p = argparse.ArgumentParser(prog="python -m actor", description=__doc__.splitlines()[0])
    add_config_args(p)
    p.add_argument("--replica", type=int, default=0, help="replica index (seed offset, CPU core slice)")
    p.add_argument("--actor-id", default=None, help="identity on the sync channels (default HOST-a<replica>)")
    p.add_argument("--grace-s", type=float, default=30.0,
                   help="on shutdown, seconds to finish requests in flight before dropping them")
    p.add_argument("--log-level", default="INFO")
    p.add_argument("--profile", type=Path, default=None,
                   help="write a cProfile of the serve loop (this process, not EngineCore) to this file")
    return p.parse_args(argv)


def check(cfg) -> None:
    """Fail fast on what would otherwise surface after the engine start: the CURVE keys over TCP, the
    private ipc directory on one node."""
    from sync._net import connect_address, transport_kind

    if transport_kind(cfg.sync) == "tcp":
        from sync.keys import client_keys

        client_keys(cfg.sync.keys_dir)
    connect_address(cfg.sync, cfg.sync.rollout_port)


def _born(default: float) -> float:
    """When this process started (psutil), else ``default``."""
    try:
        import psutil

        return psutil.Process().create_time()
    except Exception:  # noqa: BLE001 - no psutil: the interpreter's start is not counted
        return default


def main(argv=None) -> int:
    t_main = time.time()
    args = parse_args(argv)
    from configs.loader import ConfigError, load_config, private_run_dir
    from sync import SyncError

    try:
        cfg = load_config(args.config, args.overrides)
        check(cfg)
    except (ConfigError, SyncError) as e:
        print(f"actor: {e}", file=sys.stderr)
        return 2
    from actor.runtime import device_problem

    if (problem := device_problem(cfg)) is not None:
        print(f"actor: {problem}", file=sys.stderr)
        return 2
    private_run_dir(None)  # the actor writes only private files (its run directory is the learner's)
    if args.replica < 0:
        print("actor: --replica must be >= 0", file=sys.stderr)
        return 2
    if cfg.tools:  # the user's own tools import, are typed and documented, before the engine starts
        from rewards.tools import load_tools

        try:
            load_tools(cfg.tools)
        except ValueError as e:
            print(f"actor: {e}", file=sys.stderr)
            return 2
    actor_id = args.actor_id or f"{socket.gethostname()}-a{args.replica}"
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr,
                        format=f"%(asctime)s {actor_id} %(name)s %(levelname)s %(message)s")

    # A signal during the engine start is honoured once it is up (no half-started EngineCore left).
    early: list[str] = []
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda s, _f: early.append(signal.Signals(s).name))

    import torch

    if not torch.cuda.is_available() and not cfg.actor.inline_engine:  # inline: the engine sets its threads
        # This process only drives the engine; tensor math runs in EngineCore's workers. One thread keeps
        # an inherited OpenMP runtime (an LD_PRELOADed libiomp spins 200 ms after each parallel region)
        # from competing with the workers for the cores (here, with libiomp inherited: 926 tok/s without
        # this, 2,627 with it, 3,370 with a clean environment).
        torch.set_num_threads(1)

    from actor.engine import RolloutEngine
    from actor.serve import ActorServer, make_scorer

    # Where the start-up goes (one `start-up:` line before READY; launch.compare reads it).
    born = _born(t_main)
    parts, t = {"python": t_main - born, "imports": time.time() - t_main}, time.time()
    import vllm  # noqa: F401 - timed apart from the engine

    parts["vllm import"], t = time.time() - t, time.time()
    try:
        engine = RolloutEngine(cfg, args.replica)
        parts["engine"], t = time.time() - t, time.time()
    except Exception as e:
        print(f"actor: engine failed to start: {type(e).__name__}: {e}".splitlines()[0], file=sys.stderr)
        return 1
    endpoint = None
    try:
        from sync import ActorEndpoint
        from sync._net import connect_address

        endpoint = ActorEndpoint(cfg.sync, actor_id, keep_versions=cfg.lora_slots + 2,
                                 limits=engine.channel_limits())
        server = ActorServer(cfg, engine, endpoint, actor_id, grace_s=args.grace_s, scorer=make_scorer(cfg))
        server.install_signal_handlers()
        if early:
            server.request_stop(early[0])
        parts["channels"] = time.time() - t
        print(f"actor {actor_id}: start-up: {', '.join(f'{k} {v:.1f} s' for k, v in parts.items())} "
              f"({time.time() - born:.1f} s since the process started)", flush=True)
        # On a GPU shared with the learner the launcher (launch.supervise) starts the learner once every actor
        # printed this line; elsewhere they start together and the learner waits for the actors to connect.
        print(f"actor {actor_id}: READY (engine up, {engine.mode} mode, {engine.dtype}, "
              f"learner at {connect_address(cfg.sync, cfg.sync.rollout_port)})", flush=True)
        if args.profile is None:
            reason = server.run()
        else:
            import cProfile

            prof = cProfile.Profile()
            try:
                reason = prof.runcall(server.run)
            finally:
                prof.dump_stats(str(args.profile))
        logging.getLogger("actor").info("actor %s: exiting (%s), %d groups served", actor_id, reason,
                                        server.groups_sent)
    finally:
        if endpoint is not None:
            endpoint.close()
        engine.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
