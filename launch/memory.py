"""GPU memory plan: what an actor and a learner rank need on one GPU, and the split when they share it.

Estimates in GiB (2**30 bytes, as nvidia-smi's MiB / 1024 and torch report), from the model's shape and the
run config. They are upper bounds: every sequence is taken at its longest (a prompt of ``max_seq_length -
max_completion_length`` tokens), so a real batch needs less. Sources and the V4.1 budgets: BENCHMARKS.md,
"One GPU".

- **Actor** (per GPU; tensor parallel splits weights and KV over its ``tp`` GPUs): the CUDA context; the
  weights in the engine dtype; the KV cache of one step's batch at full concurrency (``prompts_per_step``
  prompts, each shared by its G completions through prefix caching: prompt + G x completion tokens); the
  LoRA slots in adapter mode (``max_loras`` x the rank slot, every linear layer); vLLM's profiling peak
  (``max_num_batched_tokens`` through one layer, sampler logits of ``max_num_seqs``) and CUDA graphs. The engine is
  given exactly the ``max_num_batched_tokens`` budgeted here (``RunConfig.batched_tokens``): vLLM's own default
  differs by GPU. Merged mode's base weights (W0 of the targeted layers) are not in it: on a shared GPU the actor
  keeps them in host memory (``actor.shared_gpu``), on a dedicated one outside vLLM's fraction when there is room.
- **Learner** (per rank): the CUDA context; the frozen base weights in the training precision (ZeRO-3
  partitions them over the ranks); LoRA at 20 bytes a parameter in bf16 (bf16 weight and gradient, the fp32
  gradient DeepSpeed sums micro-batches in, fp32 master and Adam's two moments; ZeRO-1/2 partition the fp32 part,
  ZeRO-2 the gradients too); one micro-batch of activations (``micro_batch_size x max_seq_length`` tokens) with
  or without gradient checkpointing, as :meth:`Shape.activation_bytes` counts what autograd keeps; the LM head's
  logits over the completion positions and their gradient, with two fp32 rows of work
  (:mod:`learner.token_logps`); and headroom for the caching allocator (10%, at least 0.5 GiB). The activations
  and logits are checked against what one micro-batch really keeps and allocates, counted under fake tensors at
  the real shapes (``python -m launch.learner_memory``, ``tests/unit/test_learner_memory.py``).

On a shared GPU vLLM gets exactly its estimate, as ``gpu_memory_utilization`` (what its start-up check
asks to be free) and a fixed ``kv_cache_gb`` (no profiling-based sizing that would take the learner's
share), and the learner everything else.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from configs import RunConfig
from configs.schema import VLLM_LORA_RANKS

GiB = 2**30
CUDA_CONTEXT_GIB = 0.6      # CUDA context + cuBLAS workspace per process (0.3-0.8 GiB seen on L4/A100)
CUDA_GRAPHS_GIB = 0.5       # vLLM's captured decode graphs ("Graph capturing finished ... took 0.3-0.6 GiB")
KV_BLOCK = 16               # vLLM's KV block size in tokens


@dataclass(frozen=True)
class Shape:
    """A Qwen3 decoder's dimensions (what a Hugging Face ``config.json`` says)."""

    hidden: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    vocab: int
    tied: bool = True

    @classmethod
    def from_hf(cls, c: dict) -> Shape:
        heads = c["num_attention_heads"]
        return cls(hidden=c["hidden_size"], layers=c["num_hidden_layers"], heads=heads,
                   kv_heads=c.get("num_key_value_heads", heads),
                   head_dim=c.get("head_dim") or c["hidden_size"] // heads,
                   intermediate=c["intermediate_size"], vocab=c["vocab_size"], tied=c.get("tie_word_embeddings", True))

    def _linears(self) -> list[tuple[int, int]]:
        """(in, out) of every linear layer of one decoder layer: q, k, v, o, gate, up, down."""
        h, q, kv, i = self.hidden, self.heads * self.head_dim, self.kv_heads * self.head_dim, self.intermediate
        return [(h, q), (h, kv), (h, kv), (q, h), (h, i), (h, i), (i, h)]

    @property
    def params(self) -> int:
        per_layer = sum(a * b for a, b in self._linears()) + 2 * self.hidden + 2 * self.head_dim
        return self.layers * per_layer + self.vocab * self.hidden * (1 if self.tied else 2) + self.hidden

    def lora_params(self, r: int) -> int:
        """LoRA on every linear layer of the decoder (``target_modules="all-linear"``, not the LM head)."""
        return self.layers * sum(r * (a + b) for a, b in self._linears())

    def kv_bytes_per_token(self, nbytes: int) -> int:
        return 2 * self.layers * self.kv_heads * self.head_dim * nbytes

    def activation_bytes(self, nbytes: int, seq_len: int, lora_r: int) -> int:
        """Bytes one decoder layer keeps for backward per token (transformers 5's Qwen3 under PEFT LoRA, training
        dtype of ``nbytes``), as counted by ``launch.learner_memory``: the two RMSNorms' inputs in fp32 (they upcast),
        their outputs and inverse RMS; q_norm's and k_norm's fp32 inputs and inverse RMS per head; SDPA's query, key
        and value (k and v repeated to the
        query's heads: transformers passes ``enable_gqa`` only without a mask), output and fp32 log-sum-exp; the
        ``[B, 1, L, L]`` mask in the training dtype that SDPA converts a boolean mask to in every layer (rows of
        unequal length); the MLP's gate, up, activation and product; LoRA A's outputs (seven linears)."""
        q, kv, h, i = self.heads * self.head_dim, self.kv_heads * self.head_dim, self.hidden, self.intermediate
        norms = 2 * h * (4 + nbytes) + 2 * 4 + 4 * (q + kv) + 4 * (self.heads + self.kv_heads)
        return norms + 4 * q * nbytes + 4 * self.heads + seq_len * nbytes + 4 * i * nbytes + 7 * lora_r * nbytes


