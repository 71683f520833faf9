"""``python -m learner.bench [--shape tiny|small|bench|0.5b|3.7b] [--config FILE] [--set k=v] [--json FILE]``

Learner throughput on random rollouts: the real training step (PEFT LoRA on every linear layer,
DeepSpeed ZeRO, the Dr. GRPO loss, clipping, AdamW) on ``prompts_per_step x num_generations``
completions of ``max_completion_length`` tokens (the config's lengths) after prompts of
``--prompt-len`` tokens. The model is built in memory from ``zoo``'s Qwen3 shape with random weights
(no download, no disk); LoRA B is randomised so gradients are not trivially zero. Prints a table and
writes JSON: tokens/s of forward+backward, optimizer-step time, step time, peak memory.

Defaults: ``configs/smoke_cpu.yaml`` for tiny/bench (CPU-sized), ``configs/demo_cpu.yaml`` for small (the
demo's stand-in), ``configs/v4_1.yaml`` for 0.5b and ``configs/v4_2_a_3b.yaml`` for 3.7b. On CUDA the engine
runs bf16 with one DeepSpeed rank (launch with ``deepspeed --num_gpus N -m learner.bench ...`` for several);
``--gradient-checkpointing`` recomputes activations. ``--compare-attention`` (with ``learner.share_prompt``
on, as in the CPU configs) times the same rollouts under SDPA's masked square and under grouped attention
(``learner.attention``), in turn, ``--rounds`` times.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import time
from pathlib import Path

DEFAULT_CONFIGS = {
    "tiny": "configs/smoke_cpu.yaml",
    "small": "configs/demo_cpu.yaml",
    "bench": "configs/smoke_cpu.yaml",
    "0.5b": "configs/v4_1.yaml",
    "3.7b": "configs/v4_2_a_3b.yaml",
}


def _peak_mem_gb(device) -> float:
    import torch

    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def build(cfg, shape: str, seed: int = 0):
    """The policy on a random model of ``shape`` (no download), LoRA B randomised; returns (policy, build s)."""
    import torch
    from transformers import AutoModelForCausalLM

    from learner.engine import PolicyEngine
    from zoo.build import SHAPES, qwen3_config

    vocab = SHAPES[shape]["vocab_size"] or 2048
    torch.manual_seed(seed)
    t0 = time.perf_counter()
    base = AutoModelForCausalLM.from_config(qwen3_config(shape, vocab_size=vocab, eos_token_id=2, pad_token_id=0))
    policy = PolicyEngine(cfg, base_model=base)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in policy.module.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.01)
    return policy, time.perf_counter() - t0


def run_bench(cfg, shape: str, steps: int = 3, warmup: int = 1, prompt_len: int = 128, seed: int = 0,
              zero_std_frac: float = 0.0, skip_zero_advantage: bool = True, policy=None) -> dict:
    """Time ``steps`` training steps (after ``warmup``) on random rollouts; ``zero_std_frac`` of the groups
    get equal rewards (zero advantages). Pass ``policy`` (from :func:`build`) to reuse one engine."""
    import torch

    from learner.loss import attn_implementation, group_advantages
    from learner.rollouts import Sample
    from learner.step import forward_backward

    build_s = 0.0
    if policy is None:
        policy, build_s = build(cfg, shape, seed)
    vocab = policy.vocab_size
    gen = torch.Generator().manual_seed(seed + 1)  # the same rollouts for every measurement of a policy
    n_prompts, g, c_len = (
        cfg.prompts_per_step * cfg.grad_accum,
        cfg.num_generations,
        cfg.max_completion_length,
    )
    n_flat = round(zero_std_frac * n_prompts)  # groups whose G rewards are all equal: zero advantages

    def rollouts() -> list[Sample]:
        rewards = torch.rand(n_prompts, g, generator=gen)
        rewards[:n_flat] = rewards[:n_flat, :1]
        adv = group_advantages(rewards, cfg.scale_rewards).tolist()
        out = []
        for i in range(n_prompts * g):
            if i % g == 0:  # one prompt per group, as real rollouts
                prompt = torch.randint(3, vocab, (prompt_len,), generator=gen).tolist()
            comp = torch.randint(3, vocab, (c_len,), generator=gen).tolist()
            out.append(
                Sample(prompt, comp, (-torch.rand(c_len, generator=gen) * 3).tolist(), adv[i], 0.0, 0, False)
            )
        return out

    rows = []
    sync = torch.cuda.synchronize if policy.device.type == "cuda" else (lambda: None)
    for it in range(warmup + steps):
        samples = rollouts()
        sync()
        t_fb = time.perf_counter()
        fb = forward_backward(policy, cfg, samples, None, skip_zero_advantage)
        tokens = fb.learner_tokens
        sync()
        t_opt = time.perf_counter()
        grad_norm = policy.step().grad_norm
        sync()
        t_end = time.perf_counter()
        if it >= warmup:
            rows.append(
                {
                    "fwd_bwd_s": t_opt - t_fb,
                    "opt_s": t_end - t_opt,
                    "step_s": t_end - t_fb,
                    "tokens": tokens,
                    "skipped": fb.skipped,
                    "grad_norm": grad_norm,
                }
            )
    fb = sum(r["fwd_bwd_s"] for r in rows)
    tok = sum(r["tokens"] for r in rows)
    trainable = sum(p.numel() for p in policy.module.parameters() if p.requires_grad)
    total = sum(p.numel() for p in policy.module.parameters())
    return {
        "shape": shape,
        "attention": attn_implementation(policy.module),
        "device": str(policy.device),
        "dtype": str(policy.dtype).replace("torch.", ""),
        "world": policy.world,
        "zero_stage": cfg.learner.zero_stage,
        "gradient_checkpointing": cfg.learner.gradient_checkpointing,
        "params_total": total,
        "params_trainable": trainable,
        "completions": len(samples),
        "prompt_len": prompt_len,
        "completion_len": c_len,
        "micro_batch_size": cfg.learner.micro_batch_size,
        "share_prompt": cfg.learner.share_prompt,
        "zero_std_frac": n_flat / n_prompts,
        "skip_zero_advantage": skip_zero_advantage,
        "skipped_completions": sum(r["skipped"] for r in rows) / len(rows),
        "steps": steps,
        "build_s": build_s,
        "tokens_per_step": tok / len(rows),
        "fwd_bwd_tokens_per_s": tok / fb,
        "fwd_bwd_s": fb / len(rows),
        "opt_s": sum(r["opt_s"] for r in rows) / len(rows),
        "step_s": sum(r["step_s"] for r in rows) / len(rows),
        "peak_mem_gb": _peak_mem_gb(policy.device),
        "host": platform.node(),
        "threads": int(os.environ.get("OMP_NUM_THREADS", "0")) or None,
    }


def skip_table(rows: list[dict]) -> str:
    """Zero-advantage skipping against the full computation, per frac_reward_zero_std."""
    by = {}
    for r in rows:
        by.setdefault(r["zero_std_frac"], {})[r["skip_zero_advantage"]] = r
    out = ["frac_zero_std  completions skipped  full step s  skipping step s  saved"]
    for frac, pair in sorted(by.items()):
        full, skip = pair.get(False), pair.get(True)
        if full and skip:
            out.append(f"{frac:>13.2f}  {skip['skipped_completions']:>19.0f}  {full['step_s']:>11.3f}  "
                       f"{skip['step_s']:>15.3f}  {1 - skip['step_s'] / full['step_s']:>5.0%}")
    return "\n".join(out)


def attention_table(rows: list[dict]) -> str:
    """Step time per attention implementation (medians over rounds) and the grouped one's saving."""
    import statistics

    by: dict[str, list[float]] = {}
    for r in rows:
        by.setdefault(r["attention"], []).append(r["step_s"])
    med = {k: statistics.median(v) for k, v in by.items()}
    out = ["attention        rounds  step s (median)  per round"]
    out += [f"{k:<15}  {len(v):>6}  {med[k]:>15.3f}  {' '.join(f'{x:.3f}' for x in v)}" for k, v in by.items()]
    if len(med) == 2:
        (a, ta), (b, tb) = med.items()
        out.append(f"{b} / {a}: {tb / ta:.2f}")
    return "\n".join(out)


