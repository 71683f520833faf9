"""``python -m launch.compare [--steps N] [--json FILE]``: our system against TRL's GRPOTrainer, same work.

Same model (the offline bench-size Tucano2-family model, ~22M parameters, where generation costs
something), same data and reward (the commerce pairs and ``rewards.make_reward``), same G, lengths,
LoRA rank, learning rate and number of steps, run one after the other on this machine:

- ``trl_hf_generate``: GRPOTrainer without vLLM (generation with HF ``generate``), one process;
- ``trl_vllm_colocate``: GRPOTrainer with ``use_vllm=True, vllm_mode="colocate"``, one process;
- ``ours``: ``launch/cpu.sh``: a vLLM actor process and a DeepSpeed learner process with the ZeroMQ sync.
  On a CPU box the actor and the learner are pinned to separate cores (``taskset``) as stand-ins for
  separate GPUs; TRL gets every core in its one process.

Step and generation times are medians over the steps after the first (engine warm-up, DeepSpeed op builds;
the median also resists a busy neighbour on a shared box). Prints a table and writes JSON with each system's
per-step rows.
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


def sh(argv: list[str], log: Path, env: dict | None = None) -> None:
    t0 = time.perf_counter()
    with open(log, "w") as f:
        proc = subprocess.run(argv, stdout=f, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})},
                              cwd=REPO, check=False)
    if proc.returncode != 0:
        tail = log.read_text()[-2000:]
        raise SystemExit(f"compare: {' '.join(argv[:4])} ... failed with {proc.returncode}; log {log}\n{tail}")
    print(f"compare: {Path(argv[2] if argv[1] == '-m' else argv[0]).name} done in {time.perf_counter() - t0:.0f}s")


def summarize(name: str, rows: list[dict], note: str = "") -> dict:
    steady = rows[1:] if len(rows) > 1 else rows

    def median(key):
        vals = [r[key] for r in steady if isinstance(r.get(key), (int, float))]
        return statistics.median(vals) if vals else float("nan")

    return {"system": name, "steps": len(rows), "step_s": median("step_s"), "generation_s": median("generation_s"),
            "reward": statistics.fmean([r.get("reward", 0.0) for r in rows]) if rows else float("nan"),
            "note": note, "rows": rows}


def ours_rows(run_dir: Path) -> list[dict]:
    rows = []
    for r in read_metrics(run_dir):
        if "train/reward" in r and "perf/step_s" in r:
            rows.append({"step": r["step"], "step_s": r["perf/step_s"],
                         "generation_s": r.get("perf/generation_wait_s"), "reward": r["train/reward"]})
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m launch.compare", description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--num-generations", type=int, default=16)
    p.add_argument("--max-completion-length", type=int, default=64)
    p.add_argument("--work", default="runs/compare", help="where models, data and per-system outputs go")
    p.add_argument("--json", default=None, help="default: WORK/compare.json")
    p.add_argument("--only", choices=["trl_hf_generate", "trl_vllm_colocate", "ours"], action="append")
    args = p.parse_args(argv)

    py = sys.executable
    work = (REPO / args.work).resolve()
    work.mkdir(parents=True, exist_ok=True)
    model, data = work / "bench-model", work / "data"
    if not (data / "pairs" / "train.jsonl").exists():
        sh([py, "-m", "commerce", "build", "--out", str(data)], work / "data.log")
    sh([py, "-m", "zoo", "build", "--shape", "bench", "--out", str(model), "--db", str(data / "commerce.db")],
       work / "model.log")
    common = ["--model", str(model), "--data", str(data), "--steps", str(args.steps), "--num-generations",
              str(args.num_generations), "--max-completion-length", str(args.max_completion_length),
              "--learning-rate", "1e-5", "--prompts-per-step", "1"]
    only = set(args.only or ["trl_hf_generate", "trl_vllm_colocate", "ours"])
    results = []
    for name, extra in (("trl_hf_generate", []), ("trl_vllm_colocate", ["--vllm"])):
        if name in only:
            out = work / f"{name}.json"
            sh([py, "-m", "launch.trl_peer", *common, *extra, "--out", str(out)], work / f"{name}.log")
            peer = json.loads(out.read_text())
            results.append(summarize(name, peer["steps"], peer.get("note", "")))
    if "ours" in only:
        run = work / "ours"
        shutil.rmtree(run, ignore_errors=True)  # a fresh run, not a resume of the last comparison
        pin = ["--actor-cores", "0", "--learner-cores", "1"] if (os.cpu_count() or 1) >= 2 else []
        overrides = [f"model_id={model}", f"max_steps={args.steps}", "learning_rate=1e-5", "warmup_ratio=0",
                     "lr_scheduler_type=constant", f"num_generations={args.num_generations}",
                     f"max_completion_length={args.max_completion_length}", "prompts_per_step=1",
                     f"data.db_path={data / 'commerce.db'}", f"data.train_pairs={data / 'pairs' / 'train.jsonl'}",
                     f"data.eval_pairs={data / 'pairs' / 'eval.jsonl'}", "eval.every=0", "eval.at_start=false",
                     "learner.checkpoint_every=1000", "learner.probe_every=0", "sync.max_staleness=1",
                     f"learner.micro_batch_size={args.num_generations}"]
        sh(["bash", "launch/cpu.sh", "configs/smoke_cpu.yaml", "--run-dir", str(run), *pin,
            *[a for o in overrides for a in ("--set", o)]], work / "ours.log")
        results.append(summarize("ours", ours_rows(run),
                                 "actor and learner pinned to separate cores (stand-ins for GPUs)" if pin else ""))

    by = {r["system"]: r for r in results}
    print(f"\n{'system':<20} {'steps':>5} {'step s':>8} {'gen s':>8} {'reward':>8}  note")
    for r in results:
        print(f"{r['system']:<20} {r['steps']:>5} {r['step_s']:>8.2f} {r['generation_s']:>8.2f} "
              f"{r['reward']:>8.3f}  {r['note']}")
    summary = {}
    if "ours" in by:
        for peer in ("trl_hf_generate", "trl_vllm_colocate"):
            if peer in by:
                summary[f"speedup_vs_{peer}"] = by[peer]["step_s"] / by["ours"]["step_s"]
                print(f"ours vs {peer}: {summary[f'speedup_vs_{peer}']:.2f}x faster per step")
    out = Path(args.json) if args.json else work / "compare.json"
    out.write_text(json.dumps({"settings": vars(args), "summary": summary, "results": results}, indent=2))
    print(f"compare: wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