# Public Tucano2 checkpoints (seed README: Qwen3 bodies, tied embeddings), so a dry run on a laptop can plan
# them without the weights; a local directory or the Hugging Face cache is read first.
_T05 = Shape(hidden=1024, layers=28, heads=16, kv_heads=8, head_dim=128, intermediate=3072, vocab=49152)
_T37 = Shape(hidden=2560, layers=36, heads=32, kv_heads=8, head_dim=128, intermediate=9728, vocab=49152)
KNOWN_SHAPES = {f"Polygl0t/Tucano2-qwen-{size}-{kind}": shape for size, shape in (("0.5B", _T05), ("3.7B", _T37))
                for kind in ("Instruct", "Base", "Think")}


def model_shape(model_id: str) -> Shape:
    """The shape from a local ``config.json``, the Hugging Face cache, or :data:`KNOWN_SHAPES`."""
    local = Path(model_id).expanduser() / "config.json"
    path = local if local.exists() else None
    if path is None:
        try:
            from huggingface_hub import try_to_load_from_cache

            hit = try_to_load_from_cache(model_id, "config.json")
            path = Path(hit) if isinstance(hit, str) else None
        except Exception:  # noqa: BLE001 - no cache, a malformed id: fall back to the table
            path = None
    if path is not None:
        try:
            return Shape.from_hf(json.loads(path.read_text()))
        except (OSError, ValueError, KeyError, TypeError):
            pass
    if model_id in KNOWN_SHAPES:
        return KNOWN_SHAPES[model_id]
    raise ValueError(f"cannot size model {model_id!r} for the memory plan: no config.json in that directory or "
                     "the Hugging Face cache (download it first, or give a local directory)")


@dataclass
class Part:
    """One process's share of a GPU: named items in GiB."""

    items: dict[str, float]

    @property
    def total(self) -> float:
        return sum(self.items.values())

    def describe(self) -> str:
        return f"{self.total:.1f} GiB (" + ", ".join(f"{k} {v:.2f}" for k, v in self.items.items()) + ")"


def _nbytes(dtype: str) -> int:
    return 4 if dtype in ("float32", "fp32") else 2


def actor_part(cfg: RunConfig, shape: Shape) -> Part:
    """One actor replica's memory per GPU of its tensor-parallel group (engine dtype bf16 on GPU under auto)."""
    a, tp = cfg.actor, cfg.actor.tensor_parallel_size
    nb = _nbytes("bfloat16" if a.dtype == "auto" else a.dtype)
    prompt = cfg.max_seq_length - cfg.max_completion_length
    seqs = cfg.prompts_per_step * cfg.num_generations
    blocks = lambda n: math.ceil(n / KV_BLOCK) * KV_BLOCK  # noqa: E731
    shared = a.enable_prefix_caching
    tokens = cfg.prompts_per_step * (blocks(prompt) + cfg.num_generations * blocks(cfg.max_completion_length)) \
        if shared else seqs * blocks(cfg.max_seq_length)
    tokens = max(tokens, blocks(cfg.max_seq_length))  # vLLM refuses a cache that cannot hold one full sequence
    items = {"context": CUDA_CONTEXT_GIB,
             "weights": shape.params * nb / tp / GiB,
             "KV cache": tokens * shape.kv_bytes_per_token(nb) / tp / GiB}
    if a.serve_mode != "merged":  # adapter mode on bf16 engines (auto); merged adds nothing
        slot = next(s for s in VLLM_LORA_RANKS if s >= cfg.lora_r)  # the config refuses a rank beyond them
        items["LoRA slots"] = cfg.lora_slots * shape.lora_params(slot) * nb / tp / GiB
    batched = cfg.batched_tokens  # what the engine is given (actor.engine_args.engine_kwargs), on every GPU
    peak = batched * (2 * shape.intermediate + 4 * shape.hidden + shape.heads * shape.head_dim) * nb / tp
    peak += 2 * min(a.max_num_seqs, 1024) * shape.vocab * 4  # sampler logits, fp32, and their softmax
    items["profiling peak"] = peak / GiB
    if not a.enforce_eager:
        items["CUDA graphs"] = CUDA_GRAPHS_GIB
    return Part(items)


