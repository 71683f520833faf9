"""Merged serving: fold a PEFT LoRA adapter into the engine's weights, inside each vLLM worker.

``LoraMergeExtension`` is mixed into every vLLM worker through ``worker_extension_cls``. The actor
process calls ``LLM.collective_rpc("merge_lora_dir", args=(adapter_dir,))``: each worker (one per
tensor-parallel rank) reads the adapter from the file system itself (a path crosses the RPC cheaply;
tensors would be serialised into Python lists), computes

    W = W0 + (lora_alpha / r) * B @ A          (float32, cast once to the engine dtype at the end)

with ``W0`` read from the *base checkpoint*, never from the live (already merged) weights, so merges
do not accumulate error, and hands the result to ``model_runner.reload_weights`` under checkpoint names
(``model.layers.0.self_attn.q_proj.weight``). vLLM's ``load_weights`` maps those onto its fused
parameters (q/k/v -> ``qkv_proj``, gate/up -> ``gate_up_proj``) and shards them per rank.

Two details of vLLM's layer-wise reload shape what we send:
- a fused layer is re-materialised from what was loaded into it, so a partially loaded ``qkv_proj``
  would keep garbage in the shards not sent: every member of a fused group (and any bias) is sent,
  unchanged members as ``W0``;
- modules a previous version changed but the new one does not target are sent back as ``W0``.

The caller resets the prefix cache afterwards (cached KV was computed under the old weights).

Precision: ``W0 + delta`` is cast to the engine dtype. In float32 that keeps the delta; in bf16 it rounds
every element whose delta is under half a bf16 step of ``W0`` back to ``W0``, which at the handoff's learning
rates is most of an early adapter (served-delta cosine 0.36 after 10 updates). Each merge therefore returns
``delta_cosine``, the actor acknowledges it, and the learner stops the run below
``sync.min_delta_cosine``; ``actor.serve_mode: auto`` uses adapter mode on bf16/fp16 engines.
Departure from PEFT: PEFT keeps A/B separate at inference; here there are no LoRA kernels in the
hot path, which on CPU is 2.6x faster (DESIGN.md) and on GPU removes the punica overhead.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

from sync.tensors import DeltaCosine

PEFT_PREFIX = "base_model.model."
ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_CONFIG = "adapter_config.json"
# Fallback when the model class does not declare packed_modules_mapping.
DEFAULT_PACKED = {"qkv_proj": ["q_proj", "k_proj", "v_proj"], "gate_up_proj": ["gate_proj", "up_proj"]}


def lora_scale(adapter_config: dict) -> float:
    """PEFT's scaling: lora_alpha / r, or lora_alpha / sqrt(r) with rsLoRA."""
    r = int(adapter_config["r"])
    alpha = float(adapter_config.get("lora_alpha", r))
    if adapter_config.get("use_rslora"):
        return alpha / r ** 0.5
    return alpha / r


def read_adapter(adapter_dir: str | Path) -> tuple[dict, dict[str, tuple], str]:
    """(adapter_config, {module checkpoint name: (A, B)}, wire checksum) of a PEFT adapter directory.

    The file is read once; the checksum (``sync.tensors.checksum``, what the learner published) is
    computed over the very bytes the tensors are made from, so an ack proves what was merged.
    """
    from sync.tensors import checksum, read_safetensors, to_torch

    adapter_dir = Path(adapter_dir)
    config = json.loads((adapter_dir / ADAPTER_CONFIG).read_text())
    blobs, _ = read_safetensors(adapter_dir / ADAPTER_WEIGHTS)
    fingerprint = checksum(blobs)
    tensors = to_torch(blobs)
    pairs: dict[str, dict[str, object]] = {}
    for name, t in tensors.items():
        if ".lora_A." in name:
            mod, part = name.split(".lora_A.")[0], "A"
        elif ".lora_B." in name:
            mod, part = name.split(".lora_B.")[0], "B"
        else:
            raise ValueError(f"adapter tensor {name!r} is not a LoRA A/B matrix (unsupported in merged mode)")
        if part == "A" and not name.endswith("lora_A.weight") or part == "B" and not name.endswith(
                "lora_B.weight"):
            raise ValueError(f"adapter tensor {name!r}: expected <module>.lora_A.weight / lora_B.weight")
        mod = mod.removeprefix(PEFT_PREFIX)
        pairs.setdefault(mod, {})[part] = t
    out = {}
    for mod, ab in pairs.items():
        if set(ab) != {"A", "B"}:
            raise ValueError(f"adapter module {mod!r} lacks its lora_{'B' if 'A' in ab else 'A'} matrix")
        out[mod] = (ab["A"], ab["B"])
    return config, out, fingerprint


