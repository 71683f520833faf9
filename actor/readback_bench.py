"""What the served-policy readback (``actor.readback``) costs per sync, at a model's adapter shape, without an engine.

``python -m actor.readback_bench [--shape 3.7b] [--rank 16] [--json P]`` (shapes: ``zoo.build.SHAPES``)

It times the parts a worker runs after each load, on this machine's CPU: re-reading and hashing the published
adapter file (``read_adapter``), the adapter-mode comparison of every LoRA slot (bf16 A/B, as the engine holds them,
against the float32 file: r x r products), and the merged-mode dense comparison of one decoder layer's weights
(scaled to all layers). A GPU does the last two faster; the file read is the same.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path


def _timed(fn, repeat: int = 3) -> float:
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def linears(shape: dict) -> list[tuple[int, int]]:
    """(in, out) of q, k, v, o, gate, up, down for a ``zoo.build.SHAPES`` entry."""
    h, hd, inter = shape["hidden_size"], shape["head_dim"], shape["intermediate_size"]
    q, kv = shape["num_attention_heads"] * hd, shape["num_key_value_heads"] * hd
    return [(h, q), (h, kv), (h, kv), (q, h), (h, inter), (h, inter), (inter, h)]


def run(model: str, rank: int) -> dict:
    import torch
    from safetensors.torch import save_file
    from zoo.build import SHAPES

    from sync.tensors import DeltaCosine

    from actor.merge import read_adapter

    shape = SHAPES[model]
    n_layers = shape["num_hidden_layers"]
    names = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
    parent = ["self_attn"] * 4 + ["mlp"] * 3
    g = torch.Generator().manual_seed(0)
    tensors = {}
    for layer in range(n_layers):
        for (n_in, n_out), name, par in zip(linears(shape), names, parent, strict=True):
            p = f"base_model.model.model.layers.{layer}.{par}.{name}"
            tensors[f"{p}.lora_A.weight"] = (torch.randn(rank, n_in, generator=g) * 0.02).bfloat16()
            tensors[f"{p}.lora_B.weight"] = (torch.randn(n_out, rank, generator=g) * 1e-4).bfloat16()
    params = sum(t.numel() for t in tensors.values())
    with tempfile.TemporaryDirectory(dir="/dev/shm" if Path("/dev/shm").is_dir() else None) as d:
        save_file(tensors, f"{d}/adapter_model.safetensors")
        Path(d, "adapter_config.json").write_text(json.dumps({"r": rank, "lora_alpha": 2 * rank}))
        read_s = _timed(lambda: read_adapter(d))
        _, pairs, _ = read_adapter(d)

    slots = {m: (a.clone(), (b.float() * 2).bfloat16()) for m, (a, b) in pairs.items()}  # the engine's bf16 copy

    def lowrank():
        c = DeltaCosine()
        for m, (a, b) in pairs.items():
            sa, sb = slots[m]
            c.add_lowrank(sa.float(), sb.float(), a.float(), b.float() * 2)
        return c.value

    adapter_s = _timed(lowrank)
    layer0 = {m: ab for m, ab in pairs.items() if ".layers.0." in m}

    def dense_layer():
        c = DeltaCosine()
        for (a, b) in layer0.values():
            delta = 2 * (b.float() @ a.float())
            w0 = torch.randn_like(delta)
            c.add_dense((w0 + delta) - w0, delta)
        return c.value

    merged_s = _timed(dense_layer, repeat=1) * n_layers
    return {"model": model, "lora_rank": rank, "lora_params": params, "adapter_mb_bf16": params * 2 / 2**20,
            "read_adapter_s": read_s, "adapter_mode_compare_s": adapter_s, "merged_mode_compare_s": merged_s,
            "adapter_mode_total_s": read_s + adapter_s, "merged_mode_total_s": read_s + merged_s}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m actor.readback_bench", description=__doc__.splitlines()[0])
    ap.add_argument("--shape", default="3.7b", help="a zoo.build.SHAPES name (3.7b: Tucano2-qwen-3.7B)")
    ap.add_argument("--rank", type=int, default=16)
    ap.add_argument("--json", type=Path, default=None)
    a = ap.parse_args(argv)
    r = run(a.shape, a.rank)
    print(f"readback per sync, {r['model']} LoRA r={r['lora_rank']} ({r['lora_params']:,} params, "
          f"{r['adapter_mb_bf16']:.0f} MiB bf16), CPU:")
    print(f"{'part':<34}{'seconds':>10}")
    for k in ("read_adapter_s", "adapter_mode_compare_s", "adapter_mode_total_s", "merged_mode_compare_s",
              "merged_mode_total_s"):
        print(f"{k:<34}{r[k]:>10.3f}")
    if a.json:
        a.json.parent.mkdir(parents=True, exist_ok=True)
        a.json.write_text(json.dumps(r, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
