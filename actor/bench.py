"""Rollout benchmark: ``python -m actor.bench [--config FILE] [--json FILE] [--repeats N]``.

Measures rollouts/s, generated tokens/s and p50/p95 request latency for G samples per prompt at the
config's lengths, with a random non-zero LoRA adapter active, for three contenders on the same cores
(no EngineCore process outlives its contender):

- ``hf``: Hugging Face ``generate`` with the same adapter through PEFT, on the same prompts and
  sampling settings (what TRL does without vLLM);
- ``vllm_raw``: ``vllm.LLM.generate`` on the actor's own engine settings (``RolloutEngine``'s engine,
  adapter loaded in the configured serve mode), called directly: the ceiling for our server;
- ``actor``: ``python -m actor`` serving over real ZeroMQ through sync, the adapter published with
  ``ZmqWeightPublisher``, requests sent with ``ZmqRolloutTransport`` from this process.

Every completion is forced to exactly ``max_tokens`` (``ignore_eos`` in vLLM, ``min_new_tokens`` in HF)
so token counts are equal. One request = all prompts x G samples; each contender does a warm-up
request, then ``--repeats`` timed ones. ``hf`` runs alone first. ``vllm_raw`` and ``actor`` run paired: both
engines up (each idle while the other works), their requests taking turns, the order alternating each round
and 1.5 s apart (vLLM's worker busy-waits 1 s after its last step, OpenMP 0.2 s), so both meet the same
machine (on a shared box the load drifts over minutes, and one after the other measured ratios from 0.82 to
1.08 for the same code); ``ratio_vs_raw_vllm`` is the median over the rounds of the actor's tokens/s over raw
vLLM's in the same round (``--sequential``: one after the other, the ratio of their totals). ``engine p50 s``:
the actor's own time from admitting a request to its last token.
``--only tools`` (a config with ``tools``): the tools row, rollouts of a tool task's prompts with tools and without on
one engine, and how long the engine sat idle waiting on the calls (``actor.tools_bench``).
Without ``--config`` an offline bench-size model is built
(``zoo`` shape ``bench``, ~22M parameters) and the workload is 2 prompts x 16 samples x 128 tokens.
On a GPU node the same command, with the run's config, is the rollout benchmark.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
# The environment as the bench started: an in-process vLLM engine edits os.environ (LD_PRELOAD of
# OpenMP/tcmalloc, thread binding) for its own children; the actor process must not inherit that.
CLEAN_ENV = dict(os.environ)
FALLBACK_PROMPTS = [
    "Extraia em JSON o sentimento desta avaliação: 'O produto chegou antes do prazo, muito bem embalado.'",
    "Escreva uma notificação push de até 120 caracteres para um cliente que comprou cama_mesa_banho.",
    "Liste três ações estratégicas para reduzir atrasos de entrega no Sudeste.",
    "Qual a consulta SQL que conta pedidos por estado em orders_enriched?",
]


def parse_args(argv=None):
    from configs.__main__ import add_config_args

    p = argparse.ArgumentParser(prog="python -m actor.bench", description=__doc__.splitlines()[0])
    add_config_args(p, required=False)
    p.add_argument("--json", type=Path, default=None, help="write the results here")
    p.add_argument("--model-dir", type=Path, default=REPO / "models" / "bench",
                   help="where the offline bench model is built without --config")
    p.add_argument("--prompts", type=int, default=None, help="prompts per request (default: config's)")
    p.add_argument("--samples", type=int, default=None, help="G (default: config's num_generations)")
    p.add_argument("--tokens", type=int, default=None, help="tokens per completion (default: config's)")
    p.add_argument("--repeats", type=int, default=3, help="timed requests per contender after a warm-up")
    p.add_argument("--only", default="hf,vllm_raw,actor",
                   help="contenders to run, comma-separated (and tools: the tools row, a config with tools)")
    p.add_argument("--dtypes", default=None,
                   help="engine dtypes to compare side by side, e.g. float32,bfloat16 (default: the config's)")
    p.add_argument("--serve-modes", default=None,
                   help="serve modes to compare side by side, e.g. merged,adapter (default: the config's)")
    p.add_argument("--sequential", dest="paired", action="store_false",
                   help="run vllm_raw and actor one after the other (default: both engines up, their requests "
                        "taking turns, so both see the same machine; the ratio is the median of the rounds')")
    p.add_argument("--profile", type=Path, default=None,
                   help="directory for a cProfile of each actor process's serve loop (actor-<n>.prof)")
    return p.parse_args(argv)


def bench_config(args):
    from configs.loader import load_config

    if args.config:
        cfg = load_config(args.config, args.overrides)
    else:
        from zoo import ensure_model

        model = ensure_model(args.model_dir, shape="bench")
        cfg = load_config(REPO / "configs" / "smoke_cpu.yaml",
                          [f"model_id={model}", "num_generations=16", "max_completion_length=128",
                           "prompts_per_step=2", "actor.kv_cache_gb=0.5", "actor.max_num_seqs=256",
                           f"run_dir={tempfile.gettempdir()}/actor-bench", *args.overrides])
    return cfg


def load_prompts(cfg, n: int, from_data: bool) -> list[list[dict]]:
    """The first ``n`` training prompts of the config's pair file (``from_data``), else short fixed ones."""
    path = Path(cfg.data.train_pairs)
    prompts = []
    if from_data and path.is_file():
        with path.open() as f:
            for line in f:
                prompts.append(json.loads(line)["prompt"])
                if len(prompts) == n:
                    break
    while len(prompts) < n:
        prompts.append([{"role": "user", "content": FALLBACK_PROMPTS[len(prompts) % len(FALLBACK_PROMPTS)]}])
    return prompts