def learner_part(cfg: RunConfig, shape: Shape) -> Part:
    """One learner rank's memory (precision bf16 on GPU under auto)."""
    ls, ranks = cfg.learner, cfg.learner.ranks
    nb = _nbytes("bf16" if ls.precision == "auto" else ls.precision)
    lora = shape.lora_params(cfg.lora_r)
    weights = shape.params * nb / (ranks if ls.zero_stage == 3 else 1)
    # fp32 master + Adam m, v; in bf16 also the fp32 gradient micro-batches are summed in (learner.engine)
    fp32_part = (16 if nb == 2 else 8) * lora / (ranks if ls.zero_stage >= 1 else 1)
    grad = nb * lora / (ranks if ls.zero_stage >= 2 else 1)
    tokens = ls.micro_batch_size * cfg.max_seq_length
    per_layer = shape.activation_bytes(nb, cfg.max_seq_length, cfg.lora_r)
    # backward's working set: one more layer's worth (its recomputation with checkpointing, its gradients)
    if ls.gradient_checkpointing:  # each layer's input kept
        act = shape.layers * tokens * shape.hidden * nb + tokens * per_layer
    else:
        act = (shape.layers + 1) * tokens * per_layer
    c, v = cfg.max_completion_length, shape.vocab
    # logits_to_keep: only the completion positions (and the last, which predicts nothing) reach the LM head; the
    # logits and their gradient in the training dtype, and two fp32 rows of work (learner.token_logps)
    logits = 2 * nb * ls.micro_batch_size * (c + 1) * v + 8 * c * v
    items = {"context": CUDA_CONTEXT_GIB, "weights": weights / GiB, "LoRA + Adam": (lora * nb + fp32_part + grad) / GiB,
             "activations": act / GiB, "logits": logits / GiB}
    items["headroom"] = max(0.5, 0.1 * sum(items.values()))
    return Part(items)


@dataclass
class MemoryPlan:
    """Per GPU: the actor's and the learner rank's parts and, when they share it, vLLM's fraction."""

    gpu_gib: float
    shared: bool
    actor: Part
    learner: Part
    notes: list[str] = field(default_factory=list)
    actor_share: float = 1.0
    """A dedicated actor GPU: the fraction vLLM may take (``actor.gpu_memory_utilization``)."""
    batched_tokens: int = 0
    """vLLM's ``max_num_batched_tokens`` the actor's profiling peak was budgeted from: the engine gets exactly this
    (``RunConfig.batched_tokens``, set on every GPU: vLLM's own default differs by GPU)."""

    @property
    def need(self) -> float:
        return self.actor.total + self.learner.total if self.shared else max(self.actor.total, self.learner.total)

    @property
    def fits(self) -> bool:
        if self.shared:
            return self.need <= self.gpu_gib
        return self.actor.total <= self.gpu_gib * self.actor_share and self.learner.total <= self.gpu_gib

    @property
    def utilization(self) -> float:
        """vLLM's ``gpu_memory_utilization`` on a shared GPU: its estimate, rounded up to a hundredth."""
        return min(1.0, math.ceil(self.actor.total / self.gpu_gib * 100 + 1e-9) / 100)

    @property
    def kv_cache_gb(self) -> float:
        return math.ceil(self.actor.items["KV cache"] * 100) / 100

    def describe(self) -> list[str]:
        head = (f"memory per GPU ({self.gpu_gib:.3g} GiB, shared by an actor and a learner rank): needs "
                f"{self.need:.1f} GiB" if self.shared else f"memory per GPU ({self.gpu_gib:.3g} GiB)")
        lines = [head + ("" if self.fits else " — does not fit")]
        if self.shared:
            lines.append(f"  vLLM      gpu_memory_utilization {self.utilization:.2f}, kv_cache_gb "
                         f"{self.kv_cache_gb:.2f}, max_num_batched_tokens {self.batched_tokens}, needs "
                         + self.actor.describe())
            lines.append(f"  learner   the remaining {self.gpu_gib * (1 - self.utilization):.1f} GiB, needs "
                         + self.learner.describe())
        else:
            lines.append(f"  actor     gpu_memory_utilization {self.actor_share:.2f} "
                         f"({self.gpu_gib * self.actor_share:.1f} GiB), max_num_batched_tokens "
                         f"{self.batched_tokens}, needs " + self.actor.describe())
            lines.append("  learner   " + self.learner.describe())
        return lines + [f"  note: {n}" for n in self.notes]


