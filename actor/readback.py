"""Readback: what each vLLM worker serves, read out of the engine after a load and compared with the published adapter.

``ActorWorkerExtension`` (``worker_extension_cls``, both serve modes) adds ``readback_served`` to every worker, one
per tensor-parallel rank. The actor calls it through ``collective_rpc`` after each load and sums what the workers
return (:func:`combine`); the cosine it reports is this one, never one computed from the files it handed the engine.

- ``adapter`` mode: the A/B matrices in the GPU LoRA slot vLLM's LoRA manager put the adapter id in
  (``lora_a_stacked`` / ``lora_b_stacked`` of every LoRA layer: what the punica kernels multiply by; vLLM folds the
  scale into B). A layer of a targeted module that is not in the slot, an adapter id that holds no slot, or an empty
  slot all read back as zeros.
- ``merged`` mode: the engine's weights of every targeted layer. On a GPU the live parameter; on CPU vLLM drops the
  parameter after packing it for oneDNN (``dispatch_cpu_unquantized_gemm(remove_weight=True)``), so the weight is
  read through the layer's own kernel, one identity block at a time (one-hot rows: exact in every dtype).

The reference is the published adapter (read again from the file whose checksum the learner published), cut to this
rank's shard from the layer's own partition sizes (q/k/v heads with their KV replicas, gate/up halves, the
row-parallel input split); the served delta is compared with it over every matrix, also per module type, so a
failure names what differs. ``TUCANO2_FAULT_ZERO_SERVED=<module type>@<n>`` (a fault for the tests, never set by the
project) zeroes that module type's served delta from each worker's n-th load on, inside the engine.
"""

from __future__ import annotations

import os
import time

from sync.tensors import DeltaCosine

from actor.merge import DEFAULT_PACKED, LoraMergeExtension, lora_scale, read_adapter

FAULT_ENV = "TUCANO2_FAULT_ZERO_SERVED"
IDENTITY_BLOCK = 2048  # rows of the identity pushed through a CPU kernel at a time


def fault() -> tuple[str, int] | None:
    """``(module type, from load n)`` of the injected fault, if the tests set one."""
    spec = os.environ.get(FAULT_ENV)
    if not spec:
        return None
    kind, _, n = spec.partition("@")
    return kind, int(n or 1)


