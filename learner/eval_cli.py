"""``python -m learner.evaluate --config C --adapter A [--adapter B ...] [--base] [--out DIR]``: adapters side by side.

The config's eval, exactly as a run computes it (:func:`learner.evaluate.evaluate`, the trainer's own eval: the same
task-stratified subset of ``data.eval_pairs``, ``eval.samples`` completions per prompt at ``eval.temperature`` with the
same seeds, the same reward), through a real actor: one ``python -m actor`` process (vLLM) started with the config's
actor settings, to which each candidate is published as a weight version like a run's (the same wire, merge or
adapter serving, readback and acknowledgement). ``--base`` is the base model (a LoRA whose B is zero: the run's
version 0, whose eval is the run's step-0 eval). So the numbers for a run's adapter agree with that run's
``metrics.jsonl`` at the step the adapter was saved, when evaluated with the run's ``config.yaml``.

Prints one table, every candidate side by side: ``eval/mean_reward``, each task and each reward component, each
candidate's change from the first one with its noise: twice the standard error of the mean of the per-prompt
differences (the candidates answer the same prompts with the same seeds, so the difference is paired). Writes
``DIR/evaluate.json`` (every metric, every difference, the per-prompt scores) and the actor's log in ``DIR/logs/``.

Exit codes: 0 done; 1 the actor or the sync failed (one line; its log is named); 2 bad input (one line): an invalid
config, no candidate, an adapter directory that is not a PEFT adapter or was trained on another base model, a base
model or eval pairs that cannot be found.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path


class EvalError(ValueError):
    """Bad input: one line, exit 2."""


@dataclass
class Candidate:
    name: str
    path: Path | None           # None: the base model
    version: int = 0
    metrics: dict = field(default_factory=dict)
    prompts: list[dict] = field(default_factory=list)   # per eval prompt: task, score, components


def parse_args(argv=None) -> argparse.Namespace:
    from configs.__main__ import add_config_args

    p = argparse.ArgumentParser(prog="python -m learner.evaluate",
                                description="The config's eval, as a run computes it, for adapters side by side "
                                            "through a real actor (vLLM): a table with the noise of each change, and "
                                            "JSON.",
                                epilog="Exit codes: 0 done, 1 the actor or the sync failed, 2 bad input.")
    add_config_args(p)
    p.add_argument("--adapter", action="append", default=[], metavar="[NAME=]DIR",
                   help="a PEFT adapter directory (a run's adapter/, best/, checkpoints/step-N/adapter or an export); "
                        "repeatable, evaluated in order")
    p.add_argument("--base", action="store_true", help="the base model too (first column)")
    p.add_argument("--out", type=Path, default=None, metavar="DIR",
                   help="where evaluate.json and the actor's log go (default runs/evaluate-<config stem>, or "
                        "runs/evaluate-<run> for a run's config.yaml)")
    p.add_argument("--start-timeout", type=float, default=900.0, help="seconds for the actor's engine to start")
    return p.parse_args(argv)


def candidates(args) -> list[Candidate]:
    out = [Candidate("base", None)] if args.base else []
    for spec in args.adapter:
        name, _, path = spec.rpartition("=") if "=" in spec and not Path(spec).exists() else ("", "", spec)
        d = Path(path)
        if not (d / "adapter_config.json").is_file() or not (d / "adapter_model.safetensors").is_file():
            raise EvalError(f"--adapter {spec}: not a PEFT adapter directory (adapter_config.json and "
                            "adapter_model.safetensors)")
        out.append(Candidate(name or path, d))
    if not out:
        raise EvalError("nothing to evaluate: give --adapter DIR (repeatable) and/or --base")
    names = [c.name for c in out]
    if len(set(names)) != len(names):
        raise EvalError(f"two candidates are named {next(n for n in names if names.count(n) > 1)}: NAME=DIR names them")
    return out


def same_model(a: str, b: str) -> bool:
    pa, pb = Path(a), Path(b)
    if pa.exists() and pb.exists():
        return pa.resolve() == pb.resolve()
    return a.rstrip("/") == b.rstrip("/")


def check(cfg, cands: list[Candidate]) -> None:
    from commerce.sources import problem as source_problem
    from learner.__main__ import model_problem

    why = model_problem(str(cfg.model_id))
    if why:
        raise EvalError(why)
    why = source_problem(cfg.data.eval_pairs)
    if why:
        raise EvalError(f"eval pairs not found: {cfg.data.eval_pairs}" if why[0] else f"eval pairs: {why[1]}")
    for c in cands:
        if c.path is None:
            continue
        conf = json.loads((c.path / "adapter_config.json").read_text())
        base = conf.get("base_model_name_or_path")
        if base and not same_model(base, str(cfg.model_id)):
            raise EvalError(f"--adapter {c.path} was trained on {base}, the config evaluates {cfg.model_id} "
                            f"(--set model_id={base})")


def eval_config(args, tmp: Path, lora_r: int):
    """The config as given, on a private ipc directory of its own with one actor."""
    from configs import load_config

    over = [*args.overrides, f"sync.ipc_dir={tmp}", "sync.transport=ipc", "sync.host=127.0.0.1", "actor.replicas=1",
            "sync.weight_transfer=auto", f"lora_r={lora_r}"]
    return load_config(args.config, over)


def adapter_version(c: Candidate, template: Candidate | None, cfg):
    """(tensors, adapter_config) to publish for ``c``: its adapter, or for the base a copy of another candidate's with
    every B zero (the delta is exactly 0), or a fresh LoRA (B = 0) built on the model when there is no other."""
    from safetensors.torch import load_file

    if c.path is not None:
        return load_file(str(c.path / "adapter_model.safetensors")), json.loads(
            (c.path / "adapter_config.json").read_text())
    if template is not None:
        tensors, conf = adapter_version(template, None, cfg)
        return {k: (v.zero_() if ".lora_B." in k else v) for k, v in tensors.items()}, conf
    import torch

    from learner.engine import adapter_config_dict, build_peft_model, lora_state_dict

    model = build_peft_model(str(cfg.model_id), lora_r=cfg.lora_r, lora_alpha=cfg.lora_alpha, dtype=torch.float32,
                             seed=cfg.seed)
    return lora_state_dict(model), adapter_config_dict(model)


class Session:
    """What :func:`learner.evaluate.evaluate` reads of a trainer (``cfg``, ``eval_items``, ``rollout_version``,
    ``step``, ``best``, ``broker``, ``reward_fn``, ``log``, ``_request``), for one candidate at a time."""

    def __init__(self, cfg, broker, items, reward_fn, bar):
        self.cfg, self.broker, self.eval_items, self.reward_fn, self.bar = cfg, broker, items, reward_fn, bar
        self.rollout_version, self.step, self.best = 0, 0, None
        self.log = self
        self.groups: list = []

    def write(self, line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    def _request(self, kind, items, n, temperature, max_tokens, seed, tag, min_version, **kw) -> str:
        from learner.rollouts import rollout_request

        # the request id carries the candidate's version (its own; the seeds are the run's, which do not depend on it)
        req = rollout_request(self.cfg, kind, items, n, temperature, max_tokens, seed,
                              f"{kind}-v{self.rollout_version}-{tag}", min_version, self.step, **kw)
        self.broker.submit(req, items)
        return req.request_id


class ProgressBroker:
    """The run's :class:`learner.evaluate.Broker`, waited on one request at a time so a progress bar can follow; the
    groups each wait hands out are kept (one list per wait: the eval's passes, the main one first) for the per-prompt
    scores."""

    def __init__(self, broker, bar, keep: list):
        self.inner, self.bar, self.keep = broker, bar, keep

    def submit(self, req, items) -> None:
        self.inner.submit(req, items)

    def wait(self, ids):
        out, waited, toks, gen = [], 0.0, 0.0, 0.0
        for i in ids:
            got, w, t, g = self.inner.wait([i])
            out += got
            waited, toks, gen = waited + w, toks + t, gen + g
            if self.bar is not None:
                self.bar.update(1)
        self.keep.append(out)
        return out, waited, toks, gen


def prompt_scores(groups, reward_fn, samples: int) -> list[dict]:
    """Per eval prompt, in order: its task, its score (the mean of its ``samples`` completions; a missing one counts 0)
    and its components' means, scored as :func:`learner.evaluate.evaluate` scores them (a tool episode on its final
    answer with the episode's columns; the CLI checks that their means are its metrics)."""
    from learner.episodes import answer

    out = []
    for grp, items in groups:
        flat = [(k, c) for k, res in enumerate(grp.results[: len(items)]) for c in res.completions]
        rows = [{"task": it.task, "score": 0.0, "components": {}} for it in items]
        if flat:
            keys = {key for k, _ in flat for key in items[k].columns}
            cols = {key: [items[k].columns.get(key) for k, _ in flat] for key in sorted(keys)}
            for key in {key for _, c in flat for key in c.columns()}:  # a tool episode's own columns
                cols[key] = [c.columns().get(key) for _, c in flat]
            texts, prompts = [answer(c) for _, c in flat], [items[k].messages for k, _ in flat]
            scored = reward_fn.score(texts, prompts=prompts, **cols) if hasattr(reward_fn, "score") else None
            got = [s.reward for s in scored] if scored is not None else reward_fn(texts, prompts=prompts, **cols)
            comps: dict[tuple[int, str], list[float]] = {}
            for j, ((k, _), r) in enumerate(zip(flat, got, strict=True)):
                rows[k]["score"] += (float(r) if r is not None and math.isfinite(r) else 0.0) / samples
                for name, v in (scored[j].components.items() if scored is not None else ()):
                    comps.setdefault((k, f"{scored[j].task}/{name}"), []).append(float(v))
            for (k, key), vals in comps.items():
                rows[k]["components"][key] = sum(vals) / len(vals)
        out += rows
    return out


def paired(a: list[dict], b: list[dict], key: str | None, task: str | None) -> tuple[float, float, int] | None:
    """(mean of b - a, twice its standard error, prompts) over the prompts both scored for ``key`` (a component, or the
    score of ``task``'s prompts, or of all when both are None)."""
    d = []
    for x, y in zip(a, b, strict=True):
        if key is None:
            if task is None or x["task"] == task:
                d.append(y["score"] - x["score"])
        elif key in x["components"] and key in y["components"]:
            d.append(y["components"][key] - x["components"][key])
    if not d:
        return None
    mean = sum(d) / len(d)
    se = math.sqrt(sum((v - mean) ** 2 for v in d) / (len(d) - 1) / len(d)) if len(d) > 1 else 0.0
    return mean, 2 * se, len(d)


def rows_of(cands: list[Candidate]) -> list[tuple[str, str | None, str | None]]:
    """(label, component key, task) of every table row: the mean, each task, then its components."""
    first = cands[0].metrics
    tasks = sorted({p["task"] for p in cands[0].prompts}, key=lambda t: (f"eval/{t}" not in first, t))
    out: list[tuple[str, str | None, str | None]] = [("mean_reward", None, None)]
    for t in tasks:
        out.append((t, None, t))
        keys = sorted({k for c in cands for p in c.prompts for k in p["components"] if k.startswith(f"{t}/")})
        out += [(f"  {k}", k, None) for k in keys]
    return out


def table(cands: list[Candidate]) -> tuple[str, list[dict]]:
    """The side-by-side table and the list of differences (each candidate against the first)."""
    ref = cands[0]
    head = ["metric", ref.name] + [f"{c.name} (change, noise)" for c in cands[1:]]
    lines, diffs = [], []
    for label, key, task in rows_of(cands):
        metric = f"eval/{key or task or 'mean_reward'}"
        cells = [label]
        for i, c in enumerate(cands):
            v = c.metrics.get(metric)
            cell = f"{v:.3f}" if isinstance(v, (int, float)) else "-"
            if i:
                pd = paired(ref.prompts, c.prompts, key, task)
                if pd is not None:
                    cell += f" ({pd[0]:+.3f} ± {pd[1]:.3f})"
                    diffs.append({"metric": metric, "candidate": c.name, "against": ref.name, "change": pd[0],
                                  "noise_2se": pd[1], "prompts": pd[2], "beyond_noise": abs(pd[0]) > pd[1]})
            cells.append(cell)
        lines.append(cells)
    widths = [max(len(r[i]) for r in [head, *lines]) for i in range(len(head))]

    def fmt(r: list[str]) -> str:
        return "  ".join(x.ljust(w) if i == 0 else x.rjust(w) for i, (x, w) in enumerate(zip(r, widths, strict=True)))

    text = "\n".join([fmt(head), "  ".join("-" * w for w in widths), *map(fmt, lines)])
    return text, diffs


def main(argv=None) -> int:
    args = parse_args(argv)
    from configs import ConfigError, load_config

    try:
        cands = candidates(args)
        cfg = load_config(args.config, args.overrides)
        check(cfg, cands)
    except ConfigError as e:
        print(f"evaluate: invalid config: {e}", file=sys.stderr)
        return 2
    except EvalError as e:
        print(f"evaluate: {e}", file=sys.stderr)
        return 2
    from configs import private_run_dir
    from configs.schema import VLLM_LORA_RANKS

    conf = Path(args.config)  # a run's config.yaml is named after its run: runs/demo/config.yaml -> runs/evaluate-demo
    out = args.out or Path("runs") / f"evaluate-{conf.parent.name if conf.name == 'config.yaml' else conf.stem}"
    private_run_dir(out)
    ranks = [int(json.loads((c.path / "adapter_config.json").read_text()).get("r", 0)) for c in cands if c.path]
    r = max([cfg.lora_r, *ranks])
    lora_r = next((s for s in VLLM_LORA_RANKS if s >= r), r)
    with tempfile.TemporaryDirectory(prefix="tucano2-eval-") as tmp:
        os.chmod(tmp, 0o700)
        cfg = eval_config(args, Path(tmp), lora_r)
        try:
            return run(args, cfg, cands, out, Path(tmp))
        except EvalError as e:
            print(f"evaluate: {e}", file=sys.stderr)
            return 2
        except RuntimeError as e:  # the actor or the sync: one line, the log named
            print(f"evaluate: {e} (actor log: {out / 'logs' / 'actor-0.log'})", file=sys.stderr)
            return 1


def run(args, cfg, cands: list[Candidate], out: Path, tmp: Path) -> int:
    from configs.loader import dump_config
    from learner.__main__ import _transports, wait_for_actors
    from learner.acks import AckWatch
    from learner.data import load_items, make_reward_fn, stratified_subset
    from learner.evaluate import Broker, LearnerError, evaluate
    from sync.limits import MAX_PROMPTS_PER_REQUEST

    every = load_items(cfg.data.eval_pairs, cfg.data.tasks, custom_tasks=tuple(cfg.rewards.custom))
    items = stratified_subset(every, cfg.eval.subset_size, cfg.seed)
    if not items:
        raise EvalError(f"{cfg.data.eval_pairs}: no eval pairs of data.tasks {', '.join(cfg.data.tasks)}")
    reward_fn = make_reward_fn(cfg)
    conf_path = tmp / "config.yaml"
    conf_path.write_text(dump_config(cfg))
    (out / "logs").mkdir(parents=True, exist_ok=True)
    log = open(out / "logs" / "actor-0.log", "w")  # noqa: SIM115 - closed below
    transport, publisher = _transports(cfg, "zmq")
    actor = subprocess.Popen([sys.executable, "-m", "actor", "--config", str(conf_path), "--replica", "0",
                              "--actor-id", "eval-a0"], stdout=log, stderr=subprocess.STDOUT,
                             stdin=subprocess.DEVNULL, start_new_session=True)
    t0 = time.time()
    try:
        print(f"evaluate: {len(items)} eval prompts x {cfg.eval.samples} at temperature {cfg.eval.temperature} "
              f"(seed {cfg.seed}) for {len(cands)} candidate(s); starting the actor", flush=True)
        try:
            wait_for_actors(publisher, 1, args.start_timeout, 1)
        except LearnerError as e:
            raise RuntimeError(f"the actor did not start: {e}") from None
        acks = AckWatch(publisher, cfg.sync, lambda line: print(line, file=sys.stderr, flush=True))
        single = [it for it in items if it.task in cfg.tools] if cfg.episode.eval_single_turn else []
        chunks = math.ceil(len(items) / MAX_PROMPTS_PER_REQUEST) + math.ceil(len(single) / MAX_PROMPTS_PER_REQUEST)
        from tqdm.auto import tqdm

        bar = tqdm(total=chunks * len(cands), desc="evaluate", unit="request", file=sys.stderr,
                   disable=os.environ.get("TUCANO2_NO_PROGRESS") == "1")
        broker = Broker(transport, cfg.sync.request_timeout_s * 3)
        template = next((c for c in cands if c.path is not None), None)
        for v, c in enumerate(cands):
            c.version = v
            bar.set_postfix_str(c.name[-40:])
            tensors, conf = adapter_version(c, template, cfg)
            publisher.publish(v, tensors, conf)
            acks.published(v)
            reason = acks.wait(v)
            if reason:
                raise RuntimeError(f"{c.name}: {reason}")
            session = Session(cfg, None, items, reward_fn, bar)
            session.broker = ProgressBroker(broker, bar, session.groups)
            session.rollout_version = session.step = v
            m = evaluate(session)
            c.metrics = {k: v for k, v in m.items() if not k.startswith("_") and k.startswith("eval")}
            c.metrics.pop("eval/best_mean_reward", None)
            c.metrics.pop("eval/best_step", None)
            c.prompts = prompt_scores(session.groups[0], reward_fn, cfg.eval.samples)   # the main pass
            agree(c)
        bar.close()
    finally:
        transport.close()
        publisher.close()
        try:
            actor.wait(timeout=60)
        except subprocess.TimeoutExpired:
            actor.kill()
            actor.wait()
        log.close()
    text, diffs = table(cands)
    print(text)
    result = {
        "config": str(args.config), "overrides": args.overrides, "model_id": str(cfg.model_id),
        "eval": {"prompts": len(items), "samples": cfg.eval.samples, "temperature": cfg.eval.temperature,
                 "seed": cfg.seed, "subset_size": cfg.eval.subset_size, "eval_pairs": str(cfg.data.eval_pairs)},
        "candidates": [{"name": c.name, "path": None if c.path is None else str(c.path), "version": c.version,
                        "metrics": c.metrics, "prompts": c.prompts} for c in cands],
        "differences": diffs,
        "seconds": round(time.time() - t0, 1),
    }
    (out / "evaluate.json").write_text(json.dumps(result, indent=1))
    print(f"evaluate: wrote {out / 'evaluate.json'} ({time.time() - t0:.0f} s)")
    return 0


def agree(c: Candidate) -> None:
    """The per-prompt scores must give the eval's own means (they pair the differences): else an internal error."""
    by: dict[str, list[float]] = {}
    for p in c.prompts:
        by.setdefault(p["task"], []).append(p["score"])
    for t, v in by.items():
        want = c.metrics.get(f"eval/{t}")
        if want is not None and abs(sum(v) / len(v) - want) > 1e-9:
            raise RuntimeError(f"{c.name}: per-prompt scores give {t} {sum(v) / len(v):.6f}, the eval {want:.6f}")
