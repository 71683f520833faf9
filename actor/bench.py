"""Rollout benchmark: ``python -m actor.bench [--config FILE] [--json FILE] [--repeats N]``.

Measures rollouts/s, generated tokens/s and p50/p95 request latency for G samples per prompt at the
config's lengths, with a random non-zero LoRA adapter active, for three contenders run one at a time
on the same cores (each gets the whole machine in turn; no EngineCore process outlives its turn):

- ``hf``: Hugging Face ``generate`` with the same adapter through PEFT, on the same prompts and
  sampling settings (what TRL does without vLLM);
- ``vllm_raw``: ``vllm.LLM.generate`` on the actor's own engine settings (``RolloutEngine``'s engine,
  adapter loaded in the configured serve mode), called directly: the ceiling for our server;
- ``actor``: ``python -m actor`` serving over real ZeroMQ through sync, the adapter published with
  ``ZmqWeightPublisher``, requests sent with ``ZmqRolloutTransport`` from this process.

Every completion is forced to exactly ``max_tokens`` (``ignore_eos`` in vLLM, ``min_new_tokens`` in HF)
so token counts are equal. One request = all prompts x G samples; each contender does a warm-up
request, then ``--repeats`` timed ones. Without ``--config`` an offline bench-size model is built
(``zoo`` shape ``bench``, ~22M parameters) and the workload is 2 prompts x 16 samples x 128 tokens.
On a GPU node the same command, with the run's config, is the rollout benchmark.
"""

from __future__ import annotations

import argparse
import gc
import json
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
    p.add_argument("--only", default="hf,vllm_raw,actor", help="contenders to run, comma-separated")
    p.add_argument("--dtypes", default=None,
                   help="engine dtypes to compare side by side, e.g. float32,bfloat16 (default: the config's)")
    p.add_argument("--serve-modes", default=None,
                   help="serve modes to compare side by side, e.g. merged,adapter (default: the config's)")
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

    from actor.runtime import engine_dtype

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


def run_vllm_raw(cfg, prompts, adapter_dir, g, tokens, repeats, tick) -> dict:
    from vllm.inputs import TokensPrompt

    from sync import SamplingSpec

    from actor.engine import RolloutEngine

    eng = RolloutEngine(cfg, delete_retired=False)
    try:
        eng.load_adapter(1, adapter_dir)
        ids = [TokensPrompt(prompt_token_ids=eng.encode_prompt(p)) for p in prompts]
        lat, toks = [], []
        for i in range(repeats + 1):
            spec = SamplingSpec(g, cfg.temperature, cfg.actor.top_p, tokens, 1000 * i)
            params = [eng.sampling_params(spec, j, ignore_eos=True) for j in range(len(ids))]  # the actor's
            t0 = time.perf_counter()
            outs = eng.llm.generate(ids, params, lora_request=eng._lora, use_tqdm=False)
            dt = time.perf_counter() - t0
            if i:
                lat.append(dt)
                toks.append(sum(len(c.token_ids) for o in outs for c in o.outputs))
            tick()
    finally:
        eng.close()
    return summarize("vllm_raw", lat, toks, len(prompts) * g)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_actor(cfg, config_args, prompts, adapter_dir, g, tokens, repeats, tick, log_path: Path) -> dict:
    import psutil
    from safetensors.torch import load_file

    from sync import RolloutRequest, SamplingSpec
    from sync.rollout import ZmqRolloutTransport
    from sync.weights import ZmqWeightPublisher

    from actor.engine import reap

    scfg = cfg.sync.model_copy(update={"host": "127.0.0.1", "rollout_port": _free_port(),
                                       "weight_port": _free_port(), "keys_dir": None})
    transport = ZmqRolloutTransport(scfg)
    publisher = ZmqWeightPublisher(scfg)
    cmd = [sys.executable, "-m", "actor", *config_args,
           "--set", f"sync.rollout_port={scfg.rollout_port}", "--set", f"sync.weight_port={scfg.weight_port}",
           "--set", "sync.host=127.0.0.1", "--set", "sync.connect_host=127.0.0.1", "--actor-id", "bench"]
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=REPO,
                                env={**CLEAN_ENV, "PYTHONPATH": str(REPO)})
    kids: set[int] = set()
    try:
        deadline = time.monotonic() + 900
        while "bench" not in transport.actors():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"actor did not come up (exit {proc.poll()}); see {log_path}")
            time.sleep(0.1)
        kids = {p.pid for p in psutil.Process(proc.pid).children(recursive=True)}
        tensors = load_file(str(adapter_dir / "adapter_model.safetensors"))
        config = json.loads((adapter_dir / "adapter_config.json").read_text())
        publisher.publish(1, tensors, config)
        publisher.wait_acks(1, 300)
        lat, toks = [], []
        for i in range(repeats + 1):
            req = RolloutRequest(uuid.uuid4().hex, prompts, SamplingSpec(g, cfg.temperature, cfg.actor.top_p, tokens,
                                                                         1000 * i), 1, {"ignore_eos": True})
            t0 = time.perf_counter()
            transport.submit(req)
            grp = transport.receive(900)
            dt = time.perf_counter() - t0
            if grp is None:
                raise RuntimeError(f"no group from the actor within 900 s; see {log_path}")
            if i:
                lat.append(dt)
                toks.append(sum(len(c.token_ids) for r in grp.results for c in r.completions))
            tick()
    finally:
        transport.close(shutdown_actors=True, reason="bench done")
        publisher.close()
        try:
            proc.wait(120)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(30)
        left = reap(sorted(kids), timeout_s=10)
        if left:
            print(f"warning: actor processes {left} outlived the actor", file=sys.stderr)
    return summarize("actor", lat, toks, len(prompts) * g)


