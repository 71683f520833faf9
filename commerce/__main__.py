"""CLI: ``python -m commerce build --out DIR [--seed N] [--orders N] [--insights N]`` and
``python -m commerce check --db FILE [--pairs FILE]`` (exit 2 with a one-line reason on mismatch)."""

from __future__ import annotations

import argparse
import json
import sys

from . import DEFAULT_ORDERS, SchemaMismatch, build, check_db, check_pairs


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
    c = sub.add_parser("check", help="check a commerce.db (and a pairs file) against the schema")
    c.add_argument("--db", required=True)
    c.add_argument("--pairs", action="append", default=[], help="pairs jsonl (repeatable)")
    args = ap.parse_args(argv)
    try:
        if args.cmd == "build":
            summary = build(args.out, seed=args.seed, orders=args.orders, insights=args.insights,
                            progress=True if args.progress else None)
            print(json.dumps(summary, ensure_ascii=False))
        else:
            check_db(args.db)
            counts = {p: check_pairs(p) for p in args.pairs}
            print(f"ok: {args.db}" + "".join(f"; {p}: {c}" for p, c in counts.items()))
    except (SchemaMismatch, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