def prompt_lengths(cfg, prompts) -> list[int]:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(cfg.model_id))
    return [len(tok(tok.apply_chat_template(p, add_generation_prompt=True, tokenize=False),
                    add_special_tokens=False)["input_ids"]) for p in prompts]


def make_adapter(cfg, out: Path, seed: int = 0) -> Path:
    """A random non-zero LoRA adapter on every linear layer (PEFT format)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(cfg.model_id), dtype=torch.float32)
    peft = get_peft_model(model, LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, target_modules="all-linear",
                                            lora_dropout=0.0, task_type="CAUSAL_LM"))
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in peft.named_parameters():
            if "lora_" in name:
                p.copy_((torch.randn(p.shape, generator=gen) * 0.02).to(torch.bfloat16).float())
    peft.save_pretrained(out)
    del peft, model
    gc.collect()
    return out


def summarize(name: str, latencies: list[float], tokens: list[int], completions: int) -> dict:
    total = sum(latencies)
    lat = sorted(latencies)
    p95 = lat[min(len(lat) - 1, max(0, round(0.95 * len(lat) + 0.5) - 1))]
    return {"contender": name, "requests": len(latencies), "rollouts_per_s": completions * len(latencies) / total,
            "tokens_per_s": sum(tokens) / total, "p50_latency_s": statistics.median(lat), "p95_latency_s": p95}


# ---------------------------------------------------------------------------------------------- contenders


def run_hf(cfg, prompts, adapter_dir, g, tokens, repeats, tick) -> dict:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from configs.device import engine_dtype

    gpu = torch.cuda.is_available()
    dtype = getattr(torch, engine_dtype(cfg.actor.dtype, gpu))
    if not gpu:
        torch.set_num_threads(len(os.sched_getaffinity(0)))
    tok = AutoTokenizer.from_pretrained(str(cfg.model_id))
    tok.padding_side = "left"
    model = AutoModelForCausalLM.from_pretrained(str(cfg.model_id), dtype=dtype)
    model = PeftModel.from_pretrained(model, str(adapter_dir)).eval().to("cuda" if gpu else "cpu")
    texts = [tok.apply_chat_template(p, add_generation_prompt=True, tokenize=False) for p in prompts]
    batch = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(model.device)
    lat, toks = [], []
    for i in range(repeats + 1):
        torch.manual_seed(i)
        t0 = time.perf_counter()
        with torch.no_grad():
            out = model.generate(**batch, do_sample=True, temperature=cfg.temperature, top_p=cfg.actor.top_p,
                                 top_k=0, max_new_tokens=tokens, min_new_tokens=tokens, num_return_sequences=g,
                                 pad_token_id=tok.pad_token_id)
        if gpu:
            torch.cuda.synchronize()
        dt = time.perf_counter() - t0
        if i:
            lat.append(dt)
            toks.append(int((out.shape[1] - batch["input_ids"].shape[1]) * out.shape[0]))
        tick()
    del model
    gc.collect()
    if gpu:
        torch.cuda.empty_cache()
    return summarize("hf", lat, toks, len(prompts) * g)


def _tree_cpu(pids) -> float:
    """CPU seconds (user + system) used so far by the processes ``pids``."""
    import psutil

    total = 0.0
    for pid in pids:
        try:
            t = psutil.Process(pid).cpu_times()
            total += t.user + t.system
        except psutil.NoSuchProcess:
            pass
    return total


def _threads_cpu(native_ids) -> float:
    """CPU seconds used so far by these threads of this process."""
    import psutil

    by = {t.id: t.user_time + t.system_time for t in psutil.Process().threads()}
    return sum(by.get(i, 0.0) for i in native_ids)


class RawVllm:
    """``vllm.LLM.generate`` on the actor's own engine (``RolloutEngine``, adapter loaded), called directly."""

    name = "vllm_raw"

    def __init__(self, cfg, prompts, adapter_dir, g, tokens):
        from vllm.inputs import TokensPrompt

        from actor.engine import RolloutEngine

        self.cfg, self.g, self.tokens = cfg, g, tokens
        self.eng = RolloutEngine(cfg, delete_retired=False)
        try:
            import psutil

            self.pids = [*self.eng.engine_pids, *(c.pid for p in self.eng.engine_pids
                                                  for c in psutil.Process(p).children(recursive=True))]
            self.eng.load_adapter(1, adapter_dir)
            self.ids = [TokensPrompt(prompt_token_ids=self.eng.encode_prompt(p)) for p in prompts]
        except BaseException:
            self.eng.close()
            raise

    def request(self, i: int) -> tuple[float, int, float]:
        """One request of every prompt x G, seed ``1000 i``: (latency s, tokens, engine s)."""
        from sync import SamplingSpec

        spec = SamplingSpec(self.g, self.cfg.temperature, self.cfg.actor.top_p, self.tokens, 1000 * i)
        params = [self.eng.sampling_params(spec, j, ignore_eos=True) for j in range(len(self.ids))]  # the actor's
        t0 = time.perf_counter()
        outs = self.eng.llm.generate(self.ids, params, lora_request=self.eng._lora, use_tqdm=False)
        dt = time.perf_counter() - t0
        return dt, sum(len(c.token_ids) for o in outs for c in o.outputs), dt

    def cpu_s(self) -> float:
        """CPU seconds of its engine processes (EngineCore and workers); the driving thread is this one's."""
        return _tree_cpu(self.pids)

    def close(self) -> None:
        self.eng.close()


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ActorProcess:
    """``python -m actor`` serving over real ZeroMQ; the adapter published with ``ZmqWeightPublisher``, requests
    sent with ``ZmqRolloutTransport`` from this process."""

    name = "actor"

    def __init__(self, cfg, config_args, prompts, adapter_dir, g, tokens, log_path: Path, profile: Path | None = None):
        import psutil
        from safetensors.torch import load_file

        from sync.rollout import ZmqRolloutTransport
        from sync.weights import ZmqWeightPublisher

        self.cfg, self.prompts, self.g, self.tokens, self.log_path = cfg, prompts, g, tokens, log_path
        scfg = cfg.sync.model_copy(update={"host": "127.0.0.1", "rollout_port": _free_port(),
                                           "weight_port": _free_port(), "keys_dir": None})
        self.transport = ZmqRolloutTransport(scfg)
        self.publisher = ZmqWeightPublisher(scfg)
        cmd = [sys.executable, "-m", "actor", *config_args,
               "--set", f"sync.rollout_port={scfg.rollout_port}", "--set", f"sync.weight_port={scfg.weight_port}",
               "--set", "sync.host=127.0.0.1", "--set", "sync.connect_host=127.0.0.1", "--actor-id", "bench"]
        if profile is not None:
            cmd += ["--profile", str(profile)]
        with open(log_path, "w") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=REPO,
                                         env={**CLEAN_ENV, "PYTHONPATH": str(REPO)})
        self.kids: set[int] = set()
        try:
            deadline = time.monotonic() + 900
            while "bench" not in self.transport.actors():
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"actor did not come up (exit {self.proc.poll()}); see {log_path}")
                time.sleep(0.1)
            self.kids = {p.pid for p in psutil.Process(self.proc.pid).children(recursive=True)}
            tensors = load_file(str(adapter_dir / "adapter_model.safetensors"))
            config = json.loads((adapter_dir / "adapter_config.json").read_text())
            self.publisher.publish(1, tensors, config)
            self.publisher.wait_acks(1, 300)
        except BaseException:
            self.close()
            raise

    def request(self, i: int) -> tuple[float, int, float]:
        """(latency s, tokens, the actor's own engine time: ``RolloutGroup.timings["generate_s"]``)."""
        from sync import RolloutRequest, SamplingSpec

        req = RolloutRequest(uuid.uuid4().hex, self.prompts, SamplingSpec(self.g, self.cfg.temperature,
                                                                          self.cfg.actor.top_p, self.tokens, 1000 * i),
                             1, {"ignore_eos": True})
        t0 = time.perf_counter()
        self.transport.submit(req)
        grp = self.transport.receive(900)
        dt = time.perf_counter() - t0
        if grp is None:
            raise RuntimeError(f"no group from the actor within 900 s; see {self.log_path}")
        toks = sum(len(c.token_ids) for r in grp.results for c in r.completions)
        return dt, toks, float(grp.timings.get("generate_s", math.nan))

    def cpu_s(self) -> float:
        """CPU seconds of the actor process and its engine, and of the learner-side channel threads here."""
        return _tree_cpu([self.proc.pid, *self.kids]) + _threads_cpu(
            [self.transport._thread.native_id, self.publisher._thread.native_id])

    def close(self) -> None:
        from actor.runtime import reap

        self.transport.close(shutdown_actors=True, reason="bench done")
        self.publisher.close()
        try:
            self.proc.wait(120)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(30)
        left = reap(sorted(self.kids), timeout_s=10)
        if left:
            print(f"warning: actor processes {left} outlived the actor", file=sys.stderr)