class BaseCheckpoint:
    """Read-only access to the base model's safetensors, tensor by tensor (sharded or not)."""

    def __init__(self, model: str):
        path = Path(model)
        if not path.is_dir():
            from huggingface_hub import snapshot_download

            path = Path(snapshot_download(model, allow_patterns=["*.safetensors", "*.json"]))
        self.dir = path
        index = path / "model.safetensors.index.json"
        if index.exists():
            self.where = {k: path / v for k, v in json.loads(index.read_text())["weight_map"].items()}
        else:
            from safetensors import safe_open

            files = sorted(path.glob("*.safetensors"))
            if not files:
                raise FileNotFoundError(f"no safetensors weights in {path}")
            self.where = {}
            for f in files:
                with safe_open(str(f), "pt") as sf:
                    self.where.update({k: f for k in sf.keys()})

    def __contains__(self, name: str) -> bool:
        return name in self.where

    def get(self, names: list[str]) -> dict:
        from safetensors import safe_open

        out, by_file = {}, {}
        for n in names:
            by_file.setdefault(self.where[n], []).append(n)
        for f, ns in by_file.items():
            with safe_open(str(f), "pt") as sf:
                for n in ns:
                    out[n] = sf.get_tensor(n)
        return out


class LoraMergeExtension:
    """vLLM worker mixin (``worker_extension_cls="actor.merge.LoraMergeExtension"``).

    State per worker: ``_w0`` (base weights of every module ever merged, checkpoint dtype, about the
    adapter's target share of the model: on a GPU the engine has to itself where there is room, else pinned host
    memory, see :meth:`_place`) and ``_dirty`` (modules currently differing from the base).
    """

    _w0_host = False
    """Keep W0 in host memory whatever the GPU's free memory says (``actor.shared_gpu``, set by each merge call)."""

    def _served_pairs(self, pairs: dict) -> dict:
        """The modules merged (all; ``actor.readback`` overrides it to inject a test fault)."""
        return pairs

    def _merge_state(self):
        if not hasattr(self, "_w0"):
            model = self.model_runner.get_model()
            packed = getattr(model, "packed_modules_mapping", None) or DEFAULT_PACKED
            self._member_to_group = {m: list(ms) for ms in packed.values() for m in ms}
            self._ckpt = BaseCheckpoint(self.vllm_config.model_config.model)
            self._w0: dict = {}
            self._dirty: set[str] = set()
        return self

    def _siblings(self, module: str) -> list[str]:
        parent, _, leaf = module.rpartition(".")
        group = self._member_to_group.get(leaf)
        if not group:
            return [module]
        return [f"{parent}.{m}" if parent else m for m in group]

    def _base(self, names: list[str], device) -> dict:
        missing = [n for n in names if n not in self._w0]
        if missing:
            self._w0.update(self._place(self._ckpt.get(missing), device, host=self._w0_host))
        return {n: self._w0[n] for n in names}

    @staticmethod
    def _place(tensors: dict, device, host: bool = False) -> dict:
        """On a GPU: keep W0 on the device when there is room (2x its size plus 1 GiB free), else in pinned host
        memory; on CPU as read. ``host`` (a GPU shared with a learner): always pinned host memory. The free memory a
        shared GPU shows at the first load includes the learner's share, which the learner has not allocated yet
        (its optimizer state, activations and logits come with its first steps): W0 there would take the learner's
        memory, and the learner would fail out of memory later. Host memory costs a copy of the targeted W0 over
        PCIe at each merge (0.5B: ~0.7 GB, ~30 ms), not at each step."""
        import torch

        if device.type != "cuda":
            return tensors
        if not host:
            need = sum(t.numel() * t.element_size() for t in tensors.values())
            free, _ = torch.cuda.mem_get_info(device)
            if free > 2 * need + 2**30:
                return {n: t.to(device) for n, t in tensors.items()}
        return {n: t.pin_memory() for n, t in tensors.items()}

    def merge_lora_dir(self, adapter_dir: str | None, expect_checksum: str | None = None,
                       shared_gpu: bool = False) -> dict:
        """Serve ``W0 + scale * B @ A`` for the adapter in ``adapter_dir`` (None: back to the base).

        ``expect_checksum``: refuse (ValueError, weights untouched) unless the file's wire checksum is this.
        ``shared_gpu`` (``actor.shared_gpu``): W0 in host memory (:meth:`_place`).
        Returns ``{"fingerprint", "modules", "seconds", "delta_cosine"}``; ``delta_cosine`` compares the delta
        the engine now serves, ``dtype(W0 + delta) - dtype(W0)``, with the adapter's ``delta`` over every
        merged matrix (1.0 in float32 up to rounding; a bf16 engine rounds a small delta away). Raises on an
        adapter that does not fit the model (the engine's weights are untouched in that case: everything is
        checked before loading).
        """
        import torch

        t0 = time.perf_counter()
        self._merge_state()
        self._w0_host = bool(shared_gpu)
        if adapter_dir is None:
            config, pairs, fingerprint = {"r": 1, "lora_alpha": 1}, {}, "base"
        else:
            config, pairs, fingerprint = read_adapter(adapter_dir)
            if expect_checksum is not None and fingerprint != expect_checksum:
                raise ValueError(f"adapter file hashes to {fingerprint}, expected {expect_checksum}")
            pairs = self._served_pairs(pairs)
        scale = lora_scale(config)
        for mod in pairs:
            if f"{mod}.weight" not in self._ckpt:
                raise ValueError(f"adapter targets {mod!r}, which has no weight in the base checkpoint")
        touched: set[str] = set()
        for mod in set(pairs) | self._dirty:
            touched.update(self._siblings(mod))
        names = sorted(f"{m}.weight" for m in touched)
        names += sorted(f"{m}.bias" for m in touched if f"{m}.bias" in self._ckpt)
        device = next(self.model_runner.get_model().parameters()).device
        base = self._base(names, device)
        for mod, (a, b) in pairs.items():
            w0 = base[f"{mod}.weight"]
            if a.dim() != 2 or b.dim() != 2 or b.shape[1] != a.shape[0] or (b.shape[0], a.shape[1]) != tuple(
                    w0.shape):
                raise ValueError(f"{mod}: LoRA shapes A{tuple(a.shape)} B{tuple(b.shape)} do not fit "
                                 f"weight {tuple(w0.shape)}")
        dtype = self.vllm_config.model_config.dtype
        cosine = DeltaCosine()  # the delta actually served (engine dtype) against the adapter's

        def weights():
            for name in names:
                w0 = base[name]
                mod = name.rsplit(".", 1)[0]
                if name.endswith(".weight") and mod in pairs:
                    a, b = pairs[mod]
                    w0f = w0.to(device, torch.float32)
                    delta = scale * (b.to(device, torch.float32) @ a.to(device, torch.float32))
                    served = (w0f + delta).to(dtype)
                    cosine.add_dense(served.float() - w0f.to(dtype).float(), delta)
                    yield name, served
                else:
                    yield name, w0.to(device, dtype)

        # vLLM warns once per layer not in the iterator ("Failed to load weights"): expected here.
        quiet = [logging.getLogger(f"vllm.model_executor.model_loader.reload.{m}") for m in ("layerwise", "inplace")]
        levels = [q.level for q in quiet]
        for q in quiet:
            q.setLevel(logging.ERROR)
        try:
            self.model_runner.reload_weights(weights_iterator=weights())
        finally:
            for q, lv in zip(quiet, levels, strict=True):
                q.setLevel(lv)
        self._dirty = set(pairs)
        return {"fingerprint": fingerprint, "modules": len(pairs), "seconds": time.perf_counter() - t0,
                "delta_cosine": cosine.value}