def plan_memory(cfg: RunConfig, gpu_gib: float, *, shared: bool, shape: Shape | None = None) -> MemoryPlan:
    shape = shape or model_shape(str(cfg.model_id))
    return MemoryPlan(gpu_gib, shared, actor_part(cfg, shape), learner_part(cfg, shape),
                      actor_share=1.0 if shared else cfg.actor.gpu_memory_utilization,
                      batched_tokens=cfg.batched_tokens)


def with_updates(cfg: RunConfig, updates: dict) -> RunConfig:
    """A copy of ``cfg`` with dotted-path updates (``{"learner.micro_batch_size": 1}``), re-validated."""
    data = cfg.model_dump(mode="json", by_alias=True)
    for key, value in updates.items():
        node = data
        *parents, last = key.split(".")
        for p in parents:
            node = node[p]
        node[last] = value
    return RunConfig.model_validate(data)


def alternatives(cfg: RunConfig, gpu_gib: float, shared: bool, shape: Shape) -> list[str]:
    """``--set`` changes under which the run fits: the largest micro-batch, G or completion length that does
    (with gradient checkpointing on), else micro-batch 1 with the largest G or length."""
    def largest(c: RunConfig, key: str, values) -> int | None:
        return next((v for v in values if plan_memory(with_updates(c, {key: v}), gpu_gib, shared=shared,
                                                        shape=shape).fits), None)

    pre = [] if cfg.learner.gradient_checkpointing else ["learner.gradient_checkpointing=true"]
    start = cfg if not pre else with_updates(cfg, {"learner.gradient_checkpointing": True})
    found: list[list[str]] = []
    for c, fixed in ((start, pre), (with_updates(start, {"learner.micro_batch_size": 1}),
                                    pre + ["learner.micro_batch_size=1"])):
        knobs = {"num_generations": range(c.num_generations - 1, 1, -1),
                 "max_seq_length": range((c.max_seq_length - 1) // 128 * 128, c.max_completion_length + 127, -128),
                 "max_completion_length": range((c.max_completion_length - 1) // 64 * 64, 63, -64)}
        if c is start:
            knobs = {"learner.micro_batch_size": range(c.learner.micro_batch_size - 1, 0, -1), **knobs}
        for key, values in knobs.items():
            v = largest(c, key, values)
            if v is not None:
                found.append([*fixed, f"{key}={v}"])
        if found:
            break
    return ["--set " + " --set ".join(f) for f in found]


def fit(cfg: RunConfig, gpu_gib: float, *, shared: bool) -> tuple[RunConfig, MemoryPlan]:
    """The config to run and its plan. Gradient checkpointing is turned on (and said so) when the learner
    needs it to fit; on a shared GPU vLLM's fraction and KV cache are set. Raises ValueError with one line
    saying what would fit when nothing does."""
    shape = model_shape(str(cfg.model_id))
    plan = plan_memory(cfg, gpu_gib, shared=shared, shape=shape)
    if not plan.fits and not cfg.learner.gradient_checkpointing:
        without = plan.learner
        cfg = with_updates(cfg, {"learner.gradient_checkpointing": True})
        plan = plan_memory(cfg, gpu_gib, shared=shared, shape=shape)
        plan.notes.append(f"learner.gradient_checkpointing turned on: without it the learner needs "
                          f"{without.total:.1f} GiB (activations {without.items['activations']:.1f})")
    if plan.fits:
        if shared:
            cfg = with_updates(cfg, {"actor.gpu_memory_utilization": plan.utilization,
                                     "actor.kv_cache_gb": plan.kv_cache_gb})
        return cfg, plan
    where = f"one {gpu_gib:.3g} GiB GPU shared by actor and learner" if shared else f"{gpu_gib:.3g} GiB GPUs"
    weights = plan.actor.items["weights"] + plan.learner.items["weights"]
    need = (f"needs {plan.need:.1f} GiB: actor {plan.actor.total:.1f} + learner {plan.learner.total:.1f}, of which "
            f"the two copies of the weights {weights:.1f}" if shared
            else f"actor needs {plan.actor.total:.1f} GiB, learner {plan.learner.total:.1f}")
    options = alternatives(cfg, gpu_gib, shared, shape)
    if shared:
        two = "a second GPU (--actor-gpus 0 --learner-gpus 1)"
        if plan_memory(cfg, gpu_gib, shared=False, shape=shape).fits:
            options.append(two)
        elif apart := alternatives(cfg, gpu_gib, False, shape):
            options.append(f"{two} with {apart[0]}")
    if options:
        hint = "would fit: " + "; or ".join(options)
    elif shared:
        hint = "nothing fits on one GPU; use bigger or more GPUs (--actor-gpus / --learner-gpus)"
    else:
        hint = "nothing fits with one knob: more learner ranks with learner.zero_stage=3, or bigger GPUs"
    raise ValueError(f"{cfg.model_id} does not fit on {where} ({need}, with gradient checkpointing); {hint}")


def main(argv: list[str] | None = None) -> int:
    """``python -m launch.memory --config FILE [--set k=v] --gpu-mem 22.5 40 80 [--gpus N] [--json PATH]``:
    the plan on each GPU size, as a table (and JSON), refusals included."""
    import argparse
    import sys

    from configs import ConfigError, load_config
    from configs.__main__ import add_config_args

    p = argparse.ArgumentParser(prog="python -m launch.memory", description=main.__doc__.split("\n")[0])
    add_config_args(p)
    p.add_argument("--gpu-mem", type=float, nargs="+", required=True, metavar="GIB")
    p.add_argument("--gpus", type=int, default=1, help="GPUs shared by actors and learner (one replica and one "
                                                       "learner rank on each; TP 1)")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    try:
        cfg = load_config(args.config, [*args.overrides, f"actor.replicas={args.gpus}", f"learner.ranks={args.gpus}",
                                        "actor.tensor_parallel_size=1"])
    except ConfigError as e:
        print(f"launch.memory: invalid config: {e}", file=sys.stderr)
        return 2
    rows = []
    print(f"{cfg.model_id} on {args.gpus} shared GPU(s): G {cfg.num_generations}, max_seq_length {cfg.max_seq_length}, "
          f"completion {cfg.max_completion_length}, micro-batch {cfg.learner.micro_batch_size}")
    print("| GPU GiB | fits | vLLM fraction | KV GiB | actor GiB | learner GiB | total GiB | grad ckpt | refusal |")
    print("| ---: | --- | ---: | ---: | ---: | ---: | ---: | --- | --- |")
    for gib in args.gpu_mem:
        try:
            c, plan = fit(cfg, gib, shared=True)
            row = dict(gpu_gib=gib, fits=True, utilization=plan.utilization, kv_cache_gb=plan.kv_cache_gb,
                       actor=plan.actor.items, learner=plan.learner.items, actor_gib=plan.actor.total,
                       learner_gib=plan.learner.total, need_gib=plan.need,
                       gradient_checkpointing=c.learner.gradient_checkpointing, refusal=None)
        except ValueError as e:
            plan = plan_memory(with_updates(cfg, {"learner.gradient_checkpointing": True}), gib, shared=True)
            row = dict(gpu_gib=gib, fits=False, utilization=None, kv_cache_gb=None, actor=plan.actor.items,
                       learner=plan.learner.items, actor_gib=plan.actor.total, learner_gib=plan.learner.total,
                       need_gib=plan.need, gradient_checkpointing=True, refusal=str(e))
        rows.append(row)
        frac = f"{row['utilization']:.2f}" if row["fits"] else "-"
        kv = f"{row['kv_cache_gb']:.2f}" if row["fits"] else "-"
        hint = (row["refusal"] or "").split("; ", 1)[-1] if not row["fits"] else ""
        print(f"| {gib:.3g} | {'yes' if row['fits'] else 'no'} | {frac} | {kv} | {row['actor_gib']:.1f} | "
              f"{row['learner_gib']:.1f} | {row['need_gib']:.1f} | {'on' if row['gradient_checkpointing'] else 'off'} "
              f"| {hint} |")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"config": args.config, "overrides": args.overrides, "gpus": args.gpus,
                                               "model_id": str(cfg.model_id), "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
