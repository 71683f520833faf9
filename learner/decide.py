"""``python -m learner.decide RUN_DIR``: the handoff's V4.2 decision tree applied to a finished V4.1 run.

Reads ``RUN_DIR/metrics.jsonl`` (one JSON object per line with ``step`` and metric keys; eval lines carry
``eval/mean_reward`` and the per-task ``eval/<task>``) and prints ``Scenario A``, ``Scenario B``,
``Scenario C (<task> lags)`` or ``No branch of the handoff's tree fits`` on the first line, then the
numbers that decided it, the prescribed next step, the config to run next and the answers to the
handoff's four questions. Exit 0; a run too short or lacking the metrics gives one line and exit 2.

Where the handoff is qualitative we fix numbers, stated here so they can be argued with:
- "reaches >= 0.55": the last eval's ``eval/mean_reward`` >= 0.55 (``TARGET``).
- "plateaus": the run's best eval was first reached (within ``PLATEAU_EPS``) before the last quarter of
  the run, i.e. the final 25% of steps brought no gain.
- "extraction still ~0.17": the last ``eval/extraction`` < 0.20 (the handoff's own "Stop if" line).
- "one task lags": extraction < 0.25, sql_qa < 0.20, insights < 0.20 at the end (the handoff's Scenario C
  thresholds). When several lag, the one furthest under its threshold is named.
- When the target is missed, B does not hold and no task with a prescribed fix lags (for example push is
  the weakest task: the handoff prescribes nothing for it), no branch fits, and the output says so
  instead of naming a task that is not lagging. There is then no config to run next.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path

TARGET = 0.55
PLATEAU_EPS = 0.01
MIN_EVALS = 3
"""Eval points a run needs before the tree judges it (a plateau needs two changes)."""
V4_EXTRACTION_BASELINE = 0.17
V4_BEST_STEP = 130
TASKS = ("extraction", "sql_qa", "insights", "push")
LAG_THRESHOLDS = {"extraction": 0.25, "sql_qa": 0.20, "insights": 0.20}
NEXT_STEP = {
    "A": ("0.5B-Instruct is maximized: scale to Tucano2-qwen-3.7B-Instruct with the V4.1 recipe "
          "(G=8, max_completion_length=1024, lr 2e-6, 400 steps).", "configs/v4_2_a_3b.yaml"),
    "B": ("The parser fix did not help: switch to Tucano2-qwen-0.5B-Base with a 1-epoch SFT warm-up on the "
          "extraction pairs, then the same V4.1 GRPO config. If extraction still fails, go to 3.7B-Instruct.",
          "configs/v4_2_b_base_sft.yaml"),
    "extraction": ("Extraction lags: reward ceiling. Weight correct field values (exact match, partial credit "
                   "for complaint_category) over field presence.", "configs/v4_2_c_extraction.yaml"),
    "sql_qa": ("sql_qa lags: accept the 0.5B capacity limit. Keep 0.5B for extraction + push; route sql_qa + "
               "insights to 3.7B (configs/v4_2_a_3b.yaml).", "configs/v4_2_c_sql_qa.yaml"),
    "insights": ("insights lags: data starvation. Grow insights to 350 pairs from negative-sentiment orders "
                 "(`python -m commerce build --insights 350 --out data/insights350`).",
                 "configs/v4_2_c_insights.yaml"),
}


class DecideError(ValueError):
    """The run cannot be judged (missing file, too short, metrics absent): one line."""


@dataclass
class EvalPoint:
    step: int
    mean: float
    tasks: dict[str, float]


def read_evals(run_dir: Path) -> list[EvalPoint]:
    path = run_dir / "metrics.jsonl" if run_dir.is_dir() else run_dir
    if not path.exists():
        raise DecideError(f"no metrics.jsonl in {run_dir}")
    points: dict[int, EvalPoint] = {}
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            raise DecideError(f"{path}:{n} is not JSON") from None
        if not isinstance(row, dict) or "eval/mean_reward" not in row or "step" not in row:
            continue
        step = int(row["step"])
        tasks = {t: float(row[f"eval/{t}"]) for t in TASKS if isinstance(row.get(f"eval/{t}"), (int, float))}
        points[step] = EvalPoint(step, float(row["eval/mean_reward"]), tasks)
    evals = [points[s] for s in sorted(points)]
    if len(evals) < MIN_EVALS:
        raise DecideError(f"{path}: {len(evals)} eval points with eval/mean_reward; need at least {MIN_EVALS} to "
                          "judge a run")
    if not evals[-1].tasks:
        raise DecideError(f"{path}: the last eval has no per-task eval/<task> metrics")
    return evals


NO_BRANCH = "none"


@dataclass
class Decision:
    scenario: str            # "A", "B", "C" or NO_BRANCH
    weak_task: str | None    # the lagging task of Scenario C
    final: EvalPoint
    best: EvalPoint
    plateau_step: int
    plateaued: bool
    lines: list[str]

    @property
    def title(self) -> str:
        if self.scenario == NO_BRANCH:
            return "No branch of the handoff's tree fits"
        return f"Scenario {self.scenario}" + (f" ({self.weak_task} lags)" if self.scenario == "C" else "")

    @property
    def next_step(self) -> tuple[str, str | None]:
        """(what to do, config to run next or None)."""
        if self.scenario == NO_BRANCH:
            weakest = min(self.final.tasks, key=self.final.tasks.get)
            return (f"none prescribed by the handoff. The target is missed but no task with a prescribed fix "
                    f"lags; look at the weakest task's ({weakest}) completions and reward components "
                    f"(train/rewards/{weakest}/*) before choosing a change.", None)
        return NEXT_STEP[self.weak_task if self.scenario == "C" else self.scenario]

    @property
    def next_config(self) -> str | None:
        return self.next_step[1]


def decide(evals: list[EvalPoint]) -> Decision:
    final = evals[-1]
    best = max(evals, key=lambda p: p.mean)
    plateau_step = next(p.step for p in evals if p.mean >= best.mean - PLATEAU_EPS)
    first, last = evals[0].step, final.step
    plateaued = plateau_step < last - 0.25 * (last - first)
    extraction = final.tasks.get("extraction")
    weakest = min(final.tasks, key=final.tasks.get)

    if final.mean >= TARGET:
        scenario, weak = "A", None
    elif plateaued and extraction is not None and extraction < 0.20:
        scenario, weak = "B", None
    else:
        lagging = {t: final.tasks[t] - th for t, th in LAG_THRESHOLDS.items()
                   if t in final.tasks and final.tasks[t] < th}
        scenario, weak = ("C", min(lagging, key=lagging.get)) if lagging else (NO_BRANCH, None)

    lines = [
        f"eval/mean_reward at the end (step {final.step}): {final.mean:.3f} (target {TARGET})",
        f"best eval/mean_reward: {best.mean:.3f} at step {best.step}; "
        + (f"plateaued from step {plateau_step}" if plateaued else "still improving in the last quarter"),
        f"eval/extraction at the end: {extraction:.3f}" if extraction is not None else "eval/extraction: absent",
        f"weakest task: {weakest} ({final.tasks[weakest]:.3f})"
        + ("" if weakest in LAG_THRESHOLDS else " -- the handoff prescribes no fix for it"),
    ]
    if scenario == NO_BRANCH:
        shown = ", ".join(f"{t} {final.tasks[t]:.3f} (< {th})" for t, th in LAG_THRESHOLDS.items() if t in final.tasks)
        lines.append(f"why no branch: target missed; not B ({'plateaued' if plateaued else 'not plateaued'}, "
                     f"extraction {'absent' if extraction is None else f'{extraction:.3f}'} vs 0.20); "
                     f"no task lags under Scenario C's thresholds: {shown or 'no such task evaluated'}")
    return Decision(scenario, weak, final, best, plateau_step, plateaued, lines)


def answers(evals: list[EvalPoint], d: Decision) -> list[str]:
    early = next((p for p in evals if p.step >= 10 and "extraction" in p.tasks), None)
    if early is None:
        q1 = "1. Parser fix: no eval/extraction at or after step 10."
    else:
        e = early.tasks["extraction"]
        verdict = ("yes, the parser was the bottleneck" if e >= 0.35 else
                   "somewhat" if e > V4_EXTRACTION_BASELINE + 0.02 else "no, the model cannot produce valid JSON yet")
        q1 = (f"1. Parser fix lifted eval/extraction? step {early.step}: {e:.3f} vs V4 baseline "
              f"{V4_EXTRACTION_BASELINE} -> {verdict}")
    before = [p.mean for p in evals if p.step <= V4_BEST_STEP]
    after = [p.mean for p in evals if p.step > V4_BEST_STEP]
    if before and after:
        gain = max(after) - max(before)
        q2 = (f"2. Eval improved past step {V4_BEST_STEP}? {'yes' if gain > 0.005 else 'no'} "
              f"(best after {max(after):.3f} vs up to {V4_BEST_STEP} {max(before):.3f})")
    else:
        q2 = f"2. Eval improved past step {V4_BEST_STEP}? the run has no evals on both sides of step {V4_BEST_STEP}"
    low = min(d.final.tasks, key=d.final.tasks.get)
    q3 = f"3. Lowest task at the end: {low} ({d.final.tasks[low]:.3f})"
    q4 = f"4. eval/mean_reward at the end: {d.final.mean:.3f} ({'>=' if d.final.mean >= TARGET else '<'} {TARGET})"
    return [q1, q2, q3, q4]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m learner.decide", description=__doc__.split("\n")[0])
    p.add_argument("run_dir", type=Path, help="a finished run's directory (or its metrics.jsonl)")
    args = p.parse_args(argv)
    try:
        evals = read_evals(args.run_dir)
    except DecideError as e:
        print(f"decide: {e}", file=sys.stderr)
        return 2
    d = decide(evals)
    step, cfg = d.next_step
    print(d.title)
    for line in d.lines:
        print(f"  {line}")
    print(f"Next: {step}")
    print(f"Run next: {cfg or 'nothing prescribed'}")
    print("Questions from the handoff:")
    for line in answers(evals, d):
        print(f"  {line}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
