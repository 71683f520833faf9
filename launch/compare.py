"""``python -m launch.compare [--steps N] [--only SYSTEM] [--work DIR] [--json FILE]``: our system against
TRL's GRPOTrainer, racing to the same train reward on the same work.

The work is the demo's: its stand-in model (``models/small-pt``, built and cached by ``launch/demo_model.sh``)
after its SFT warm-up (``learner.sft --balance`` with ``configs/demo_cpu.yaml``, cached in ``WORK/sft``),
the commerce reward (``rewards.make_reward``) on the pairs of ``--tasks``, and for every system the same G,
prompts per step, completion length, rollout temperature, LoRA (the SFT adapter, trained further), learning
rate (constant), Dr. GRPO loss (beta 0, no std scaling) and number of steps. The prompts come in the same
order for everyone (our learner's sampler; TRL with ``shuffle_dataset=False``), so step k of every system
trains on the same prompts. Run one after the other on this machine:

- ``trl_hf_generate``: GRPOTrainer without vLLM (generation with HF ``generate``), one process;
- ``trl_vllm_colocate``: GRPOTrainer with ``use_vllm=True, vllm_mode="colocate"``, one process;
- ``ours``: ``launch/cpu.sh``: a vLLM actor process and a DeepSpeed learner process with the ZeroMQ sync.
  On a CPU box the actor and the learner are pinned to separate cores (``taskset``) as stand-ins for
  separate GPUs; TRL gets every core in its one process.

The race: each system's train reward per step, smoothed by a trailing moving average of ``--window`` steps,
against its cumulative step wall-clock (engine start-up and model loading are left out for everyone and
reported apart as ``setup_s``). The finish line against each TRL system is the lower of the two final
moving averages (ours and that system's); the time to reach it is the cumulative wall-clock of the first
step whose moving average is at or above it. Prints a table and writes JSON with each system's per-step rows
(``results[].rows``: step, step_s, reward, generation_s, train_s, sync_s) and a PNG of the curves. ``--set
KEY=VALUE`` passes a config override to our system (e.g. ``actor.load_mode=drain``).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

from learner.metrics import read_metrics

REPO = Path(__file__).resolve().parent.parent
SYSTEMS = ("trl_hf_generate", "trl_vllm_colocate", "ours")
DEMO_CONFIG = "configs/demo_cpu.yaml"
BASE = "models/small-pt"


def sh(argv: list[str], log: Path, env: dict | None = None) -> float:
    """Run a command (output to ``log``); its wall-clock seconds. A failure ends the comparison with the tail."""
    t0 = time.perf_counter()
    with open(log, "w") as f:
        proc = subprocess.run(argv, stdout=f, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})},
                              cwd=REPO, check=False)
    if proc.returncode != 0:
        tail = log.read_text()[-2000:]
        raise SystemExit(f"compare: {' '.join(argv[:4])} ... failed with {proc.returncode}; log {log}\n{tail}")
    dt = time.perf_counter() - t0
    print(f"compare: {Path(argv[2] if argv[1] == '-m' else argv[1] if argv[0] == 'bash' else argv[0]).name} "
          f"done in {dt:.0f}s", flush=True)
    return dt


def moving_average(values: list[float], window: int) -> list[float]:
    """Trailing mean over the last ``window`` values (fewer at the start).

    >>> moving_average([0.0, 1.0, 2.0, 3.0], 2)
    [0.0, 0.5, 1.5, 2.5]
    """
    out = []
    for i in range(len(values)):
        chunk = values[max(0, i - window + 1): i + 1]
        out.append(sum(chunk) / len(chunk))
    return out


def race(rows: list[dict], window: int) -> dict:
    """Cumulative wall-clock and moving-average reward per step."""
    t, clock = 0.0, []
    for r in rows:
        t += r["step_s"]
        clock.append(t)
    return {"clock_s": clock, "ma": moving_average([r.get("reward", 0.0) for r in rows], window)}


def time_to(curve: dict, target: float) -> float | None:
    """Wall-clock of the first step whose moving average reaches ``target`` (None if it never does).

    >>> time_to({"clock_s": [1.0, 2.0, 3.0], "ma": [0.1, 0.3, 0.2]}, 0.25)
    2.0
    """
    return next((c for c, m in zip(curve["clock_s"], curve["ma"], strict=True) if m >= target - 1e-12), None)


def summarize(name: str, rows: list[dict], window: int, note: str = "", setup_s: float | None = None) -> dict:
    steady = rows[1:] if len(rows) > 1 else rows

    def median(key):
        vals = [r[key] for r in steady if isinstance(r.get(key), (int, float))]
        return statistics.median(vals) if vals else float("nan")

    curve = race(rows, window)
    return {"system": name, "steps": len(rows), "step_s": median("step_s"), "generation_s": median("generation_s"),
            "train_s": median("train_s"), "sync_s": median("sync_s"),
            "total_s": curve["clock_s"][-1] if rows else float("nan"),
            "reward": statistics.fmean([r.get("reward", 0.0) for r in rows]) if rows else float("nan"),
            "reward_first": curve["ma"][window - 1] if len(rows) >= window else float("nan"),
            "reward_final": curve["ma"][-1] if rows else float("nan"),
            "setup_s": setup_s, "note": note, "rows": rows, "curve": curve}


def ours_rows(run_dir: Path) -> list[dict]:
    rows = []
    for r in read_metrics(run_dir):
        if "train/reward" in r and "perf/step_s" in r:
            rows.append({"step": r["step"], "step_s": r["perf/step_s"], "reward": r["train/reward"],
                         "generation_s": r.get("perf/generation_wait_s"), "train_s": r.get("perf/train_s"),
                         "sync_s": r.get("perf/sync_s"), "completion_length": r.get("train/completion_length"),
                         "completions": r.get("train/completions"),
                         "actor_tokens_per_s": r.get("perf/actor_tokens_per_s"),
                         "mixed_version_frac": r.get("train/mixed_version_frac")})
    return rows


def plot(results: list[dict], targets: dict, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = {"trl_hf_generate": "TRL GRPOTrainer, HF generate", "trl_vllm_colocate": "TRL GRPOTrainer, vLLM colocate",
              "ours": "ours (actor + learner processes)"}
    colors = {"trl_hf_generate": "tab:gray", "trl_vllm_colocate": "tab:blue", "ours": "tab:red"}
    fig, ax = plt.subplots(figsize=(7.5, 4.2))
    for r in results:
        c = r["curve"]
        ax.plot([0.0] + c["clock_s"], [c["ma"][0]] + c["ma"], "-", color=colors.get(r["system"]), linewidth=2,
                label=labels.get(r["system"], r["system"]))
    for peer, t in targets.items():
        ax.axhline(t["target"], color=colors.get(peer), linestyle=":", linewidth=1)
        for name, x in ((peer, t["time_peer_s"]), ("ours", t["time_ours_s"])):
            if x is not None:
                ax.plot([x], [t["target"]], "o", color=colors.get(name), markersize=6)
    ax.set(xlabel="wall-clock of training steps (s)", ylabel="train reward, moving average", title=title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m launch.compare", description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--tasks", default="push", help="comma-separated tasks whose train pairs are the prompts")
    p.add_argument("--num-generations", type=int, default=8)
    p.add_argument("--prompts-per-step", type=int, default=4)
    p.add_argument("--max-completion-length", type=int, default=64)
    p.add_argument("--learning-rate", type=float, default=2e-3)
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--window", type=int, default=5, help="steps in the moving average of the train reward")
    p.add_argument("--work", default="runs/compare", help="where the SFT adapter and per-system outputs go")
    p.add_argument("--json", default=None, help="default: WORK/compare.json")
    p.add_argument("--plot", default=None, help="default: WORK/compare_reward_vs_time.png")
    p.add_argument("--only", choices=SYSTEMS, action="append")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="config override for our system only, after the race's own (e.g. actor.load_mode=drain)")
    args = p.parse_args(argv)
    if args.window < 1 or args.steps < args.window:
        p.error("--steps must be at least --window, and --window at least 1")

    py = sys.executable
    work = (REPO / args.work).resolve()
    work.mkdir(parents=True, exist_ok=True)
    sh(["bash", "launch/demo_model.sh"], work / "model.log", env={"PY": py})
    sft = work / "sft" / "adapter"
    if not (sft / "adapter_config.json").exists():
        sh([py, "-m", "learner.sft", "--config", DEMO_CONFIG, "--balance", "--set", f"run_dir={work}"],
           work / "sft.log")
    tasks = [t for t in args.tasks.split(",") if t]
    common = ["--model", BASE, "--adapter", str(sft), "--data", "data", "--tasks", ",".join(tasks),
              "--steps", str(args.steps), "--num-generations", str(args.num_generations),
              "--max-completion-length", str(args.max_completion_length), "--learning-rate", str(args.learning_rate),
              "--temperature", str(args.temperature), "--prompts-per-step", str(args.prompts_per_step)]
    only = set(args.only or SYSTEMS)
    results = []
    for name, extra in (("trl_hf_generate", []), ("trl_vllm_colocate", ["--vllm"])):
        if name in only:
            out = work / f"{name}.json"
            wall = sh([py, "-m", "launch.trl_peer", *common, *extra, "--out", str(out)], work / f"{name}.log")
            peer = json.loads(out.read_text())
            res = summarize(name, peer["steps"], args.window, peer.get("note", ""), peer.get("setup_s"))
            res["wall_s"] = wall
            results.append(res)
    if "ours" in only:
        run = work / "ours"
        shutil.rmtree(run, ignore_errors=True)  # a fresh run, not a resume of the last comparison
        pin = ["--actor-cores", "0", "--learner-cores", "1"] if (os.cpu_count() or 1) >= 2 else []
        g = args.num_generations
        overrides = [f"init_adapter={sft}", "sft.enabled=false", f"max_steps={args.steps}",
                     f"learning_rate={args.learning_rate}", "warmup_ratio=0", "lr_scheduler_type=constant",
                     f"num_generations={g}", f"prompts_per_step={args.prompts_per_step}",
                     f"max_completion_length={args.max_completion_length}", f"temperature={args.temperature}",
                     f"data.tasks={json.dumps(tasks)}", "eval.every=0", "eval.at_start=false",
                     "learner.checkpoint_every=1000", "learner.probe_every=0", "sync.max_staleness=1",
                     f"learner.micro_batch_size={g * args.prompts_per_step}", *args.overrides]
        wall = sh(["bash", "launch/cpu.sh", DEMO_CONFIG, "--run-dir", str(run), *pin,
                   *[a for o in overrides for a in ("--set", o)]], work / "ours.log")
        rows = ours_rows(run)
        res = summarize("ours", rows, args.window,
                        "actor and learner pinned to separate cores (stand-ins for GPUs)" if pin else "",
                        setup_s=round(wall - sum(r["step_s"] for r in rows), 1))
        res["wall_s"] = wall
        results.append(res)

    by = {r["system"]: r for r in results}
    print(f"\n{'system':<18} {'steps':>5} {'step s':>7} {'gen s':>6} {'train s':>7} {'sync s':>6} "
          f"{'reward first->final':>20} {'total s':>8} {'setup s':>8}  note")
    for r in results:
        print(f"{r['system']:<18} {r['steps']:>5} {r['step_s']:>7.2f} {r['generation_s']:>6.2f} {r['train_s']:>7.2f} "
              f"{r['sync_s']:>6.2f} {r['reward_first']:>9.3f} -> {r['reward_final']:.3f} {r['total_s']:>8.1f} "
              f"{r['setup_s'] or float('nan'):>8.1f}  {r['note']}")
    summary: dict = {}
    targets: dict = {}
    if "ours" in by:
        for peer in ("trl_hf_generate", "trl_vllm_colocate"):
            if peer not in by:
                continue
            target = min(by["ours"]["reward_final"], by[peer]["reward_final"])
            t_ours, t_peer = time_to(by["ours"]["curve"], target), time_to(by[peer]["curve"], target)
            targets[peer] = {"target": target, "time_ours_s": t_ours, "time_peer_s": t_peer,
                             "ratio": t_peer / t_ours if t_ours and t_peer else None}
            summary[f"speedup_vs_{peer}"] = by[peer]["step_s"] / by["ours"]["step_s"]
            summary[f"time_to_reward_vs_{peer}"] = targets[peer]
            ratio = targets[peer]["ratio"]
            print(f"ours vs {peer}: {summary[f'speedup_vs_{peer}']:.2f}x faster per step (median); "
                  f"moving-average train reward {target:.3f} reached in {t_ours:.1f}s (ours) vs {t_peer:.1f}s "
                  f"-> {ratio:.2f}x sooner" if ratio else f"ours vs {peer}: target {target:.3f} not reached by both")
    out = Path(args.json) if args.json else work / "compare.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"settings": vars(args), "summary": summary, "results": results}, indent=2))
    png = Path(args.plot) if args.plot else work / "compare_reward_vs_time.png"
    if results:
        plot(results, targets, png, f"Race to the same train reward ({','.join(tasks)}, G={args.num_generations}, "
                                    f"{args.prompts_per_step} prompts/step)")
    print(f"compare: wrote {out} and {png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
