"""``python -m configs validate FILE [--set k=v ...]``: print the resolved config or one error line.

``python -m configs rewards FILE [--set k=v ...]``: the config's reward arguments (``rewards.make_reward``'s keyword
arguments, every weight and knob) and data paths as JSON: how ``python -m rewards.redteam``, which may import
only the stdlib and ``commerce``, reads a run config."""

from __future__ import annotations

import argparse
import sys

from configs.loader import ConfigError, dump_config, load_config


def add_config_args(p: argparse.ArgumentParser, required: bool = True) -> None:
    """The ``--config`` / ``--set`` pair every entry point shares."""
    p.add_argument("--config", required=required, help="run config YAML (see configs/)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a field, dotted for nested (learner.zero_stage=3); repeatable")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m configs", description=__doc__)
    sub = p.add_subparsers(dest="cmd", required=True)
    v = sub.add_parser("validate", help="validate a config and print it resolved")
    v.add_argument("file")
    v.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a field, dotted for nested; repeatable")
    r = sub.add_parser("rewards", help="the config's reward arguments and data paths as JSON")
    r.add_argument("file")
    r.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a field, dotted for nested; repeatable")
    args = p.parse_args(argv)
    try:
        cfg = load_config(args.file, args.overrides)
    except ConfigError as e:
        print(f"invalid config: {e}", file=sys.stderr)
        return 2
    if args.cmd == "rewards":
        import json

        d = cfg.data
        sys.stdout.write(json.dumps({"reward_kwargs": cfg.rewards.reward_kwargs(), "db_path": str(d.db_path),
                                     "eval_pairs": str(d.eval_pairs), "train_pairs": str(d.train_pairs),
                                     "tasks": list(d.tasks)}, ensure_ascii=False) + "\n")
        return 0
    sys.stdout.write(dump_config(cfg))
    return 0


if __name__ == "__main__":
    sys.exit(main())
