"""``python -m launch.report RUN_DIR``: plots (PNG) and ``report.md`` from a run's ``metrics.jsonl``.

Writes ``eval_rewards.png`` (eval reward per task over steps), ``train_curves.png`` (train reward,
completion length, grad norm) and ``report.md`` (eval reward per task before and after, the reward component
that moved most in each task, and the run's headline numbers). Evals that carry ``eval_se/*`` (their standard
error over the eval prompts) get a band on the plot and a noise column in the table. Tasks are the four and any
of the run's own (``rewards.custom``) found in the metrics.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from learner.metrics import read_metrics

TASKS = ("extraction", "sql_qa", "insights", "push")
_NOT_TASKS = {"mean_reward", "best_mean_reward", "best_step"}


def tasks_in(rows: list[dict]) -> list[str]:
    """The tasks with an ``eval/<task>`` metric: the four in their order, then the run's own, sorted.

    >>> tasks_in([{"eval/push": 0.5, "eval/push/tone": 1.0, "eval/mean_reward": 0.5, "eval/faq": 0.2}])
    ['push', 'faq']
    """
    found = {k.split("/")[1] for r in rows for k in r if k.startswith("eval/") and k.count("/") == 1}
    found -= _NOT_TASKS
    return [t for t in TASKS if t in found] + sorted(found - set(TASKS))


def moved_most(first: dict, last: dict, task: str) -> tuple[str, float] | None:
    """The component of ``task`` whose eval mean changed most between two evals, with its change.

    >>> moved_most({"eval/push/tone": 0.5, "eval/push/length": 0.9}, {"eval/push/tone": 0.7, "eval/push/length": 0.6},
    ...            "push")
    ('length', -0.3)
    """
    pre = f"eval/{task}/"
    deltas = {k[len(pre):]: last[k] - first[k] for k in first
              if k.startswith(pre) and isinstance(last.get(k), (int, float)) and isinstance(first[k], (int, float))}
    if not deltas:
        return None
    name = max(deltas, key=lambda c: (abs(deltas[c]), c))
    return name, round(deltas[name], 6)


def series(rows: list[dict], key: str) -> tuple[list[int], list[float]]:
    pts = [(r["step"], r[key]) for r in rows if isinstance(r.get(key), (int, float)) and "step" in r]
    return [p[0] for p in pts], [p[1] for p in pts]


def plot(rows: list[dict], run_dir: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out, banded = [], False
    fig, ax = plt.subplots(figsize=(7, 4))
    for key, style in [("eval/mean_reward", "k-")] + [(f"eval/{t}", "--") for t in tasks_in(rows)]:
        x, y = series(rows, key)
        if x:
            line = ax.plot(x, y, style, marker="o", markersize=3, label=key.split("/")[1])[0]
            se = [r.get(key.replace("eval/", "eval_se/")) for r in rows
                  if isinstance(r.get(key), (int, float)) and "step" in r]
            if all(isinstance(v, (int, float)) for v in se):  # the noise band: +-1 standard error over prompts
                banded = True
                lo = [a - b for a, b in zip(y, se, strict=True)]
                hi = [a + b for a, b in zip(y, se, strict=True)]
                ax.fill_between(x, lo, hi, color=line.get_color(), alpha=0.12, linewidth=0)
    title = "Eval reward per task" + (" (bands: +-1 s.e. over the eval prompts)" if banded else "")
    ax.set(xlabel="step", ylabel="eval reward", title=title, ylim=(0, 1))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    out.append(run_dir / "eval_rewards.png")
    fig.savefig(out[-1], dpi=110)
    plt.close(fig)

    fig, axes = plt.subplots(1, 3, figsize=(12, 3.5))
    for ax, (key, label) in zip(axes, [("train/reward", "train reward"),
                                       ("train/completion_length", "completion length (tokens)"),
                                       ("train/grad_norm", "grad norm")], strict=True):
        x, y = series(rows, key)
        ax.plot(x, y, "-", linewidth=0.8, alpha=0.4, label="per step")
        if len(y) >= 10:
            w = max(5, len(y) // 10)
            ax.plot(x[w - 1:], [sum(y[i - w + 1:i + 1]) / w for i in range(w - 1, len(y))], "-", linewidth=2,
                    label=f"mean of {w}")
            ax.legend(fontsize=7)
        ax.set(xlabel="step", title=label)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    out.append(run_dir / "train_curves.png")
    fig.savefig(out[-1], dpi=110)
    plt.close(fig)
    return out


def report(rows: list[dict], run_dir: Path, title: str = "Run report") -> str:
    evals = [r for r in rows if "eval/mean_reward" in r]
    lines = [f"# {title}", "", f"Run directory: `{run_dir}`", ""]
    if len(evals) >= 1:
        first, last = evals[0], evals[-1]
        se = "eval_se/mean_reward" in first and "eval_se/mean_reward" in last
        comp = any(k.count("/") == 2 for k in last if k.startswith("eval/"))
        lines += [f"## Eval reward per task: before (step {first['step']}) and after (step {last['step']})", "",
                  "| task | before | after | change |" + (" noise (2 s.e.) |" if se else "")
                  + (" component that moved most |" if comp else ""),
                  "| --- | ---: | ---: | ---: |" + (" ---: |" if se else "") + (" --- |" if comp else "")]
        for key in [f"eval/{t}" for t in tasks_in(rows)] + ["eval/mean_reward"]:
            if key in first and key in last:
                name = key.split("/")[1]
                row = f"| {name} | {first[key]:.3f} | {last[key]:.3f} | {last[key] - first[key]:+.3f} |"
                k = key.replace("eval/", "eval_se/")
                if se:  # two standard errors of the difference of two means
                    row += f" {2 * (first[k] ** 2 + last[k] ** 2) ** 0.5:.3f} |" if k in first and k in last else " |"
                if comp:
                    mm = moved_most(first, last, name)
                    row += f" {mm[0]} {mm[1]:+.3f} |" if mm else " |"
                lines.append(row)
        if se:
            lines += ["", "Noise: twice the standard error of the change, from each eval's standard error over its "
                      "prompts (a prompt's score is the mean of its eval.samples completions). A change larger "
                      "than that is not sampling luck."]
        best = max(evals, key=lambda r: r["eval/mean_reward"])
        lines += ["", f"Best eval/mean_reward: {best['eval/mean_reward']:.3f} at step {best['step']}."]
    train = [r for r in rows if "train/reward" in r]
    if train:
        steps = [r.get("perf/step_s") for r in train if isinstance(r.get("perf/step_s"), (int, float))]
        lines += ["", "## Training", "",
                  f"- optimizer steps: {train[-1]['step']}",
                  f"- train/reward first -> last: {train[0]['train/reward']:.3f} -> {train[-1]['train/reward']:.3f}"]
        if steps:
            lines.append(f"- mean step time: {sum(steps) / len(steps):.2f} s")
            both = [(r["perf/learner_wait_s"], r["perf/step_s"]) for r in train
                    if isinstance(r.get("perf/learner_wait_s"), (int, float)) and r.get("perf/step_s")]
            if both:
                wait, total = sum(w for w, _ in both), sum(t for _, t in both)
                lines.append(f"- the learner waited (rollouts, publishing, acknowledgements, probes) "
                             f"{wait / len(both):.2f} s a step: {wait / total:.0%} of the step time")
        for key, what in (("train/completion_length", "tokens"), ("train/clipped_ratio", "of completions cut at "
                                                                  "max_completion_length")):
            vals = [r[key] for r in train if isinstance(r.get(key), (int, float))]
            if vals:
                k = max(1, len(vals) // 10)
                lines.append(f"- {key}, mean of the first and the last {k} steps: {sum(vals[:k]) / k:.2f} -> "
                             f"{sum(vals[-k:]) / k:.2f} {what}")
    lines += ["", "![eval rewards](eval_rewards.png)", "", "![train curves](train_curves.png)", ""]
    text = "\n".join(lines)
    (run_dir / "report.md").write_text(text)
    return text


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m launch.report", description=__doc__.split("\n")[0])
    p.add_argument("run_dir", type=Path)
    p.add_argument("--title", default="Run report")
    args = p.parse_args(argv)
    if not (args.run_dir / "metrics.jsonl").exists():
        print(f"report: no metrics.jsonl in {args.run_dir}", file=sys.stderr)
        return 2
    rows = read_metrics(args.run_dir)
    plot(rows, args.run_dir)
    report(rows, args.run_dir, args.title)
    print(f"report: wrote {args.run_dir / 'report.md'}, eval_rewards.png, train_curves.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
