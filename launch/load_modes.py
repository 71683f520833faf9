"""``python -m launch.load_modes [--rounds N] [--work DIR] [--json FILE] [--variants SPEC] [-- compare options]``: how
an actor takes a new version, ``actor.load_mode`` ``inflight`` against ``drain``, on the race work; or any other
variants of our run side by side (``--variants "background:sync.wait_for_acks=false;blocking:sync.wait_for_acks=true"``:
``name:key=value[,key=value]`` separated by ``;``).

Runs ``python -m launch.compare --only ours`` (the demo's SFT'd stand-in, the race's settings: staleness 1, the actor
and the learner pinned to separate cores) once per mode per round, the modes alternating (inflight, drain, drain,
inflight, ...) so a drifting machine load falls on both, and prints per mode the medians over rounds of:

- actor tokens/s: completion tokens trained on per second of training wall-clock (``train/completions`` x
  ``train/completion_length`` over ``perf/step_s``): what the actors delivered, idle time included;
- s/step: the median ``perf/step_s`` of the run (steps after the first), and of its parts the learner spends
  waiting: ``perf/sync_s`` (publishing: the adapter's gather, pack and checksum; the actors' acks are checked in
  the background unless ``sync.wait_for_acks``) and ``perf/generation_wait_s``;
- time to reward: wall-clock of training steps until the train reward's moving average first reaches the target,
  the lowest final moving average of all the runs (so every run reaches it);
- mixed: the share of trained completions whose tokens span two versions (``train/mixed_version_frac``; 0 drained);
- learner wait: the share of the step the learner spends on anything but its own compute and the eval
  (``perf/learner_wait_s`` over ``perf/step_s``, summed over the steps after the first), and of it what is not
  waiting for rollouts (``overhead``: publishing, acks, the batch, bookkeeping).

``--reuse`` keeps the rounds already in ``--work`` and runs only the missing ones (more rounds, later). Writes JSON
with every run's rows (``runs[]``: mode, round, the compare JSON's per-step rows) and the table.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

from launch.compare import REPO
from launch.race import race

MODES = "inflight:actor.load_mode=inflight;drain:actor.load_mode=drain"


def parse_variants(spec: str) -> dict[str, list[str]]:
    """``"a:k=v,k2=v2;b:k=v"`` -> ``{"a": ["k=v", "k2=v2"], "b": ["k=v"]}``; ValueError naming a bad part."""
    out = {}
    for part in filter(None, (x.strip() for x in spec.split(";"))):
        name, _, sets = part.partition(":")
        overrides = [x.strip() for x in sets.split(",") if x.strip()]
        if not name.strip().isidentifier() or not overrides or not all("=" in o for o in overrides):
            raise ValueError(f"--variants: {part!r} is not name:key=value[,key=value]")
        out[name.strip()] = overrides
    if len(out) < 2:
        raise ValueError("--variants: give at least two variants to compare")
    return out


def run_metrics(rows: list[dict], window: int) -> dict:
    steady = rows[1:] if len(rows) > 1 else rows
    tokens = sum((r.get("completions") or 0) * (r.get("completion_length") or 0) for r in rows)
    wall = sum(r["step_s"] for r in rows)
    mixed = [r["mixed_version_frac"] for r in rows if isinstance(r.get("mixed_version_frac"), (int, float))]
    waited = [(r["learner_wait_s"], r.get("generation_s") or 0.0, r["step_s"]) for r in (rows[1:] if len(rows) > 1
              else rows) if isinstance(r.get("learner_wait_s"), (int, float))]
    wall_waited = sum(t for *_, t in waited)
    def median(key):
        vals = [r[key] for r in steady if isinstance(r.get(key), (int, float))]
        return statistics.median(vals) if vals else float("nan")

    return {"actor_tokens_per_s": tokens / wall if wall else float("nan"),
            "step_s": median("step_s"), "sync_s": median("sync_s"), "gen_wait_s": median("generation_s"),
            "mixed_version_frac": statistics.fmean(mixed) if mixed else float("nan"),
            "learner_wait_frac": sum(w for w, _, _ in waited) / wall_waited if waited else float("nan"),
            "overhead_frac": sum(w - g for w, g, _ in waited) / wall_waited if waited else float("nan"),
            "curve": race(rows, window)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m launch.load_modes", description=__doc__.split("\n")[0])
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--work", default="runs/load_modes", help="launch.compare's --work (its SFT adapter is reused)")
    p.add_argument("--json", default=None, help="default: WORK/load_modes.json")
    p.add_argument("--window", type=int, default=5)
    p.add_argument("--variants", default=MODES, help="name:key=value[,key=value];... (default: the two load modes)")
    p.add_argument("--reuse", action="store_true",
                   help="keep the runs already in WORK (their compare JSON) and run only the rounds missing")
    args, rest = p.parse_known_args(argv)
    rest = [a for a in rest if a != "--"]
    try:
        variants = parse_variants(args.variants)
    except ValueError as e:
        p.error(str(e))
    modes = tuple(variants)
    work = (REPO / args.work).resolve()
    runs = []
    for rnd in range(args.rounds):
        for mode in (modes if rnd % 2 == 0 else modes[::-1]):
            out = work / f"{mode}-{rnd}.json"
            cmd = [sys.executable, "-m", "launch.compare", "--only", "ours", "--seeds", "1", "--work", str(work),
                   "--json", str(out), "--plot", str(work / f"{mode}-{rnd}.png"), "--window", str(args.window),
                   *[a for o in variants[mode] for a in ("--set", o)], *rest]
            if args.reuse and out.exists():
                print(f"load_modes: round {rnd + 1}/{args.rounds}, {mode}: kept {out}", flush=True)
            else:
                print(f"load_modes: round {rnd + 1}/{args.rounds}, {mode}", flush=True)
                subprocess.run(cmd, cwd=REPO, check=True)
            res = json.loads(out.read_text())["results"][0]
            runs.append({"mode": mode, "round": rnd, "setup_s": res.get("setup_s"), "rows": res["rows"],
                         **run_metrics(res["rows"], args.window)})
    target = min(r["curve"]["ma"][-1] for r in runs)
    for r in runs:
        r["time_to_reward_s"] = next(c for c, m in zip(r["curve"]["clock_s"], r["curve"]["ma"], strict=True)
                                     if m >= target - 1e-12)
    table = {}
    for mode in modes:
        mine = [r for r in runs if r["mode"] == mode]
        table[mode] = {k: statistics.median(r[k] for r in mine)
                       for k in ("actor_tokens_per_s", "step_s", "sync_s", "gen_wait_s", "time_to_reward_s",
                                 "mixed_version_frac", "learner_wait_frac", "overhead_frac")}
    print(f"\nvariant    actor tok/s  s/step  sync s  gen wait s  time to reward {target:.3f} (s)  mixed  "
          f"learner wait  overhead  ({args.rounds} round(s), medians)")
    for mode, t in table.items():
        print(f"{mode:<10} {t['actor_tokens_per_s']:>11.0f} {t['step_s']:>7.3f} {t['sync_s']:>7.3f} "
              f"{t['gen_wait_s']:>11.3f} {t['time_to_reward_s']:>26.1f} {t['mixed_version_frac']:>6.3f} "
              f"{t['learner_wait_frac']:>12.1%} {t['overhead_frac']:>9.1%}")
    for r in runs:
        print(f"  round {r['round'] + 1} {r['mode']:<9} tok/s {r['actor_tokens_per_s']:.0f}  s/step {r['step_s']:.3f}  "
              f"sync {r['sync_s']:.3f}  gen wait {r['gen_wait_s']:.3f}  to reward {r['time_to_reward_s']:.1f} s  "
              f"mixed {r['mixed_version_frac']:.3f}  learner wait {r['learner_wait_frac']:.1%}"
              f" (overhead {r['overhead_frac']:.1%})")
    path = Path(args.json) if args.json else work / "load_modes.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"settings": {**vars(args), "variants": variants, "compare_args": rest},
                                "target_reward": target,
                                "table": table, "runs": runs}, indent=1))
    print(f"load_modes: wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
