"""``python -m rewards.redteam [--task T ...] [--config C] [--budget N]``: the cheapest way to score here.

Searches, per task, for the highest-scoring *prompt-agnostic* completion: one template for every prompt, its slots
filled from each prompt's own values (product, city, category, state, the figures of the facts, the question's
literals), its parts drawn from fixed phrases, the cue words the reward's own components look for and the
reference answers of *other* prompts (:mod:`rewards.attack`). The fitness is the mean reward over a sample of
the task's eval prompts; the search mutates and recombines templates (a seeded genetic algorithm) for ``--budget``
templates. It prints the best template per task, its mean score, the references' mean on the same prompts and
the components that paid for it, and writes them as JSON (``--json``).

The reward is the run's: ``--config`` reads ``rewards.*`` (every weight and knob, ``rewards.custom`` included) and
``data.*`` from a run config through ``python -m configs rewards`` (a subprocess: this package imports only the
stdlib and ``commerce``), so a custom reward can be asked, before any GPU hour: what does a template earn here?
Without ``--config`` the built-in rewards with their defaults score ``data/`` (``make data``), or a fresh
synthetic build when ``data/`` is absent. Donor answers come from the train pairs (``--donors``) and the eval
prompts outside the sample.

What it does not model: a template is one text for every prompt, so a policy that reads the prompt (the order's
situation, the review, which figure means what) is answering, not gaming; the search finds templates, not the
best answers. Where every prompt lists its facts in the same order, "the fifth figure" is a fact's name, and a
template that cites it by place is an answer: ``--figures any`` fills each prompt's figure slots in a shuffled
order, so a template cannot know which figure is which (how CI checks insights, whose synthetic facts have one
layout in 76-88% of the eval prompts). ``--fail-above X`` exits 1 when a task's best template scores above X (a CI gate,
like ours at 0.5).
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from commerce.classify import user_text
from commerce.rows import PairsError, read_pairs

from .attack import Found, make_pools, prompt_values, render, search, varying_lines
from .classify import TASKS
from .core import make_reward


class RedTeamError(Exception):
    """Bad input: one line, exit 2."""


def config_rewards(path: str, overrides: list[str]) -> dict:
    """``python -m configs rewards FILE`` as a dict (reward_kwargs, db_path, eval_pairs, train_pairs, tasks)."""
    cmd = [sys.executable, "-m", "configs", "rewards", path] + [a for o in overrides for a in ("--set", o)]
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=Path.cwd())
    if out.returncode != 0:
        lines = (out.stderr or out.stdout).strip().splitlines()
        raise RedTeamError(lines[-1] if lines else f"--config {path}: python -m configs failed")
    return json.loads(out.stdout)


def _rows(path: Path, custom: tuple[str, ...]) -> list:
    try:
        return read_pairs(path, custom).rows
    except PairsError as e:
        raise RedTeamError(str(e)) from None


def red_team(fn, task: str, rows: list, donor_rows: list, budget: int, sample: int, seed: int,
             progress=None, population: int = 40, figures: str = "ordered") -> tuple[Found, dict]:
    """Search ``task``'s best template on ``sample`` of ``rows`` (eval prompts); ``donor_rows`` lend answers.
    ``figures="any"``: each prompt's figures fill the ``fig`` slots in a shuffled order (the template cannot know
    which figure is which, even where every prompt lists its facts in the same order)."""
    rng = random.Random(f"{seed}-{task}")
    rows = [r for r in rows if r.task == task]
    picked = rng.sample(rows, min(sample, len(rows)))
    taken = {user_text(r.messages) for r in picked}
    donors = [r for r in donor_rows + [r for r in rows if r not in picked]
              if r.task == task and r.answer and user_text(r.messages) not in taken]
    donors = rng.sample(donors, min(60, len(donors)))
    texts = [user_text(r.messages) for r in picked + donors]
    own = varying_lines(texts)
    values = [prompt_values(t, o) for t, o in zip(texts, own, strict=True)]
    pools = make_pools(task, texts[:len(picked)], values[:len(picked)],
                       [(r.answer, v) for r, v in zip(donors, values[len(picked):], strict=True)], rng)
    if figures == "any":
        for i, v in enumerate(values[:len(picked)]):
            names = [k for k in v if k.startswith("fig")]
            shuffled = [v[k] for k in names]
            random.Random(f"{seed}-{task}-{i}").shuffle(shuffled)
            v.update(zip(names, shuffled, strict=True))
    keys = sorted({k for r in picked for k in r.columns})
    cols = {k: [r.columns.get(k) for r in picked] for k in keys}
    prompts = [r.messages for r in picked]

    def scorer(completions: list[str]):
        items = fn.score(completions, prompts=prompts, **cols)
        return [s.reward for s in items], [s.components for s in items]

    refs = [r.answer for r in picked]
    ref_mean = (sum(scorer(refs)[0]) / len(refs)) if all(isinstance(a, str) for a in refs) else None
    t0 = time.perf_counter()
    found = search(scorer, values[:len(picked)], pools, budget, rng, population, progress)
    info = {"references": None if ref_mean is None else round(ref_mean, 4), "prompts": len(picked),
            "donors": len(donors), "seconds": round(time.perf_counter() - t0, 2),
            "example": render(found.template, values[0]), "template_text": render(found.template, {}, keep=True)}
    return found, info


class Bar:
    """A one-line progress bar on stderr (redrawn at most 5 times a second; a line per 10% off a terminal)."""

    def __init__(self, label: str, total: int, quiet: bool = False):
        self.label, self.total, self.quiet = label, total, quiet
        self.tty = sys.stderr.isatty()
        self.last, self.step = 0.0, -1

    def __call__(self, n: int, best: float) -> None:
        if self.quiet:
            return
        now = time.monotonic()
        step = 10 * n // max(1, self.total)
        if (self.tty and now - self.last < 0.2 and n < self.total) or (not self.tty and step == self.step):
            return
        self.last, self.step = now, step
        fill = 24 * min(n, self.total) // max(1, self.total)
        line = f"{self.label:12s} [{'#' * fill}{'.' * (24 - fill)}] {n}/{self.total} best {best:.3f}"
        sys.stderr.write(("\r" + line) if self.tty else line + "\n")
        if self.tty and n >= self.total:
            sys.stderr.write("\n")
        sys.stderr.flush()


def table(results: dict) -> str:
    """The results as a table, then each task's best template (slots as ``⟦name⟧``).

    >>> print(table({"push": {"score": 0.469, "references": 0.982, "evaluations": 600,
    ...                       "components": {"situation": 0.41}, "template_text": "Oi! Seu ⟦product⟧ foi cancelado"}}))
    task           best   refs  evals  components of the best (mean over the prompts)
    push          0.469  0.982    600  situation 0.41
    <BLANKLINE>
    push: "Oi! Seu ⟦product⟧ foi cancelado"
    """
    lines = [f"{'task':12s} {'best':>6s} {'refs':>6s} {'evals':>6s}  components of the best (mean over the prompts)"]
    for task, r in results.items():
        refs = "-" if r["references"] is None else f"{r['references']:.3f}"
        comps = " ".join(f"{k} {v:.2f}" for k, v in r["components"].items()) or "(a custom reward: none)"
        lines.append(f"{task:12s} {r['score']:6.3f} {refs:>6s} {r['evaluations']:6d}  {comps}")
    lines.append("")
    for task, r in results.items():
        lines.append(f"{task}: {json.dumps(r['template_text'], ensure_ascii=False)}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m rewards.redteam", description=__doc__.split("\n\n")[0])
    ap.add_argument("--task", action="append", default=[], help="a task to attack (repeatable; default: every "
                    "task of the eval pairs that the reward scores)")
    ap.add_argument("--config", default=None, help="run config YAML: its rewards.* and data.* (rewards.custom too)")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="override a config field (with --config); repeatable")
    ap.add_argument("--budget", type=int, default=1000, help="templates scored per task (default 1000)")
    ap.add_argument("--sample", type=int, default=100, help="eval prompts each template is scored on (default 100)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--figures", choices=("ordered", "any"), default="ordered", help="ordered (default): fig1 is "
                    "each prompt's first figure; any: the figures fill the slots in a shuffled order")
    ap.add_argument("--db", type=Path, default=None, help="commerce.db (default: the config's data.db_path)")
    ap.add_argument("--pairs", type=Path, default=None, help="eval pairs (default: the config's data.eval_pairs)")
    ap.add_argument("--donors", type=Path, default=None, help="pairs whose answers lend parts (default: the "
                    "config's data.train_pairs, when it exists)")
    ap.add_argument("--json", type=Path, default=None, help="write the results as JSON")
    ap.add_argument("--fail-above", type=float, default=None, help="exit 1 when a task's best template scores "
                    "above this")
    ap.add_argument("--quiet", action="store_true", help="no progress bar")
    args = ap.parse_args(argv)
    try:
        for name in ("budget", "sample"):
            if getattr(args, name) < 1:
                raise RedTeamError(f"--{name} must be at least 1, got {getattr(args, name)}")
        return _run(args)
    except RedTeamError as e:
        print(f"rewards.redteam: {e}", file=sys.stderr)
        return 2


def _run(args) -> int:
    cfg = config_rewards(args.config, args.overrides) if args.config else {
        "reward_kwargs": {}, "db_path": "data/commerce.db", "eval_pairs": "data/pairs/eval.jsonl",
        "train_pairs": "data/pairs/train.jsonl", "tasks": list(TASKS)}
    custom = tuple(cfg["reward_kwargs"].get("custom") or {})
    known = list(dict.fromkeys([*TASKS, *custom]))
    bad = [t for t in args.task if t not in known]
    if bad:
        raise RedTeamError(f"unknown task {bad[0]!r}; known: {', '.join(known)}")
    with tempfile.TemporaryDirectory() as tmp:
        db, pairs = args.db or Path(cfg["db_path"]), args.pairs or Path(cfg["eval_pairs"])
        donors_path = args.donors or Path(cfg["train_pairs"])
        if args.pairs is None and not pairs.is_file() and args.config is None:
            from commerce import build

            print(f"rewards.redteam: no {pairs}: building the synthetic data in a temporary directory",
                  file=sys.stderr)
            summary = build(tmp)
            db, pairs, donors_path = Path(summary["db"]), Path(summary["eval"]), Path(summary["train"])
        rows = _rows(pairs, custom)
        donor_rows = _rows(donors_path, custom) if donors_path.is_file() else []
        tasks = list(dict.fromkeys(args.task)) or [t for t in known if any(r.task == t for r in rows)]
        missing = [t for t in tasks if not any(r.task == t for r in rows)]
        if missing:
            raise RedTeamError(f"no eval prompt of task {missing[0]!r} in {pairs}")
        if "sql_qa" in tasks and not db.is_file():
            raise RedTeamError(f"no database at {db} (sql_qa runs the queries on it): --db or data.db_path")
        try:
            fn = make_reward(db if db.is_file() else None, **cfg["reward_kwargs"])
        except ValueError as e:
            raise RedTeamError(str(e)) from None
        results = {}
        try:
            for task in tasks:
                found, info = red_team(fn, task, rows, donor_rows, args.budget, args.sample, args.seed,
                                       Bar(task, args.budget, args.quiet), figures=args.figures)
                results[task] = {"score": found.score, "references": info["references"],
                                 "components": found.components, "template": list(found.template),
                                 "template_text": info["template_text"], "example": info["example"],
                                 "evaluations": found.evaluations, "prompts": info["prompts"],
                                 "donors": info["donors"], "seconds": info["seconds"], "history": found.history}
        finally:
            fn.close()
    print(table(results))
    if args.json:
        args.json.write_text(json.dumps({"seed": args.seed, "budget": args.budget, "sample": args.sample,
                                         "figures": args.figures,
                                         "db": str(db), "pairs": str(pairs), "tasks": results},
                                        ensure_ascii=False, indent=2), encoding="utf-8")
    over = [t for t, r in results.items() if args.fail_above is not None and r["score"] > args.fail_above]
    if over:
        print(f"rewards.redteam: over {args.fail_above}: {', '.join(over)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
