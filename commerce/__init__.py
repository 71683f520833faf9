"""Synthetic Olist-like commerce data: ``commerce.db`` and the prompt pairs of the four tasks.

Stdlib only (``import commerce`` pulls no third-party package). Public API:

- :func:`build` (``python -m commerce build``): write ``DIR/commerce.db`` and ``DIR/pairs/{train,eval}.jsonl``;
- :func:`check_db`, :func:`check_pairs`: schema checks of a user's own files, raising
  :class:`SchemaMismatch` (a ``ValueError``) with a one-line message; ``python -m commerce check``
  (:mod:`commerce.check`) reports on a user's pairs and db before a run;
- :mod:`commerce.rows`: the pair reader the learner and the check share (our format and TRL's);
  :mod:`commerce.classify` (``classify_task``) and :mod:`commerce.sandbox` (``Sandbox``), re-exported
  by ``rewards``;
- :func:`corpus_texts`: PT-BR texts (reviews, prompts, answers, SQL, JSON records) to train a tokenizer;
- :func:`extraction_record`, :data:`EXTRACTION_FIELDS`, :data:`TASKS`, :data:`DEFAULT_COUNTS`.
"""

from __future__ import annotations

import json
import random
import sqlite3
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from .db import memory_db, write_db
from .pairs import (DEFAULT_COUNTS, EVAL_MIN, EXTRACTION_FIELDS, SYSTEM, dumps_rows, extraction_record, make_items,
                    split, top_up_eval)
from .rows import check_pairs
from .schema import ENRICHED_DOC, TASKS, SchemaMismatch, check_db

__all__ = ["build", "check_db", "check_pairs", "corpus_texts", "SchemaMismatch", "extraction_record",
           "EXTRACTION_FIELDS", "TASKS", "DEFAULT_COUNTS", "DEFAULT_ORDERS"]

DEFAULT_ORDERS = 20000


def counts_for(insights: int | None = None) -> dict[str, int]:
    """Items per task (train + eval) for a build; ``insights`` is the total insights pairs."""
    counts = dict(DEFAULT_COUNTS)
    if insights is not None:
        if insights < 1:
            raise ValueError(f"--insights must be at least 1 (got {insights})")
        counts["insights"] = insights
    return counts


def build(out: str | Path = "data", seed: int = 42, orders: int = DEFAULT_ORDERS, insights: int | None = None,
          progress: bool | None = None) -> dict:
    """Write ``out/commerce.db`` and ``out/pairs/{train,eval}.jsonl``; return a summary dict.

    Each task keeps 15% of its pairs for eval, and at least ``commerce.pairs.EVAL_MIN`` (more drawn on top, so
    the train pairs keep their count). Same ``seed`` (and sizes) => byte-identical pair files and the same
    database content.
    """
    t0 = time.perf_counter()
    out = Path(out)
    db_path = write_db(out / "commerce.db", seed=seed, n_orders=orders, progress=progress)
    con = sqlite3.connect(f"{db_path.resolve().as_uri()}?mode=ro", uri=True)
    try:
        counts = counts_for(insights)
        items = make_items(con, seed, counts)
        train, evals = split(items, seed)
        evals += top_up_eval(con, seed, counts, train + evals)
    finally:
        con.close()
    for task, want in counts.items():
        if len(items[task]) < want:
            print(f"commerce: only {len(items[task])} {task} pairs available (asked {want}); "
                  "build with more --orders for more", file=sys.stderr)
        held = sum(r["task"] == task for r in evals)
        if want and held < EVAL_MIN:
            print(f"commerce: only {held} {task} eval prompts (EVAL_MIN {EVAL_MIN}): its eval noise grows; "
                  "build with more --orders for more", file=sys.stderr)
    random.Random(f"{seed}-mix-eval").shuffle(evals)
    pairs = out / "pairs"
    pairs.mkdir(parents=True, exist_ok=True)
    (pairs / "train.jsonl").write_text(dumps_rows(train), encoding="utf-8")
    (pairs / "eval.jsonl").write_text(dumps_rows(evals), encoding="utf-8")
    per = lambda rows: {t: sum(r["task"] == t for r in rows) for t in TASKS}  # noqa: E731
    return {"db": str(db_path), "train": str(pairs / "train.jsonl"), "eval": str(pairs / "eval.jsonl"),
            "orders": orders, "seed": seed, "train_counts": per(train), "eval_counts": per(evals),
            "seconds": round(time.perf_counter() - t0, 2)}


def corpus_texts(db_path: str | Path | None = None, seed: int = 42, orders: int = 5000) -> Iterator[str]:
    """PT-BR texts for training the tiny model's tokenizer.

    With ``db_path`` None an in-memory database of ``orders`` orders is generated from ``seed`` (no
    file is written); otherwise the given database (checked with :func:`check_db`) is read. Yields
    the system prompts, the sql_qa schema text, every review title and message, then for every
    generated pair of every task its user prompt and reference answer (JSON records, SQL, bullets,
    push texts).
    """
    if db_path is None:
        con = memory_db(seed=seed, n_orders=orders)
    else:
        check_db(db_path)
        con = sqlite3.connect(f"{Path(db_path).resolve().as_uri()}?mode=ro", uri=True)
    try:
        yield from SYSTEM.values()
        yield ENRICHED_DOC
        for title, msg in con.execute("SELECT review_comment_title, review_comment_message FROM order_reviews "
                                      "WHERE review_comment_message IS NOT NULL ORDER BY review_id"):
            yield f"{title}\n{msg}" if title else msg
        items = make_items(con, seed, DEFAULT_COUNTS)
        for task in TASKS:
            for it in items[task]:
                yield it["prompt"][-1]["content"]
                yield it["answer"]
                if task == "extraction":
                    yield json.dumps(it["reference"], ensure_ascii=False)
    finally:
        con.close()
