"""``python -m launch.objectives {spread,dynamic,overlong,mismatch}``: #34's objective options, measured.

Variants side by side on the demo's stand-in under several seeds, each run our whole system (``launch/cpu.sh``: a
vLLM actor process and a DeepSpeed learner process, pinned to separate cores).

- ``spread``: how many groups have no spread at the start, per task and tolerance (the share dynamic sampling would
  drop): G completions of ``--prompts`` prompts per task sampled by vLLM from the starting policy, scored by the
  learner's reward. Picks the work for ``dynamic``.
- ``dynamic``: ``dynamic_sampling.enabled`` off against on (``--tol``) on one task. Per run: the eval reward at the
  start and the end, the eval reward at the same budget of actor tokens and of wall-clock (the last eval within the
  smaller of the two variants' totals, per seed), the steps to the target (per seed the lower of the two final
  evals), ``train/grad_norm``'s spread over steps (standard deviation and min-max), ``train/frac_reward_zero_std``
  and the dynamic sampler's counts.
- ``overlong``: neither, DAPO's soft overlong punishment (``rewards.overlong_buffer``) and
  ``mask_truncated_completions``, at a ``--max-completion-length`` low enough that 10-30 % of completions are cut:
  per run the share cut (first and last 5 steps), the completion length, the task reward and the eval reward.
- ``mismatch``: the actor-vs-learner mismatch (``sampling/*``, :mod:`learner.mismatch`) with both sides in float32
  and both in bf16 (the actor in adapter mode, as a GPU run): fresh rows (the engines' own gap) apart from stale ones
  (gap plus one update's drift), per token and per sequence (the geometric-mean ratio GSPO clips). The floor the
  README quotes.

The work is the race's (:func:`launch.compare.race_sets`: the demo config, ``models/small-pt``, constant lr,
Dr. GRPO, staleness 1), from the demo's start (no SFT) unless ``--sft``, with the eval on (``--eval-every``,
``--eval-prompts`` prompts of the task x 2 samples at temperature 1, a fixed seed). Seeds run one after the other,
each seed's variants back to back, alternating their order. Prints a table and writes JSON (the command, every run's
per-step rows and summary).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

from launch.compare import BASE, DEMO_CONFIG, FIRST_SEED, OURS_SETS, REPO, _sets, provenance, race_sets
from learner.metrics import read_metrics


def spread(vals: list[float]) -> dict:
    """Standard deviation, min and max (``n``: how many).

    >>> spread([1.0, 3.0])
    {'sd': 1.4142135623730951, 'min': 1.0, 'max': 3.0, 'n': 2}
    """
    v = [x for x in vals if isinstance(x, (int, float)) and math.isfinite(x)]
    if not v:
        return {"sd": None, "min": None, "max": None, "n": 0}
    return {"sd": statistics.stdev(v) if len(v) > 1 else 0.0, "min": min(v), "max": max(v), "n": len(v)}


def run_summary(rows: list[dict]) -> dict:
    """One run's figures from its ``metrics.jsonl`` rows (train steps and evals)."""
    train = [r for r in rows if "train/reward" in r and "perf/step_s" in r]
    tokens, clock, curve = 0.0, 0.0, []
    evals = []
    for r in rows:
        if "perf/step_s" in r:
            tokens += r.get("perf/actor_tokens") or 0.0
            clock += r["perf/step_s"] - (r.get("perf/eval_s") or 0.0)  # training wall-clock: the eval apart
        if "eval/mean_reward" in r:
            evals.append({"step": r["step"], "reward": r["eval/mean_reward"], "actor_tokens": tokens, "clock_s": clock,
                          "se": r.get("eval_se/mean_reward")})
        curve.append((tokens, clock))

    def mean(key, part=None):
        v = [r[key] for r in (part if part is not None else train) if isinstance(r.get(key), (int, float))]
        return statistics.fmean(v) if v else None

    return {"steps": len(train), "actor_tokens": tokens, "clock_s": clock, "evals": evals,
            "eval_first": evals[0]["reward"] if evals else None, "eval_final": evals[-1]["reward"] if evals else None,
            "grad_norm": spread([r.get("train/grad_norm") for r in train]),
            "frac_reward_zero_std": mean("train/frac_reward_zero_std"),
            "reward": mean("train/reward"), "task_reward": mean("train/task_reward") or mean("train/reward"),
            "completion_length": mean("train/completion_length"),
            "clipped_ratio_first": mean("train/clipped_ratio", train[:5]),
            "clipped_ratio_last": mean("train/clipped_ratio", train[-5:]),
            "length_first": mean("train/completion_length", train[:5]),
            "length_last": mean("train/completion_length", train[-5:]),
            "task_reward_first": mean("train/task_reward", train[:5]) or mean("train/reward", train[:5]),
            "task_reward_last": mean("train/task_reward", train[-5:]) or mean("train/reward", train[-5:]),
            "skipped_steps": sum(1 for r in train if r.get("train/skipped_step")),
            "groups_requested": sum(r.get("dynamic/groups_requested") or 0 for r in train),
            "groups_dropped": sum(r.get("dynamic/groups_dropped") or 0 for r in train),
            "underfilled_steps": sum(1 for r in train if r.get("dynamic/underfilled")),
            "rounds": mean("dynamic/rounds"),
            "k3_fresh": mean("sampling/fresh/k3"), "k3_stale": mean("sampling/stale/k3")}