def table(r: dict) -> str:
    keys = [
        ("shape", "{}"),
        ("attention", "{}"),
        ("device", "{}"),
        ("dtype", "{}"),
        ("world", "{}"),
        ("zero_stage", "{}"),
        ("params_trainable", "{:,}"),
        ("completions", "{}"),
        ("prompt_len", "{}"),
        ("completion_len", "{}"),
        ("micro_batch_size", "{}"),
        ("share_prompt", "{}"),
        ("zero_std_frac", "{:.2f}"),
        ("skip_zero_advantage", "{}"),
        ("tokens_per_step", "{:,.0f}"),
        ("fwd_bwd_tokens_per_s", "{:,.0f}"),
        ("fwd_bwd_s", "{:.3f}"),
        ("opt_s", "{:.3f}"),
        ("step_s", "{:.3f}"),
        ("peak_mem_gb", "{:.2f}"),
    ]
    w = max(len(k) for k, _ in keys)
    return "\n".join(f"{k:<{w}}  {fmt.format(r[k])}" for k, fmt in keys)


def main(argv: list[str] | None = None) -> int:
    from configs import ConfigError, load_config
    from configs.__main__ import add_config_args

    p = argparse.ArgumentParser(prog="python -m learner.bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--shape", choices=tuple(DEFAULT_CONFIGS), default="tiny")
    add_config_args(p, required=False)  # the config's lengths are used (default per shape)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--prompt-len", type=int, default=128)
    p.add_argument("--gradient-checkpointing", action="store_true")
    p.add_argument("--zero-std-frac", default="0",
                   help="share(s) of groups whose rewards are all equal (train/frac_reward_zero_std), e.g. 0.25,0.5")
    p.add_argument("--no-skip", action="store_true", help="forward zero-advantage completions too (the baseline)")
    p.add_argument("--compare-skip", action="store_true",
                   help="at each fraction, time the full computation and zero-advantage skipping side by side")
    p.add_argument("--compare-attention", action="store_true",
                   help="time SDPA's masked square and grouped attention in turn (needs learner.share_prompt)")
    p.add_argument("--rounds", type=int, default=3, help="rounds of --compare-attention")
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("--local_rank", type=int, default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    overrides = ["model_id=bench-random", "logging.wandb_mode=disabled", *args.overrides]
    if args.gradient_checkpointing:
        overrides.append("learner.gradient_checkpointing=true")
    try:
        cfg = load_config(args.config or DEFAULT_CONFIGS[args.shape], overrides)
    except ConfigError as e:
        print(f"learner.bench: invalid config: {e}", file=sys.stderr)
        return 2
    try:
        fracs = [float(x) for x in args.zero_std_frac.split(",")]
    except ValueError:
        fracs = [-1.0]
    if not all(0.0 <= f <= 1.0 for f in fracs):
        print(f"learner.bench: --zero-std-frac must be fractions in [0, 1], got {args.zero_std_frac!r}",
              file=sys.stderr)
        return 2
    if args.compare_attention and not cfg.learner.share_prompt:
        print("learner.bench: --compare-attention needs --set learner.share_prompt=true", file=sys.stderr)
        return 2
    if args.compare_attention and args.rounds < 1:
        print(f"learner.bench: --rounds must be at least 1, got {args.rounds}", file=sys.stderr)
        return 2
    modes = [False, True] if args.compare_skip else [not args.no_skip]
    policy, build_s = build(cfg, args.shape)

    def bench() -> list[dict]:
        return [run_bench(cfg, args.shape, steps=args.steps, warmup=args.warmup, prompt_len=args.prompt_len,
                          zero_std_frac=f, skip_zero_advantage=skip, policy=policy) for f in fracs for skip in modes]

    if args.compare_attention:
        from learner.attention import GROUPED

        base = policy.module.base_model.model
        rows = []
        for _ in range(args.rounds):
            for impl in ("sdpa", GROUPED):
                base.set_attn_implementation(impl)
                rows += bench()
        base.set_attn_implementation(GROUPED)
    else:
        rows = bench()
    for r in rows:
        r["build_s"] = build_s
    if int(os.environ.get("RANK", "0")) == 0:
        if args.compare_attention:
            print(table(rows[-1]) + "\n")
            print(attention_table(rows))
        elif len(rows) == 1:
            print(table(rows[0]))
        else:
            print(table(rows[0]) + "\n")
            print(skip_table(rows) if args.compare_skip else "\n".join(f"{r['zero_std_frac']:.2f} {r['step_s']:.3f}"
                                                                       for r in rows))
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(rows[0] if len(rows) == 1 else rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