# ---------------------------------------------------------------------------------------------- main


def table(results: dict[str, dict]) -> str:
    rows = [("contender", "rollouts/s", "tokens/s", "p50 s", "p95 s")]
    for r in results.values():
        rows.append((r["contender"], f"{r['rollouts_per_s']:.1f}", f"{r['tokens_per_s']:.0f}",
                     f"{r['p50_latency_s']:.2f}", f"{r['p95_latency_s']:.2f}"))
    w = [max(len(r[i]) for r in rows) for i in range(5)]
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
    unknown = set(only) - {"hf", "vllm_raw", "actor"}
    if unknown:
        print(f"actor.bench: unknown contender(s) {', '.join(sorted(unknown))}", file=sys.stderr)
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
    bar = tqdm(total=len(only) * len(grid) * (args.repeats + 1), desc="rollout bench", unit="req")
    results: dict[str, dict] = {}
    try:
        adapter_dir = make_adapter(cfg, work / "adapter")
        for dtype, mode in grid:
            c = cfg.model_copy(update={"actor": cfg.actor.model_copy(update={"dtype": dtype, "serve_mode": mode})})
            tag = f" {dtype} {mode}" if len(grid) > 1 else ""
            if len(grid) > 1:
                resolved.write_text(dump_config(c))
            for name in only:
                bar.set_postfix_str(name + tag)
                if name == "hf":
                    r = run_hf(c, prompts, adapter_dir, g, tokens, args.repeats, bar.update)
                elif name == "vllm_raw":
                    r = run_vllm_raw(c, prompts, adapter_dir, g, tokens, args.repeats, bar.update)
                else:
                    r = run_actor(c, config_args, prompts, adapter_dir, g, tokens, args.repeats,
                                  bar.update, work / "actor.log")
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
        out["ratio_vs_raw_vllm"] = results["actor"]["tokens_per_s"] / results["vllm_raw"]["tokens_per_s"]
    print(f"\n{n_prompts} prompts ({out['prompt_tokens']} tokens) x {g} samples x {tokens} tokens, "
          f"LoRA r={cfg.lora_r} active, "
          f"{cfg.actor.serve_mode} mode, {out['device']}, {args.repeats} timed requests each\n")
    print(table(results))
    for k in ("speedup_vs_hf", "ratio_vs_raw_vllm"):
        if k in out:
            print(f"{k}: {out[k]:.2f}")
    if args.json:
        args.json.write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
