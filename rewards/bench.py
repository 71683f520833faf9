"""``python -m rewards.bench [--json FILE] [--repeats N] [--db DB --pairs PAIRS]``: reward scoring cost.

One GRPO step scores 32 completions (2 prompts x 16 generations). For each task this times the
combined reward on 32 completions of up to 512 tokens (~2,500 characters) -- reference answers,
PT-BR-decimal and prose-wrapped variants, long padded ones and over-length pushes -- on one core,
and prints ms per 32 completions (p50 and p90 over the repeats). sql_qa runs every statement in the
sandbox (the candidate cache is cleared before each repeat, reference results stay cached as in
training); its cost is bounded by the deadline per statement. Without ``--db`` a 3,000-order
database and its pairs are built in a temporary directory first.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

from .core import make_reward

COLUMNS = ("task", "reference", "reference_sql", "facts", "context")
FILLER = (" Observação: a análise considera apenas o texto da avaliação, o contexto do pedido e o histórico "
          "recente da loja, sem dados pessoais do cliente.")


def _variants(task: str, answer: str, rng: random.Random) -> list[str]:
    if task == "extraction":
        pt = answer.replace(".0,", ",0,").replace(".5,", ",5,")
        long = "Claro! Segue a extração solicitada." + FILLER * 8 + "\n" + pt + "\n" + FILLER * 6
        return [answer, pt, "Aqui está:\n" + pt + "\nEspero ter ajudado!", long[:2500]]
    if task == "insights":
        extra = "\n".join(f"- Monitorar o indicador {i} semanalmente e revisar as metas com a equipe de operações."
                          for i in range(12))
        return [answer, answer + "\n" + extra[:1500], "Insights:\n" + answer, (answer + "\n" + extra)[:2500]]
    if task == "push":
        return [answer, answer.upper(), answer + " " + answer, (answer + " ") * 20]
    wrong = answer.replace("COUNT(*)", "COUNT(DISTINCT customer_state)").replace("AVG(", "MAX(")
    return [answer, wrong, answer.replace("```sql", "```SQL") + FILLER * 5, "SELECT 1;\n" + FILLER]


def make_batches(pairs: list[dict], seed: int = 0) -> dict[str, tuple[list[str], dict[str, list]]]:
    """Per task: 32 completions and their aligned columns."""
    rng = random.Random(seed)
    out = {}
    for task in ("extraction", "sql_qa", "insights", "push"):
        rows = [r for r in pairs if r["task"] == task]
        if not rows:
            continue
        comps, cols = [], {k: [] for k in COLUMNS}
        while len(comps) < 32:
            r = rng.choice(rows)
            for v in _variants(task, r["answer"], rng):
                if len(comps) < 32:
                    comps.append(v)
                    for k in COLUMNS:
                        cols[k].append(r.get(k))
        out[task] = (comps, cols)
    return out


def run(db: Path, pairs: list[dict], repeats: int = 20) -> dict:
    fn = make_reward(db)
    result = {}
    for task, (comps, cols) in make_batches(pairs).items():
        fn(comps, **cols)  # warm-up: reference results cached, as after the first steps of a run
        times = []
        for _ in range(repeats):
            fn.sql.clear_candidate_cache()
            t0 = time.perf_counter()
            fn(comps, **cols)
            times.append((time.perf_counter() - t0) * 1000)
        times.sort()
        result[task] = {"ms_per_32_p50": round(statistics.median(times), 3),
                        "ms_per_32_p90": round(times[int(0.9 * (len(times) - 1))], 3),
                        "mean_chars": round(sum(len(c) for c in comps) / len(comps)),
                        "max_chars": max(len(c) for c in comps), "repeats": repeats}
    fn.close()
    return result


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m rewards.bench", description=__doc__.split("\n\n")[0])
    ap.add_argument("--json", type=Path, default=None, help="write the figures as JSON")
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--db", type=Path, default=None, help="commerce.db (default: build a small one)")
    ap.add_argument("--pairs", type=Path, default=None, help="pairs jsonl to draw completions from")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        db, pairs_path = args.db, args.pairs
        if db is None or pairs_path is None:
            from commerce import build

            summary = build(tmp, seed=0, orders=3000)
            db = db or Path(summary["db"])
            pairs_path = pairs_path or Path(summary["train"])
        pairs = [json.loads(line) for line in pairs_path.read_text(encoding="utf-8").splitlines() if line.strip()]
        result = run(db, pairs, args.repeats)
    print(f"{'task':12s} {'ms/32 p50':>10s} {'ms/32 p90':>10s} {'mean chars':>11s} {'max chars':>10s}")
    for task, r in result.items():
        print(f"{task:12s} {r['ms_per_32_p50']:10.2f} {r['ms_per_32_p90']:10.2f} {r['mean_chars']:11d} "
              f"{r['max_chars']:10d}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