def timed(contenders: list, repeats: int, tick, n_completions: int, gap_s: float = 0.0) -> dict[str, dict]:
    """A warm-up request each, then ``repeats`` timed ones, taking turns when there are several (the order
    alternates every round, ``gap_s`` apart so one engine's busy-waiting threads stop before the next runs).
    Each contender's summary; with several, ``paired_ratio`` of each to the first: the median over rounds of
    their tokens/s ratio within the round."""
    rows: dict[str, list] = {c.name: [] for c in contenders}
    idle = {c.name: [0.0, 0.0] for c in contenders}  # CPU s a contender used while another worked, that wall s
    for i in range(repeats + 1):
        order = contenders if i % 2 == 0 else contenders[::-1]
        for c in order:
            if gap_s:
                time.sleep(gap_s)
            others = [o for o in contenders if o is not c]
            cpu0 = [o.cpu_s() for o in others]
            dt, toks, engine_s = c.request(i)
            if i:
                rows[c.name].append((dt, toks, engine_s))
                for o, before in zip(others, cpu0, strict=True):
                    idle[o.name][0] += o.cpu_s() - before
                    idle[o.name][1] += dt
            tick()
    out = {}
    for c in contenders:
        r = rows[c.name]
        out[c.name] = summarize(c.name, [x[0] for x in r], [x[1] for x in r], n_completions)
        if c.name == "actor":
            # The actor's own time from admitting the request to its last token: the rest of the latency is the
            # channel, the serve loop before and after the engine, encoding and decoding.
            out[c.name]["engine_p50_s"] = statistics.median(x[2] for x in r)
        if idle[c.name][1]:
            # How much of a core this contender's processes (and threads) took, idle, while the other worked: what
            # the pairing costs the other one.
            out[c.name]["idle_cpu_frac"] = idle[c.name][0] / idle[c.name][1]
    base = contenders[0].name
    for c in contenders[1:]:
        ratios = [(b[1] / b[0]) / (a[1] / a[0]) for a, b in zip(rows[base], rows[c.name], strict=True)]
        out[c.name]["paired_ratio"] = statistics.median(ratios)
        out[c.name]["paired_ratios"] = ratios
    return out


