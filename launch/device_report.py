"""``python -m launch.device_report --config FILE [--set k=v ...] --run RUN_DIR --smi CSV [--bench JSON] [--json OUT]``

The summary of ``launch/device_check.sh`` (the GPU path on a lent GPU): did the learner's run train and resume
(steps, versions, finite losses, from ``RUN_DIR/metrics.jsonl``), and how its peak GPU memory, sampled from outside
by ``nvidia-smi --query-compute-apps`` (``CSV``: ``time,pid,used MiB`` rows), compares with ``launch.memory``'s
estimate of a learner rank for the same config (:func:`launch.memory.learner_part`) plus what the local stand-in actor
of ``--rollouts local`` adds to the same process (:func:`local_actor_gib`). ``--bench``: a
``learner.bench`` JSON, whose ``peak_mem_gb`` (torch's own peak allocation) is set beside the estimate's parts the
allocator holds (the estimate less the CUDA context and the headroom). Prints a table; exit 1 when the run did not
train and resume, or when a measured peak exceeds the estimate.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
from pathlib import Path

MiB = 2**20
GiB = 2**30


def smi_peaks(path: Path) -> dict[int, float]:
    """Peak used GiB per pid in an ``nvidia-smi --query-compute-apps=timestamp,pid,used_memory --format=csv,noheader,
    nounits`` log (lines that do not parse are skipped: the poller may be cut mid-line)."""
    peaks: dict[int, float] = {}
    for row in csv.reader(Path(path).read_text().splitlines()):
        try:
            pid, mib = int(row[1]), float(row[2])
        except (IndexError, ValueError):
            continue
        peaks[pid] = max(peaks.get(pid, 0.0), mib * MiB / GiB)
    return peaks


def training_check(rows: list[dict], first_steps: int, total_steps: int) -> list[str]:
    """Problems with a run of ``first_steps`` resumed to ``total_steps`` (empty: it trained and resumed)."""
    steps = [r["step"] for r in rows if "train/loss" in r]
    bad = []
    if sorted(set(steps)) != list(range(1, total_steps + 1)):
        bad.append(f"trained steps {sorted(set(steps))}, expected 1..{total_steps}")
    losses = [r["train/loss"] for r in rows if "train/loss" in r]
    if any(not math.isfinite(x) for x in losses):
        bad.append("a non-finite loss")
    versions = [r.get("train/version") for r in rows if "train/loss" in r]
    if versions and versions[-1] is not None and versions[-1] != total_steps:
        bad.append(f"last version {versions[-1]}, expected {total_steps}")
    if first_steps >= total_steps:
        bad.append("no step after the resume")
    return bad


def local_actor_gib(cfg, shape) -> float:
    """What ``--rollouts local``'s stand-in actor adds to the learner's process (``learner.rollouts_local``): its own
    copy of the base model in bf16 with LoRA, and ``generate``'s KV cache for one step's batch at full length (an
    upper bound; freed before the training step, so it overlaps with the learner's resident parts only)."""
    seqs = cfg.prompts_per_step * cfg.num_generations
    return (shape.params * 2 + seqs * cfg.max_seq_length * shape.kv_bytes_per_token(2)) / GiB


def report(cfg, run_dir: Path, smi: Path | None, bench: dict | None, first_steps: int) -> tuple[dict, list[str]]:
    from launch.memory import CUDA_CONTEXT_GIB, learner_part, model_shape
    from learner.metrics import read_metrics

    shape = model_shape(str(cfg.model_id))
    part = learner_part(cfg, shape)
    rows = read_metrics(run_dir)
    problems = training_check(rows, first_steps, cfg.max_steps)
    local = local_actor_gib(cfg, shape)
    out = {"estimate_gib": part.total, "estimate_items": part.items, "local_actor_gib": local, "steps": cfg.max_steps}
    peaks = smi_peaks(smi) if smi is not None and Path(smi).exists() else {}
    if peaks:
        # the learner (with its stand-in actor) is the only compute process of the check
        out["measured_peak_gib"] = max(peaks.values())
        if out["measured_peak_gib"] > part.total + local:
            problems.append(f"the learner's peak {out['measured_peak_gib']:.2f} GiB exceeds the plan's "
                            f"{part.total:.2f} GiB with the local actor's {local:.2f}")
    else:
        problems.append("no nvidia-smi samples of the learner")
    if bench is not None:
        held = part.total - part.items["headroom"] - CUDA_CONTEXT_GIB
        out["bench_peak_gib"], out["estimate_allocated_gib"] = bench["peak_mem_gb"], held
        if bench["peak_mem_gb"] > held:
            problems.append(f"learner.bench's peak allocation {bench['peak_mem_gb']:.2f} GiB exceeds the plan's "
                            f"{held:.2f} GiB (without context and headroom)")
    out["problems"] = problems
    return out, problems


def main(argv: list[str] | None = None) -> int:
    from configs import ConfigError, load_config
    from configs.__main__ import add_config_args

    p = argparse.ArgumentParser(prog="python -m launch.device_report", description=__doc__.splitlines()[0])
    add_config_args(p)
    p.add_argument("--run", type=Path, required=True, help="the learner's run directory")
    p.add_argument("--smi", type=Path, default=None, help="nvidia-smi compute-apps log (csv)")
    p.add_argument("--bench", type=Path, default=None, help="a learner.bench JSON at the same config")
    p.add_argument("--first-steps", type=int, required=True, help="steps of the run before its resume")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    try:
        cfg = load_config(args.config, args.overrides)
    except ConfigError as e:
        print(f"launch.device_report: invalid config: {e}", file=sys.stderr)
        return 2
    bench = json.loads(args.bench.read_text()) if args.bench is not None and args.bench.exists() else None
    out, problems = report(cfg, args.run, args.smi, bench, args.first_steps)
    print("| what | GiB |\n| --- | ---: |")
    print(f"| launch.memory's learner estimate | {out['estimate_gib']:.2f} |")
    print(f"| + the local stand-in actor (weights, generate's KV at full length) | {out['local_actor_gib']:.2f} |")
    if "measured_peak_gib" in out:
        print(f"| learner process peak (nvidia-smi: context, local actor) | {out['measured_peak_gib']:.2f} |")
    if "bench_peak_gib" in out:
        print(f"| estimate without context and headroom | {out['estimate_allocated_gib']:.2f} |")
        print(f"| learner.bench peak allocation (torch) | {out['bench_peak_gib']:.2f} |")
    for line in problems:
        print(f"device check: {line}", file=sys.stderr)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, indent=1))
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
