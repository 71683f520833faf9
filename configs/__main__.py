"""``python -m configs validate FILE [--set k=v ...]``: print the resolved config or one error line."""

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
    args = p.parse_args(argv)
    try:
        cfg = load_config(args.file, args.overrides)
    except ConfigError as e:
        print(f"invalid config: {e}", file=sys.stderr)
        return 2
    sys.stdout.write(dump_config(cfg))
    return 0


if __name__ == "__main__":
    sys.exit(main())
