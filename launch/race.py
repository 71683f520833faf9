"""The arithmetic of ``python -m launch.compare``: moving averages, the finish line, time to reach it, and the
median and spread over seeds.

The race, per seed (both systems of a pair trained on the same prompts in the same order under that seed):
each system's train reward per step, smoothed by a trailing moving average of ``window`` steps, against its
cumulative step wall-clock (set-up is apart, ``setup_s``). The finish line of ours against a peer under a seed
is the lower of the two final moving averages, so both reach it; the time to reach it is the cumulative
wall-clock of the first step whose moving average is at or above it, and the ratio is the peer's time over ours.
Over seeds: the median, and the spread as min and max. One lucky early reward moves one seed's finish line, so the
race is also run on the seed-averaged curves (:func:`mean_curve`, :func:`averaged_races`): per step the mean over
seeds of the cumulative wall-clock and of the moving average (and its standard deviation over seeds, the spread);
the finish line is the lower of the two averaged curves' final values.
"""

from __future__ import annotations

import math
import statistics


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


def spread(values: list[float | None]) -> dict:
    """Median, min and max of the values that are numbers (``n``: how many).

    >>> spread([3.0, None, 1.0, 2.0])
    {'median': 2.0, 'min': 1.0, 'max': 3.0, 'n': 3}
    """
    v = [x for x in values if isinstance(x, (int, float)) and math.isfinite(x)]
    if not v:
        return {"median": None, "min": None, "max": None, "n": 0}
    return {"median": statistics.median(v), "min": min(v), "max": max(v), "n": len(v)}


def summarize(name: str, seed: int, rows: list[dict], window: int, note: str = "") -> dict:
    """One system's result under one seed: medians of the per-step times (the first step left out), the
    reward's moving average first and last, and the curve."""
    steady = rows[1:] if len(rows) > 1 else rows

    def median(key):
        vals = [r[key] for r in steady if isinstance(r.get(key), (int, float))]
        return statistics.median(vals) if vals else float("nan")

    curve = race(rows, window)
    return {"system": name, "seed": seed, "steps": len(rows), "step_s": median("step_s"),
            "generation_s": median("generation_s"), "train_s": median("train_s"), "sync_s": median("sync_s"),
            "total_s": curve["clock_s"][-1] if rows else float("nan"),
            "reward": statistics.fmean([r.get("reward", 0.0) for r in rows]) if rows else float("nan"),
            "reward_first": curve["ma"][window - 1] if len(rows) >= window else float("nan"),
            "reward_final": curve["ma"][-1] if rows else float("nan"),
            "note": note, "rows": rows, "curve": curve}


def pair(ours: dict, peer: dict) -> dict:
    """Ours against a peer under one seed: the finish line (the lower final moving average), each one's time to
    it, and the ratio (peer / ours: how many times sooner ours got there)."""
    target = min(ours["reward_final"], peer["reward_final"])
    t_ours, t_peer = time_to(ours["curve"], target), time_to(peer["curve"], target)
    return {"seed": ours["seed"], "target": target, "time_ours_s": t_ours, "time_peer_s": t_peer,
            "ratio": t_peer / t_ours if t_ours and t_peer else None,
            "step_speedup": peer["step_s"] / ours["step_s"] if ours["step_s"] else None}


def races(results: list[dict], peers: tuple[str, ...]) -> dict:
    """Per peer: every seed's :func:`pair` and the median and spread over seeds of the times and the ratio."""
    ours = {r["seed"]: r for r in results if r["system"] == "ours"}
    out = {}
    for peer in peers:
        pairs = [pair(ours[r["seed"]], r) for r in results if r["system"] == peer and r["seed"] in ours]
        if not pairs:
            continue
        out[peer] = {"per_seed": pairs, **{k: spread([p[k] for p in pairs])
                                          for k in ("ratio", "time_ours_s", "time_peer_s", "target", "step_speedup")}}
    return out


def mean_curve(results: list[dict]) -> dict:
    """One system's seed-averaged curve: per step (up to the shortest run) the mean cumulative wall-clock, the mean
    moving average and its standard deviation over seeds.

    >>> c = mean_curve([{"curve": {"clock_s": [1.0, 2.0], "ma": [0.0, 0.2]}},
    ...                 {"curve": {"clock_s": [3.0, 4.0, 5.0], "ma": [0.2, 0.4, 0.5]}}])
    >>> c["clock_s"], [round(x, 3) for x in c["ma"]], [round(x, 3) for x in c["ma_sd"]], c["seeds"]
    ([2.0, 3.0], [0.1, 0.3], [0.141, 0.141], 2)
    """
    n = min(len(r["curve"]["clock_s"]) for r in results)
    col = lambda key, i: [r["curve"][key][i] for r in results]  # noqa: E731
    return {"clock_s": [statistics.fmean(col("clock_s", i)) for i in range(n)],
            "ma": [statistics.fmean(col("ma", i)) for i in range(n)],
            "ma_sd": [statistics.stdev(col("ma", i)) if len(results) > 1 else 0.0 for i in range(n)],
            "seeds": len(results)}


def averaged_races(results: list[dict], peers: tuple[str, ...]) -> dict:
    """Per peer, the race on the seed-averaged curves (the seeds both ran): the finish line, each one's time to it,
    the ratio, and the spread over seeds of the reward at the finish (``target_sd``: the larger of the two)."""
    out = {}
    ours_all = {r["seed"]: r for r in results if r["system"] == "ours"}
    for peer in peers:
        theirs = {r["seed"]: r for r in results if r["system"] == peer and r["seed"] in ours_all}
        if not theirs:
            continue
        a = mean_curve([ours_all[s] for s in theirs])
        b = mean_curve(list(theirs.values()))
        target = min(a["ma"][-1], b["ma"][-1])
        t_a, t_b = time_to(a, target), time_to(b, target)
        out[peer] = {"seeds": sorted(theirs), "target": target, "target_sd": max(a["ma_sd"][-1], b["ma_sd"][-1]),
                     "time_ours_s": t_a, "time_peer_s": t_b, "ratio": t_b / t_a if t_a and t_b else None,
                     "curves": {"ours": a, peer: b}}
    return out


def per_system(results: list[dict]) -> dict:
    """Per system: median and spread over seeds of step time, set-up, reward and training wall-clock."""
    out: dict = {}
    for name in dict.fromkeys(r["system"] for r in results):
        mine = [r for r in results if r["system"] == name]
        out[name] = {k: spread([r.get(k) for r in mine])
                     for k in ("step_s", "setup_s", "total_s", "reward_first", "reward_final")}
        out[name]["seeds"] = [r["seed"] for r in mine]
    return out


def fmt(s: dict, digits: int = 1) -> str:
    """``median [min-max]`` of a :func:`spread`; ``-`` when empty.

    >>> fmt({'median': 2.0, 'min': 1.0, 'max': 3.5, 'n': 3})
    '2.0 [1.0-3.5]'
    """
    if not s or s.get("median") is None:
        return "-"
    if s["n"] == 1:
        return f"{s['median']:.{digits}f}"
    return f"{s['median']:.{digits}f} [{s['min']:.{digits}f}-{s['max']:.{digits}f}]"
