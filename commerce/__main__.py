"""CLI: ``python -m commerce build --out DIR [--seed N] [--orders N] [--insights N]`` and
``python -m commerce check [--db FILE] [--pairs FILE ...] [--strict] [--all]`` (a report on a user's
own data before a run: exit 0 when ready, 2 with the problems listed; see :mod:`commerce.check`)."""

from __future__ import annotations

import argparse
import json
import sys

from . import DEFAULT_ORDERS, SchemaMismatch, build
from . import check as check_mod


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m commerce", description=__doc__)
    sub = ap.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="write DIR/commerce.db and DIR/pairs/{train,eval}.jsonl")
    b.add_argument("--out", default="data", help="output directory (default: data)")
    b.add_argument("--seed", type=int, default=42)
    b.add_argument("--orders", type=int, default=DEFAULT_ORDERS, help=f"orders in the db (default {DEFAULT_ORDERS})")
    b.add_argument("--insights", type=int, default=None,
                   help="total insights pairs, train + eval (default 174: 148 train; Scenario C: 350)")
    b.add_argument("--progress", action="store_true", help="show progress even for small builds")
    c = sub.add_parser("check", help="is a user's commerce.db and pairs data ready for a run? (exit 0/2)",
                       description=check_mod.__doc__.split("\n\n")[0])
    check_mod.add_arguments(c)
    args = ap.parse_args(argv)
    if args.cmd == "check":
        return check_mod.main(args, c)
    try:
        summary = build(args.out, seed=args.seed, orders=args.orders, insights=args.insights,
                        progress=True if args.progress else None)
        print(json.dumps(summary, ensure_ascii=False))
    except (SchemaMismatch, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