def shard_slices(layer, n_members: int) -> tuple[list[slice], slice]:
    """Rows of each member's full matrix this rank holds (in the layer's order), and the columns."""
    from vllm.model_executor.layers.linear import (
        ColumnParallelLinear,
        MergedColumnParallelLinear,
        QKVParallelLinear,
        RowParallelLinear,
    )

    rank = getattr(layer, "tp_rank", 0)
    tp = getattr(layer, "tp_size", 1)
    every = slice(None)
    if isinstance(layer, QKVParallelLinear):
        hs, nq, nkv = layer.head_size, layer.num_heads, layer.num_kv_heads
        kv = rank // layer.num_kv_head_replicas
        q = slice(rank * nq * hs, (rank + 1) * nq * hs)
        k = slice(kv * nkv * hs, (kv + 1) * nkv * hs)
        return [q, k, k][:n_members], every
    if isinstance(layer, MergedColumnParallelLinear):
        out = [s // tp for s in layer.output_sizes]
        return [slice(rank * o, (rank + 1) * o) for o in out], every
    if isinstance(layer, ColumnParallelLinear):
        o = layer.output_size_per_partition
        return [slice(rank * o, (rank + 1) * o)], every
    if isinstance(layer, RowParallelLinear):
        i = layer.input_size_per_partition
        return [every], slice(rank * i, (rank + 1) * i)
    return [every] * n_members, every


def engine_weight(layer):
    """The weight shard ``layer`` computes with (out x in), read from the engine itself."""
    import torch

    w = getattr(layer, "weight", None)
    if w is not None and w.numel() > 0:
        return w.detach()
    n_in = layer.input_size_per_partition
    dtype = layer.params_dtype
    rows = []
    for s in range(0, n_in, IDENTITY_BLOCK):
        e = min(n_in, s + IDENTITY_BLOCK)
        eye = torch.zeros(e - s, n_in, dtype=dtype)
        eye[torch.arange(e - s), torch.arange(s, e)] = 1
        rows.append(layer.quant_method.apply(layer, eye, None))
    return torch.cat(rows, 0).T


def combine(results: list[dict]) -> dict:
    """The workers' readbacks summed into one: ``cosine``, ``worst`` (module type, cosine) and ``missing``."""
    total, types = DeltaCosine(), {}
    for r in results:
        total.merge(r["total"])
        for kind, d in r["types"].items():
            types.setdefault(kind, DeltaCosine()).merge(d)
    missing = results[0]["missing"] if results else []
    for m in missing:  # targeted by the adapter, applied by no layer of the engine (same on every rank: once)
        total.merge({"dot": 0.0, "n1": 0.0, "n2": m["n2"]})
        types.setdefault(m["kind"], DeltaCosine()).merge({"dot": 0.0, "n1": 0.0, "n2": m["n2"]})
    worst = min(((k, c.value) for k, c in types.items()), key=lambda kc: kc[1], default=None)
    return {"cosine": total.value, "worst": worst, "missing": [m["name"] for m in missing],
            "seconds": max((r["seconds"] for r in results), default=0.0), "ranks": len(results)}


def describe(rb: dict) -> str:
    """One phrase on what differs most, for the learner's stop line."""
    parts = []
    if rb.get("worst") is not None:
        kind, cos = rb["worst"]
        parts.append(f"{kind} served at cosine {cos:.4f}")
    if rb.get("missing"):
        parts.append(f"{len(rb['missing'])} targeted module(s) applied by no engine layer (e.g. {rb['missing'][0]})")
    return "; ".join(parts)


class ActorWorkerExtension(LoraMergeExtension):
    """vLLM worker mixin: merged serving (:class:`actor.merge.LoraMergeExtension`) and the readback."""

    def _packed(self, model) -> dict:
        return getattr(model, "packed_modules_mapping", None) or DEFAULT_PACKED

    def _served_pairs(self, pairs: dict) -> dict:
        """Merged mode: the test fault leaves one module type at its base weights."""
        kill = self._fault_now()
        return {m: ab for m, ab in pairs.items() if m.rpartition(".")[2] != kill}

    def _fault_now(self) -> str | None:
        self._loads = getattr(self, "_loads", 0) + 1
        f = fault()
        return f[0] if f is not None and self._loads >= f[1] else None

    def readback_served(self, adapter_dir: str | None, lora_id: int | None = None) -> dict:
        """Compare what this worker serves with the adapter in ``adapter_dir`` (None: the base model)."""
        t0 = time.perf_counter()
        if adapter_dir is None:
            config, pairs = {"r": 1, "lora_alpha": 1}, {}
        else:
            config, pairs, _ = read_adapter(adapter_dir)
        scale = lora_scale(config)
        model = self.model_runner.get_model()
        if lora_id is not None:
            out = self._readback_lora(model, pairs, scale, lora_id, self._fault_now())
        else:
            out = self._readback_merged(model, pairs, scale)
        out["seconds"] = time.perf_counter() - t0
        return out

    def _members(self, model, name: str) -> list[str]:
        parent, _, leaf = name.rpartition(".")
        return [f"{parent}.{m}" for m in self._packed(model).get(leaf, [leaf])]

    @staticmethod
    def _result(total, types, pairs, used, scale) -> dict:
        missing = [{"name": n, "kind": n.rpartition(".")[2],
                    "n2": DeltaCosine.lowrank_norm2(a, b * scale)} for n, (a, b) in sorted(pairs.items())
                   if n not in used]
        return {"total": total.as_dict(), "types": {k: c.as_dict() for k, c in types.items()}, "missing": missing}

    def _readback_lora(self, model, pairs, scale, lora_id, kill) -> dict:
        import torch

        from vllm.lora.layers.base_linear import BaseLinearLayerWithLoRA

        mgr = self.model_runner.lora_manager._adapter_manager
        slot = mgr.lora_index_to_id.index(lora_id) if lora_id in mgr.lora_index_to_id else None
        total, types, used = DeltaCosine(), {}, set()
        for name, module in mgr.modules.items():
            if not isinstance(module, BaseLinearLayerWithLoRA):  # PEFT's all-linear never targets lm_head/embeddings
                continue
            members = self._members(model, name)
            if len(members) != len(module.lora_a_stacked):
                members = [name]
            rows, cols = shard_slices(module.base_layer, len(members))
            for s, member in enumerate(members):
                kind = member.rpartition(".")[2]
                a_slot, b_slot = module.lora_a_stacked[s], module.lora_b_stacked[s]
                dev = a_slot.device
                ref = pairs.get(member)
                if ref is None:   # not targeted: the slot must hold nothing
                    a_r = torch.zeros(1, a_slot.shape[-1], device=dev)
                    b_r = torch.zeros(b_slot.shape[-2], 1, device=dev)
                else:
                    used.add(member)
                    a_r = ref[0].to(dev, torch.float32)[:, cols]
                    b_r = ref[1].to(dev, torch.float32)[rows[s]] * scale
                if slot is None:  # the adapter holds no slot: nothing of it is served
                    a_s, b_s = torch.zeros_like(a_r[:1]), torch.zeros_like(b_r[:, :1])
                else:
                    if kill == kind:
                        b_slot[slot].zero_()
                    a_s, b_s = a_slot[slot, 0], b_slot[slot, 0]
                for acc in (total, types.setdefault(kind, DeltaCosine())):
                    acc.add_lowrank(a_s, b_s, a_r, b_r)
        return self._result(total, types, pairs, used, scale)

    def _readback_merged(self, model, pairs, scale) -> dict:
        import torch

        self._merge_state()
        self._base([f"{m}.weight" for mod in pairs for m in self._siblings(mod)], next(model.parameters()).device)
        dtype = self.vllm_config.model_config.dtype
        targets = {}
        for mod in set(pairs) | self._dirty:
            for m in self._siblings(mod):
                targets[m] = None
        layers = dict(model.named_modules())
        total, types, used = DeltaCosine(), {}, set()
        fused: dict[str, list[str]] = {}
        for member in targets:
            parent, _, leaf = member.rpartition(".")
            name = next((f"{parent}.{g}" for g, ms in self._packed(model).items() if leaf in ms
                         and f"{parent}.{g}" in layers), member)
            fused.setdefault(name, self._members(model, name) if name != member else [member])
        for name, members in sorted(fused.items()):
            layer = layers.get(name)
            if layer is None:
                continue
            rows, cols = shard_slices(layer, len(members))
            served = engine_weight(layer).float()
            dev, off = served.device, 0
            for s, member in enumerate(members):
                w0 = self._w0[f"{member}.weight"].to(dev)[rows[s], cols]
                got = served[off:off + w0.shape[0]]
                off += w0.shape[0]
                ref = pairs.get(member)
                if ref is None:
                    delta = torch.zeros_like(got)
                else:
                    used.add(member)
                    delta = scale * (ref[1].to(dev, torch.float32)[rows[s]] @ ref[0].to(dev, torch.float32)[:, cols])
                kind = member.rpartition(".")[2]
                for acc in (total, types.setdefault(kind, DeltaCosine())):
                    acc.add_dense(got - w0.to(dtype).float(), delta)
        return self._result(total, types, pairs, used, scale)