def at_budget(summary: dict, key: str, budget: float) -> float | None:
    """The eval reward of the last eval whose cumulative ``key`` (actor tokens or training clock) is within
    ``budget``.

    >>> at_budget({"evals": [{"reward": 0.1, "clock_s": 0.0}, {"reward": 0.3, "clock_s": 9.0}]}, "clock_s", 8.0)
    0.1
    """
    ok = [e["reward"] for e in summary["evals"] if e[key] <= budget + 1e-9]
    return ok[-1] if ok else None


def steps_to(summary: dict, target: float) -> int | None:
    """The first eval step at or above ``target``.

    >>> steps_to({"evals": [{"step": 0, "reward": 0.1}, {"step": 10, "reward": 0.3}]}, 0.25)
    10
    """
    return next((e["step"] for e in summary["evals"] if e["reward"] >= target - 1e-12), None)


def run_ours(run: Path, sets: list[str], log: Path) -> list[dict]:
    shutil.rmtree(run, ignore_errors=True)
    pin = ["--actor-cores", "0", "--learner-cores", "1"] if (os.cpu_count() or 1) >= 2 else []
    argv = ["bash", "launch/cpu.sh", DEMO_CONFIG, "--run-dir", str(run), *pin, *_sets(sets + OURS_SETS)]
    with open(log, "w") as f:
        r = subprocess.run(argv, cwd=REPO, stdout=f, stderr=subprocess.STDOUT, check=False)
    if r.returncode != 0:
        raise SystemExit(f"objectives: {run.name} failed ({r.returncode}); log {log}\n{log.read_text()[-2000:]}")
    return read_metrics(run)


def base_sets(args, seed: int, sft: Path | None) -> list[str]:
    sets = race_sets(sft=sft, steps=args.steps, seed=seed, tasks=[args.task], num_generations=args.num_generations,
                     prompts_per_step=args.prompts_per_step, max_completion_length=args.max_completion_length,
                     learning_rate=args.learning_rate, temperature=1.0)
    if not args.eval_every:
        return sets
    drop = ("eval.every=", "eval.at_start=")
    return [s for s in sets if not s.startswith(drop)] + [
        f"eval.every={args.eval_every}", "eval.at_start=true", f"eval.subset_size={args.eval_prompts}",
        "eval.samples=2", "eval.temperature=1.0"]


MISMATCH_KEYS = ("sampling_logp_difference/mean", "sampling_logp_difference/max", "importance_sampling_ratio/min",
                 "importance_sampling_ratio/max", "k3", "seq_ratio/min", "seq_ratio/max")


