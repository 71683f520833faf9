"""``python -m zoo build|pretrain|count``: build, pre-train or count Tucano2-family models (see zoo/)."""

from __future__ import annotations

import argparse
import sys
import time


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m zoo", description=__doc__)
    sub = p.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="build a random-weight Tucano2-family model directory")
    b.add_argument("--shape", default="tiny")
    b.add_argument("--out", required=True)
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--db", default=None, help="commerce.db whose text trains the tokenizer")
    b.add_argument("--force", action="store_true", help="rebuild even if DIR is up to date")
    sub.add_parser("count", help="print parameter counts of every shape (meta device)")
    pt = sub.add_parser("pretrain", help="train all weights on the commerce text (the tiny model's 'pre-training')")
    pt.add_argument("--model", required=True)
    pt.add_argument("--out", required=True)
    pt.add_argument("--db", default=None)
    pt.add_argument("--steps", type=int, default=300)
    pt.add_argument("--batch", type=int, default=16)
    pt.add_argument("--lr", type=float, default=3e-3)
    pt.add_argument("--block", type=int, default=256, help="tokens per packed training sequence")
    pt.add_argument("--seed", type=int, default=0)
    pt.add_argument("--tool-share", type=float, default=0.0,
                    help="share of the sql_qa documents written as tool episodes (zoo.tool_docs; default 0)")
    pt.add_argument("--exclude-pairs", default="auto",
                    help="pair file whose prompts and answers are left out (default: pairs/eval.jsonl beside --db; "
                         "'none' keeps everything)")
    args = p.parse_args(argv)

    from zoo.build import SHAPES, build_model, count_parameters, ensure_model

    if args.cmd == "pretrain":
        from zoo.pretrain import pretrain

        exclude = None if args.exclude_pairs == "none" else args.exclude_pairs
        pretrain(args.model, args.out, db_path=args.db, steps=args.steps, batch=args.batch, block=args.block,
                 lr=args.lr, seed=args.seed, exclude_pairs=exclude, tool_share=args.tool_share)
        return 0
    if args.cmd == "count":
        for shape in SHAPES:
            print(f"{shape:>6}  {count_parameters(shape):>15,}")
        return 0
    if args.shape not in SHAPES:
        print(f"unknown shape {args.shape!r}; known: {', '.join(SHAPES)}", file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    fn = build_model if args.force else ensure_model
    out = fn(args.out, shape=args.shape, seed=args.seed, db_path=args.db)
    print(f"{args.shape} model at {out} ({time.perf_counter() - t0:.1f}s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
