"""``actor.bench``'s tools row (``python -m actor.bench --config F --only tools``): a tool task's prompts rolled out
with tools and without, on one engine.

One :class:`actor.engine.RolloutEngine` on the config's settings (its ``tools`` and ``episode`` sections; the LoRA
adapter loaded), the prompts of the config's first tool task from its train pairs. Each round sends the same request
twice, as single-turn completions (``max_turns`` 1: today's request) and as tool episodes (``episode.max_turns``),
the order alternating, after a warm-up of each. As in the other rows, EOS is ignored (``ignore_eos``), so a
single-turn completion and an episode both run to ``max_completion_length`` (an episode's turns end at a tool's
closing tag, its observations take part of the budget): the same work, and what is compared is the sampled tokens
per second (an observation's tokens are not generated: prefilled with the next turn) and what the tools cost:

* ``tool_s``: the calls' seconds, queued to answered, summed over the episodes (they overlap generation);
* ``idle_s``: seconds the engine had nothing to step because every running sequence was waiting on a call (the
  overlap that failed; ``actor.episodes.EpisodeRunner.wait_idle``), and ``idle_frac``, its share of the request's time.
"""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path


def tool_prompts(cfg, n: int) -> tuple[str, list]:
    """``(task, n prompts)`` of the config's first tool task, from its train pairs."""
    task = next(iter(cfg.tools))
    out = []
    with Path(cfg.data.train_pairs).open() as f:
        for line in f:
            row = json.loads(line)
            if row.get("task") == task:
                out.append(row["prompt"])
                if len(out) == n:
                    break
    if not out:
        raise ValueError(f"no {task} prompt in {cfg.data.train_pairs}")
    return task, out


def run_tools(cfg, n_prompts: int, g: int, tokens: int, repeats: int, adapter_dir, tick) -> dict[str, dict]:
    """The ``single-turn`` and ``tools`` rows (see the module docstring)."""
    from actor.engine import RolloutEngine
    from sync.wire import SamplingSpec

    task, prompts = tool_prompts(cfg, n_prompts)
    eng = RolloutEngine(cfg, delete_retired=False)  # the adapter directory stays the bench's
    rows: dict[str, dict] = {"single-turn": {"lat": [], "tok": [], "idle": [], "tool": [], "turns": []},
                             "tools": {"lat": [], "tok": [], "idle": [], "tool": [], "turns": []}}
    try:
        eng.load_adapter(0, adapter_dir)
        for i in range(repeats + 1):
            order = ["single-turn", "tools"] if i % 2 == 0 else ["tools", "single-turn"]
            for name in order:
                turns = 1 if name == "single-turn" else cfg.episode.max_turns
                idle0 = eng.episodes.idle_s if eng.episodes is not None else 0.0
                t0 = time.perf_counter()
                results, stats = eng.generate(prompts, SamplingSpec(g, cfg.temperature, cfg.actor.top_p, tokens,
                                                                    1000 + i), ignore_eos=True,
                                              tasks=[task] * len(prompts), max_turns=turns)
                dt = time.perf_counter() - t0
                if i:  # the first round warms up
                    r = rows[name]
                    r["lat"].append(dt)
                    r["tok"].append(stats["gen_tokens"])
                    r["idle"].append((eng.episodes.idle_s if eng.episodes is not None else 0.0) - idle0)
                    r["tool"].append(stats.get("tool_s", 0.0))
                    eps = [c.episode for res in results for c in res.completions]
                    r["turns"] += [e.turns if e is not None else 1 for e in eps]
                    r["calls"] = r.get("calls", []) + [e.tool_calls if e is not None else 0 for e in eps]
                tick()
    finally:
        eng.close()
    out = {}
    for name, r in rows.items():
        total = sum(r["lat"])
        out[name] = {"contender": name, "requests": len(r["lat"]), "rollouts_per_s": len(prompts) * g * len(r["lat"])
                     / total, "tokens_per_s": sum(r["tok"]) / total, "p50_latency_s": statistics.median(r["lat"]),
                     "p95_latency_s": max(r["lat"]), "idle_s": sum(r["idle"]), "idle_frac": sum(r["idle"]) / total,
                     "tool_s": sum(r["tool"]), "turns_per_episode": statistics.mean(r["turns"]),
                     "calls_per_episode": statistics.mean(r.get("calls", [0]))}
    out["tools"]["ratio_vs_single_turn"] = out["tools"]["tokens_per_s"] / out["single-turn"]["tokens_per_s"]
    return out


def describe(rows: dict[str, dict]) -> str:
    t = rows["tools"]
    return (f"tools vs single-turn: sampled tokens/s x{t['ratio_vs_single_turn']:.3f}; "
            f"{t['turns_per_episode']:.2f} turns and {t['calls_per_episode']:.2f} calls per episode; calls "
            f"{t['tool_s']:.2f} s in all (beside generation), engine idle waiting on them {t['idle_s']:.3f} s "
            f"({100 * t['idle_frac']:.2f}% of the time)")