def mismatch_summary(rows: list[dict]) -> dict:
    """Per kind of row (fresh, stale): the mean over steps of each mean, the extreme over steps of each min/max."""
    out = {}
    for kind in ("fresh", "stale"):
        got = {}
        for key in MISMATCH_KEYS:
            v = [r[f"sampling/{kind}/{key}"] for r in rows if isinstance(r.get(f"sampling/{kind}/{key}"), (int, float))]
            if v:
                got[key] = min(v) if key.endswith("min") else max(v) if key.endswith("max") else statistics.fmean(v)
        got["steps"] = sum(1 for r in rows if f"sampling/{kind}/k3" in r)
        out[kind] = got
    return out


def variants_for(args) -> dict[str, list[str]]:
    if args.cmd == "mismatch":
        return {"fp32": ["actor.dtype=float32", "learner.precision=fp32"],
                "bf16": ["actor.dtype=bfloat16", "learner.precision=bf16"]}
    if args.cmd == "dynamic":
        on = ["dynamic_sampling.enabled=true", f"dynamic_sampling.tol={args.tol}",
              f"dynamic_sampling.max_rounds={args.max_rounds}", f"dynamic_sampling.max_factor={args.max_factor}"]
        return {"off": [f"dynamic_sampling.tol={args.tol}"], "on": on}
    return {"neither": [], "overlong": [f"rewards.overlong_buffer={args.buffer}",
                                        f"rewards.overlong_penalty={args.penalty}"],
            "mask_truncated": ["mask_truncated_completions=true"]}


def compare_runs(results: list[dict], names: list[str]) -> dict:
    """Per seed, the variants at the same budget of actor tokens and of training clock (the smallest total of the
    seed's runs) and the steps to the seed's target (the lowest final eval of its runs); then per variant the
    median and min-max over seeds."""
    per_seed: dict[int, dict] = {}
    for seed in sorted({r["seed"] for r in results}):
        mine = {r["variant"]: r["summary"] for r in results if r["seed"] == seed}
        if not all(n in mine for n in names):
            continue
        tok = min(s["actor_tokens"] for s in mine.values())
        clk = min(s["clock_s"] for s in mine.values())
        finals = [s["eval_final"] for s in mine.values() if s["eval_final"] is not None]
        target = min(finals) if finals else None
        per_seed[seed] = {n: {"eval_at_tokens": at_budget(s, "actor_tokens", tok),
                              "eval_at_clock": at_budget(s, "clock_s", clk),
                              "steps_to_target": steps_to(s, target) if target is not None else None}
                          for n, s in mine.items()}
        per_seed[seed]["budget"] = {"actor_tokens": tok, "clock_s": clk, "target": target}
    return per_seed


def med(vals) -> str:
    v = [x for x in vals if isinstance(x, (int, float)) and math.isfinite(x)]
    if not v:
        return "-"
    m = statistics.median(v)
    return f"{m:.3f}" if len(v) == 1 else f"{m:.3f} [{min(v):.3f}-{max(v):.3f}]"


def table(results: list[dict], names: list[str], cmd: str, per_seed: dict) -> str:
    lines = []
    for n in names:
        mine = [r["summary"] for r in results if r["variant"] == n]
        at = [per_seed[s][n] for s in per_seed]
        row = [f"{n}:", f"eval {med([m['eval_first'] for m in mine])} -> {med([m['eval_final'] for m in mine])}",
               f"train reward {med([m['reward'] for m in mine])}",
               f"frac_zero_std {med([m['frac_reward_zero_std'] for m in mine])}",
               f"actor tokens {med([m['actor_tokens'] for m in mine])}", f"clock s {med([m['clock_s'] for m in mine])}",
               f"grad_norm sd {med([m['grad_norm']['sd'] for m in mine])}"]
        if cmd == "dynamic":
            row += [f"eval at equal tokens {med([a['eval_at_tokens'] for a in at])}",
                    f"at equal clock {med([a['eval_at_clock'] for a in at])}",
                    f"steps to target {med([a['steps_to_target'] for a in at])}",
                    f"groups requested {med([m['groups_requested'] for m in mine])}",
                    f"dropped {med([m['groups_dropped'] for m in mine])}",
                    f"underfilled {med([m['underfilled_steps'] for m in mine])}",
                    f"skipped steps {med([m['skipped_steps'] for m in mine])}"]
        else:
            row += [f"cut {med([m['clipped_ratio_first'] for m in mine])} -> "
                    f"{med([m['clipped_ratio_last'] for m in mine])}",
                    f"length {med([m['length_first'] for m in mine])} -> {med([m['length_last'] for m in mine])}",
                    f"task reward {med([m['task_reward_first'] for m in mine])} -> "
                    f"{med([m['task_reward_last'] for m in mine])}"]
        lines.append("  ".join(row))
    for r in results:
        s = r["summary"]
        lines.append(f"  seed {r['seed']} {r['variant']:<15} eval {s['eval_first']} -> {s['eval_final']}, "
                     f"{s['steps']} steps, actor tokens {s['actor_tokens']:.0f}, clock {s['clock_s']:.0f} s, "
                     f"grad_norm sd {s['grad_norm']['sd']}, cut {s['clipped_ratio_first']} -> "
                     f"{s['clipped_ratio_last']}")
    return "\n".join(lines)