# ---------------------------------------------------------------------------------------------- main


def table(results: dict[str, dict]) -> str:
    rows = [("contender", "rollouts/s", "tokens/s", "p50 s", "p95 s", "engine p50 s")]
    for r in results.values():
        rows.append((r["contender"], f"{r['rollouts_per_s']:.1f}", f"{r['tokens_per_s']:.0f}",
                     f"{r['p50_latency_s']:.2f}", f"{r['p95_latency_s']:.2f}",
                     f"{r['engine_p50_s']:.2f}" if "engine_p50_s" in r else "-"))
    w = [max(len(r[i]) for r in rows) for i in range(6)]
    return "\n".join("  ".join(c.ljust(w[i]) if i == 0 else c.rjust(w[i]) for i, c in enumerate(r)) for r in rows)


def main(argv=None) -> int:
    args = parse_args(argv)
    from configs.loader import ConfigError

    try:
        cfg = bench_config(args)
    except ConfigError as e:
        print(f"actor.bench: {e}", file=sys.stderr)
        return 2
    from tqdm import tqdm

    from actor.runtime import on_gpu

    only = [c.strip() for c in args.only.split(",") if c.strip()]
    unknown = set(only) - {"hf", "vllm_raw", "actor", "tools"}
    if unknown:
        print(f"actor.bench: unknown contender(s) {', '.join(sorted(unknown))}", file=sys.stderr)
        return 2
    if "tools" in only and not cfg.tools:
        print("actor.bench: --only tools needs a config with tools (e.g. configs/demo_tools_cpu.yaml)", file=sys.stderr)
        return 2
    n_prompts = args.prompts or cfg.prompts_per_step
    g = args.samples or cfg.num_generations
    tokens = args.tokens or cfg.max_completion_length
    prompts = load_prompts(cfg, n_prompts, from_data=bool(args.config))
    work = Path(tempfile.mkdtemp(prefix="actor-bench-"))
    from configs.loader import dump_config

    resolved = work / "bench.yaml"   # the actor process runs on exactly the engine settings used here
    resolved.write_text(dump_config(cfg))
    config_args = ["--config", str(resolved)]
    dtypes = [d.strip() for d in (args.dtypes or cfg.actor.dtype).split(",")]
    modes = [m.strip() for m in (args.serve_modes or cfg.actor.serve_mode).split(",")]
    grid = [(d, m) for d in dtypes for m in modes]
    bar = tqdm(total=(len(only) + ("tools" in only)) * len(grid) * (args.repeats + 1), desc="rollout bench",
               unit="req")  # the tools row sends two requests a round
    results: dict[str, dict] = {}
    try:
        adapter_dir = make_adapter(cfg, work / "adapter")
        for dtype, mode in grid:
            c = cfg.model_copy(update={"actor": cfg.actor.model_copy(update={"dtype": dtype, "serve_mode": mode})})
            tag = f" {dtype} {mode}" if len(grid) > 1 else ""
            if len(grid) > 1:
                resolved.write_text(dump_config(c))
            if "hf" in only:
                bar.set_postfix_str("hf" + tag)
                r = run_hf(c, prompts, adapter_dir, g, tokens, args.repeats, bar.update)
                r["contender"] += tag
                results["hf" + tag] = r
            if "tools" in only:
                from actor.tools_bench import run_tools

                bar.set_postfix_str("tools" + tag)
                for name, r in run_tools(c, n_prompts, g, tokens, args.repeats, adapter_dir, bar.update).items():
                    r["contender"] += tag
                    results[name + tag] = r
            engines = [n for n in ("vllm_raw", "actor") if n in only]
            groups = ([engines] if engines else []) if args.paired else [[n] for n in engines]  # --only hf: none
            for names in groups:
                bar.set_postfix_str(",".join(names) + tag)
                up = []
                try:
                    for name in names:
                        if name == "vllm_raw":
                            up.append(RawVllm(c, prompts, adapter_dir, g, tokens))
                        else:
                            prof = None
                            if args.profile is not None:
                                args.profile.mkdir(parents=True, exist_ok=True)
                                prof = args.profile / f"actor-{len(results)}.prof"
                            up.append(ActorProcess(c, config_args, prompts, adapter_dir, g, tokens,
                                                   work / "actor.log", prof))
                    got = timed(up, args.repeats, bar.update, len(prompts) * g, gap_s=1.5 if len(up) > 1 else 0)
                finally:
                    for x in reversed(up):
                        x.close()
                for name, r in got.items():
                    r["contender"] += tag
                    results[name + tag] = r
    finally:
        bar.close()
    out = {
        "model": str(cfg.model_id), "device": "gpu" if on_gpu() else f"cpu x{len(os.sched_getaffinity(0))}",
        "serve_mode": cfg.actor.serve_mode, "prompts": n_prompts, "samples_per_prompt": g,
        "tokens_per_completion": tokens, "repeats": args.repeats, "lora_r": cfg.lora_r,
        "prompt_tokens": prompt_lengths(cfg, prompts),
        "contenders": results,
    }
    for name in ("actor", "hf", "vllm_raw"):
        if name in results:
            out[f"{name}_tokens_per_s"] = results[name]["tokens_per_s"]
    if "actor" in results and "hf" in results:
        out["speedup_vs_hf"] = results["actor"]["tokens_per_s"] / results["hf"]["tokens_per_s"]
    if "actor" in results and "vllm_raw" in results:
        out["ratio_vs_raw_vllm"] = results["actor"].get(
            "paired_ratio", results["actor"]["tokens_per_s"] / results["vllm_raw"]["tokens_per_s"])
    print(f"\n{n_prompts} prompts ({out['prompt_tokens']} tokens) x {g} samples x {tokens} tokens, "
          f"LoRA r={cfg.lora_r} active, "
          f"{cfg.actor.serve_mode} mode, {out['device']}, {args.repeats} timed requests each\n")
    print(table(results))
    for k in ("speedup_vs_hf", "ratio_vs_raw_vllm"):
        if k in out:
            print(f"{k}: {out[k]:.3f}")
    if "tools" in results:
        from actor.tools_bench import describe

        print(describe(results))
    if "paired_ratios" in results.get("actor", {}):
        print("actor / vllm_raw per round: " + " ".join(f"{x:.3f}" for x in results["actor"]["paired_ratios"]))
        print("CPU taken while idle during the other's requests (cores): " + ", ".join(
            f"{n} {r['idle_cpu_frac']:.4f}" for n, r in results.items() if "idle_cpu_frac" in r))
    if args.json:
        args.json.write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