def spread_probe(args) -> int:
    """G samples per prompt from the starting policy (HF generate, :class:`learner.rollouts_local.HFLocalActor`),
    scored by the learner's reward:
    the share of groups whose reward spread (max - min) is at most each tolerance, per task."""
    from configs import load_config
    from learner.data import load_items, make_reward_fn

    tols = [float(x) for x in args.tols.split(",")]
    out = {}
    for task in args.tasks.split(","):
        cfg = load_config(REPO / DEMO_CONFIG, [f"model_id={args.model}", f"data.tasks=[\"{task}\"]",
                                               f"max_completion_length={args.max_completion_length}"])
        from learner.rollouts_local import HFLocalActor
        from sync.wire import SamplingSpec

        items = load_items(cfg.data.train_pairs, cfg.data.tasks)[: args.prompts]
        # the starting policy sampled by HF generate in this process (launch drives the actor only as a process)
        gen = HFLocalActor(cfg.model_id, lora_r=cfg.lora_r, lora_alpha=cfg.lora_alpha)
        sp = SamplingSpec(args.num_generations, 1.0, 1.0, args.max_completion_length, 7)
        results = [gen._generate(it.messages, sp, i) for i, it in enumerate(items)]
        reward = make_reward_fn(cfg)
        spreads, cut, lens = [], 0, []
        for it, res in zip(items, results, strict=True):
            texts = [c.text for c in res.completions]
            cols = {k: [v] * len(texts) for k, v in it.columns.items()}
            rw = reward(texts, prompts=[it.messages] * len(texts), **cols)
            spreads.append(max(rw) - min(rw))
            cut += sum(c.finish_reason == "length" for c in res.completions)
            lens += [len(c.token_ids) for c in res.completions]
        share = {t: sum(s <= t for s in spreads) / len(spreads) for t in tols}
        out[task] = {"groups": len(spreads), "no_spread": share, "cut": cut / len(lens),
                     "length": statistics.fmean(lens)}
        print(f"{task:<11} " + "  ".join(f"tol {t}: {v:.2f}" for t, v in out[task]["no_spread"].items())
              + f"  cut {out[task]['cut']:.2f}  length {out[task]['length']:.1f}", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps({**provenance(sys.argv[1:]), "by_task": out}, indent=1))
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    p = argparse.ArgumentParser(prog="python -m launch.objectives", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    sp = sub.add_parser("spread", help="the share of groups with no spread at the start, per task and tolerance")
    sp.add_argument("--tasks", default="extraction,sql_qa,insights,push")
    sp.add_argument("--prompts", type=int, default=40)
    sp.add_argument("--num-generations", type=int, default=8)
    sp.add_argument("--max-completion-length", type=int, default=64)
    sp.add_argument("--tols", default="0,0.01,0.02,0.05")
    sp.add_argument("--model", default=BASE)
    sp.add_argument("--json", default=None)
    for name in ("dynamic", "overlong", "mismatch"):
        q = sub.add_parser(name, help=f"the {name} variants side by side under --seeds seeds")
        q.add_argument("--seeds", type=int, default=3)
        q.add_argument("--steps", type=int, default=40)
        q.add_argument("--task", default="push")
        q.add_argument("--num-generations", type=int, default=8)
        q.add_argument("--prompts-per-step", type=int, default=4)
        q.add_argument("--max-completion-length", type=int, default=64)
        q.add_argument("--learning-rate", type=float, default=2e-3)
        q.add_argument("--eval-every", type=int, default=10)
        q.add_argument("--eval-prompts", type=int, default=100)
        q.add_argument("--sft", action="store_true", help="start from launch.compare's SFT adapter (WORK/sft)")
        q.add_argument("--work", default=f"runs/objectives_{name}")
        q.add_argument("--json", default=None)
        q.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                       help="an override for every variant")
        if name == "mismatch":
            q.set_defaults(seeds=1, steps=12, eval_every=0)
        if name == "dynamic":
            q.add_argument("--tol", type=float, default=0.0)
            q.add_argument("--max-rounds", type=int, default=2)
            q.add_argument("--max-factor", type=float, default=3.0)
        elif name == "overlong":
            q.add_argument("--buffer", type=int, default=16)
            q.add_argument("--penalty", type=float, default=1.0)
    args = p.parse_args(argv)
    if args.cmd == "spread":
        return spread_probe(args)
    if args.seeds < 1 or args.steps < 1:
        p.error("--seeds and --steps must be at least 1")
    work = (REPO / args.work).resolve()
    work.mkdir(parents=True, exist_ok=True)
    subprocess.run(["bash", "launch/demo_model.sh"], cwd=REPO, env={**os.environ, "PY": sys.executable}, check=True,
                   stdout=open(work / "model.log", "w"), stderr=subprocess.STDOUT)  # noqa: SIM115
    sft = None
    if args.sft:
        sft = work / "sft" / "adapter"
        if not (sft / "adapter_config.json").exists():
            subprocess.run([sys.executable, "-m", "learner.sft", "--config", DEMO_CONFIG, "--balance", "--set",
                            f"run_dir={work}"], cwd=REPO, check=True, stdout=open(work / "sft.log", "w"),  # noqa: SIM115
                           stderr=subprocess.STDOUT)
    variants = variants_for(args)
    names = list(variants)
    results = []
    for k, seed in enumerate(range(FIRST_SEED, FIRST_SEED + args.seeds)):
        for name in (names if k % 2 == 0 else names[::-1]):
            tag = f"{name}-s{seed}"
            t0 = time.perf_counter()
            rows = run_ours(work / tag, base_sets(args, seed, sft) + variants[name] + args.overrides,
                            work / f"{tag}.log")
            s = run_summary(rows)
            if args.cmd == "mismatch":
                s["mismatch"] = mismatch_summary(rows)
            results.append({"variant": name, "seed": seed, "summary": s, "wall_s": time.perf_counter() - t0,
                            "rows": rows})
            print(f"objectives: {tag}: eval {s['eval_first']} -> {s['eval_final']}, {s['steps']} steps, "
                  f"{time.perf_counter() - t0:.0f} s", flush=True)
    per_seed = compare_runs(results, names)
    if args.cmd == "mismatch":
        print(f"\n{'run':<12} {'rows':<6} {'steps':>5} " + " ".join(f"{k:>30}" for k in MISMATCH_KEYS))
        for r in results:
            for kind, mm in r["summary"]["mismatch"].items():
                print(f"{r['variant'] + ' s' + str(r['seed']):<12} {kind:<6} {mm['steps']:>5} "
                      + " ".join(f"{mm.get(k, float('nan')):>30.3g}" for k in MISMATCH_KEYS))
    else:
        print("\n" + table(results, names, args.cmd, per_seed))
    out = Path(args.json) if args.json else work / f"{args.cmd}.json"
    out.write_text(json.dumps({**provenance(argv), "settings": vars(args), "variants": variants,
                               "per_seed": per_seed, "results": results}, indent=1))
    print(f"objectives: wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
