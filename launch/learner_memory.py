"""``python -m launch.learner_memory --config FILE [--set k=v ...] [--layers N] [--json PATH]``

What one learner micro-batch really keeps and allocates, counted on the CPU at the model's real shape, next to
``launch.memory``'s estimate of it. The learner's own forward and backward (:func:`learner.loss.model_completion_logps`
on the PEFT model, gradient checkpointing as configured, a policy-gradient loss) run under torch's fake tensors:
every op runs its shape and dtype logic and its autograd bookkeeping, and no memory is allocated or computed, so the
0.5B and 3.7B shapes count in seconds on a laptop. Two counts:

* saved for backward (``torch.autograd.graph.saved_tensors_hooks``): the distinct storages autograd keeps, the
  weights excluded, split into the logits-sized ones (last dimension = the vocabulary) and the rest;
* live bytes (a ``TorchDispatchMode`` that adds each new storage an op returns and drops it when freed): the peak
  over the forward and the backward, weights excluded; and the same for the LM head and the logprobs alone (from
  the final hidden states), which ``launch.memory`` budgets as "logits".

What it does not see: the CUDA caching allocator's rounding and fragmentation (the estimate's headroom), kernels'
workspaces (cuBLAS, FlashAttention's), and which attention kernel the GPU picks: the CPU's fused SDPA keeps the output
and a log-sum-exp per head and position, as FlashAttention does on the GPU. A row with padding gets a mask and on
the GPU may take the memory-efficient kernel, which keeps the same. ``--layers N`` counts N and N + 1 decoder
layers and scales the difference to the model's count (quicker; from the second layer on each keeps the same).
"""

from __future__ import annotations

import argparse
import json
import sys
import weakref
from pathlib import Path

GiB = 2**30


class LiveBytes:
    """A ``TorchDispatchMode`` (built on first use: torch is imported lazily) counting the bytes of the storages ops
    return, from their creation until freed; ``peak`` is the most alive at once. ``ignore``: tensors whose storage
    is not counted (the weights: an op's view of one, a transpose, would otherwise count it as new)."""

    def __new__(cls, ignore=()):
        from torch.utils._python_dispatch import TorchDispatchMode
        from torch.utils._pytree import tree_flatten

        class _Live(TorchDispatchMode):
            def __init__(self):
                super().__init__()
                self.sizes: dict[int, int] = {}
                self.refs: dict[int, weakref.ref] = {}
                self.now = self.peak = 0
                self.ignore = {id(t.untyped_storage()) for t in ignore}
                self.held = list(ignore)  # their storages stay alive, so their ids are not reused

            def _track(self, t) -> None:
                st = t.untyped_storage()
                key = id(st)
                if key in self.sizes or key in self.ignore:
                    return
                n = st.nbytes()
                self.sizes[key] = n
                self.now += n
                self.peak = max(self.peak, self.now)

                def freed(_ref, key=key):
                    self.now -= self.sizes.pop(key, 0)
                    self.refs.pop(key, None)

                self.refs[key] = weakref.ref(st, freed)

            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                import torch

                out = func(*args, **(kwargs or {}))
                for t in tree_flatten(out)[0]:
                    if isinstance(t, torch.Tensor):
                        self._track(t)
                return out

        return _Live()


class SavedBytes:
    """Storages autograd saves for backward inside this context (each counted once), parameters excluded."""

    def __init__(self, params, vocab: int):
        self.skip = {id(p.untyped_storage()) for p in params}
        self.vocab = vocab
        self.seen: set[int] = set()
        self.logits = self.other = self.count = 0
        self.keep: list = []  # holds the storages counted, so that their ids are not reused

    def __enter__(self):
        import torch

        def pack(t):
            st = t.untyped_storage()
            key = id(st)
            if key not in self.skip and key not in self.seen:
                self.seen.add(key)
                self.keep.append(st)
                self.count += 1
                if t.dim() and t.shape[-1] == self.vocab:
                    self.logits += st.nbytes()
                else:
                    self.other += st.nbytes()
            return t

        self._ctx = torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t)
        self._ctx.__enter__()
        return self

    def __exit__(self, *exc):
        self._ctx.__exit__(*exc)


def hf_config(shape, layers: int | None = None):
    """A transformers Qwen3 config of ``shape`` (a :class:`launch.memory.Shape`), ``layers`` decoder layers."""
    from transformers import Qwen3Config

    return Qwen3Config(hidden_size=shape.hidden, num_hidden_layers=layers or shape.layers,
                       num_attention_heads=shape.heads, num_key_value_heads=shape.kv_heads, head_dim=shape.head_dim,
                       intermediate_size=shape.intermediate, vocab_size=shape.vocab, tie_word_embeddings=shape.tied,
                       max_position_embeddings=8192, rms_norm_eps=1e-6,
                       rope_parameters={"rope_theta": 1_000_000.0, "rope_type": "default"})


def _fake_weights(model, dtype, mode) -> None:
    """Every parameter and buffer of the meta-device ``model`` replaced by a fake CPU tensor (parameters in
    ``dtype``: DeepSpeed casts the whole module, LoRA included, to the training dtype; tied weights stay tied)."""
    import torch

    made: dict[int, torch.nn.Parameter] = {}
    for mod in model.modules():
        for name, p in list(mod._parameters.items()):
            if p is None:
                continue
            if id(p) not in made:
                with mode:
                    t = torch.empty(p.shape, dtype=dtype if p.is_floating_point() else p.dtype)
                made[id(p)] = torch.nn.Parameter(t, requires_grad=p.requires_grad)
            mod._parameters[name] = made[id(p)]
        for name, buf in list(mod._buffers.items()):
            if buf is not None:
                with mode:
                    mod._buffers[name] = torch.zeros(buf.shape, dtype=buf.dtype)


def load_loss(path) -> object:
    """Another ``learner/loss.py`` as a module (``--baseline-loss``: the one before #33, ``git show 65eeb2a:learner/
    loss.py``), whose ``model_completion_logps`` and ``completion_logps`` are counted instead of this checkout's."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("baseline_loss", path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # its dataclasses look their module up
    spec.loader.exec_module(mod)
    return mod


def count(cfg, shape, layers: int | None = None, loss=None) -> dict:
    """One micro-batch of ``cfg``'s learner at ``shape`` with ``layers`` decoder layers (default all), under fake
    tensors: bytes saved for backward and peak live bytes (weights excluded), of the whole micro-batch and of the
    LM head with the logprobs alone. Every row at its longest (``max_seq_length`` tokens, ``max_completion_length``
    of them completion), as the estimate assumes. ``loss``: a module with ``model_completion_logps`` and
    ``completion_logps`` to count instead of :mod:`learner.loss` (:func:`load_loss`)."""
    import torch
    from torch._subclasses.fake_tensor import FakeTensorMode

    from learner.engine import build_peft_model

    if loss is None:
        import learner.loss as loss

    ls = cfg.learner
    dtype = torch.float32 if ls.precision == "fp32" else torch.bfloat16
    b, length, c = ls.micro_batch_size, cfg.max_seq_length, cfg.max_completion_length
    prompt = length - c
    from transformers import Qwen3ForCausalLM

    with torch.device("meta"):  # the model's structure, without memory; made fake below
        base = Qwen3ForCausalLM(hf_config(shape, layers))
        model = build_peft_model(None, lora_r=cfg.lora_r, lora_alpha=cfg.lora_alpha, dtype=dtype, base=base,
                                 gradient_checkpointing=ls.gradient_checkpointing)
    mode = FakeTensorMode()
    _fake_weights(model, dtype, mode)
    with mode:
        model.train()
        params = list(model.parameters())
        ids = torch.randint(3, shape.vocab, (b, length))
        mask = torch.ones_like(ids)
        weights = torch.randn(b, c)
        fixed = params + list(model.buffers()) + [ids, mask, weights]
        live = LiveBytes(fixed)
        with live, SavedBytes(params, shape.vocab) as saved:
            logps = loss.model_completion_logps(model, ids, mask, prompt, cfg.temperature)
            forward_peak = live.peak
            (logps * weights).sum().backward()
        whole = {"saved_logits": saved.logits, "saved_other": saved.other, "saved_tensors": saved.count,
                 "forward_peak": forward_peak, "peak": live.peak}
        del logps
        for p in params:
            p.grad = None
        # the LM head and the logprobs alone, from the final hidden states
        hidden = torch.randn(b, c + 1, shape.hidden, dtype=dtype, requires_grad=True)
        head = model.get_output_embeddings()
        live = LiveBytes(fixed + [hidden])
        with live, SavedBytes(params, shape.vocab) as saved_head:
            logps = loss.completion_logps(head(hidden), ids[:, prompt - 1:], 1, cfg.temperature)
            (logps * weights).sum().backward()
        whole.update(head_peak=live.peak, head_saved_logits=saved_head.logits, head_saved_other=saved_head.other)
    whole["layers"] = layers or shape.layers
    return whole


def compare(cfg, shape, layers: int | None = None, loss=None) -> dict:
    """:func:`count` of the whole model, or (``layers``, at least 2) at ``layers`` and ``layers + 1`` decoder layers
    scaled to the model's count (from the second layer on, each adds the same: 0.5B, V4.1, exact to 0.01 GiB),
    beside :func:`launch.memory.learner_part`'s activations and logits, in GiB."""
    from launch.memory import learner_part

    if layers is None or layers >= shape.layers:
        a = b = count(cfg, shape, loss=loss)
        more = 0
    else:
        if layers < 2:
            raise ValueError("counting fewer than all layers needs at least 2 (the first differs from the next)")
        a, b = count(cfg, shape, layers, loss), count(cfg, shape, layers + 1, loss)
        more = shape.layers - layers

    def full(key: str) -> float:
        return (a[key] + more * (b[key] - a[key])) / GiB

    est = learner_part(cfg, shape).items
    return {
        "measured": {"micro_batch_peak_gib": full("peak"), "forward_peak_gib": full("forward_peak"),
                     "logits_peak_gib": a["head_peak"] / GiB, "saved_logits_gib": a["saved_logits"] / GiB,
                     "saved_other_gib": full("saved_other")},
        "estimate": {"activations_gib": est["activations"], "logits_gib": est["logits"],
                     "micro_batch_gib": est["activations"] + est["logits"]},
        "counted_layers": sorted({a["layers"], b["layers"]}),
    }


def main(argv: list[str] | None = None) -> int:
    from configs import ConfigError, load_config
    from configs.__main__ import add_config_args

    p = argparse.ArgumentParser(prog="python -m launch.learner_memory", description=__doc__.split("\n\n")[1])
    add_config_args(p)
    p.add_argument("--layers", type=int, default=None,
                   help="count N and N + 1 decoder layers (N >= 2) and scale to the model's; default: all of them")
    p.add_argument("--baseline-loss", type=Path, default=None, metavar="LOSS_PY",
                   help="also count with this learner/loss.py (e.g. `git show 65eeb2a:learner/loss.py`), side by side")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    try:
        cfg = load_config(args.config, args.overrides)
    except ConfigError as e:
        print(f"launch.learner_memory: invalid config: {e}", file=sys.stderr)
        return 2
    if args.layers is not None and args.layers < 2:
        print("launch.learner_memory: --layers must be at least 2", file=sys.stderr)
        return 2
    if args.baseline_loss is not None and not args.baseline_loss.is_file():
        print(f"launch.learner_memory: --baseline-loss {args.baseline_loss}: no such file", file=sys.stderr)
        return 2
    from launch.memory import model_shape

    try:
        shape = model_shape(str(cfg.model_id))
    except ValueError as e:
        print(f"launch.learner_memory: {e}", file=sys.stderr)
        return 2
    out = compare(cfg, shape, args.layers)
    base = compare(cfg, shape, args.layers, load_loss(args.baseline_loss)) if args.baseline_loss else None
    m, e = out["measured"], out["estimate"]
    ls = cfg.learner
    print(f"{cfg.model_id}: micro-batch {ls.micro_batch_size} x {cfg.max_seq_length} tokens "
          f"({cfg.max_completion_length} completion), {ls.precision}, gradient checkpointing "
          f"{'on' if ls.gradient_checkpointing else 'off'}, temperature {cfg.temperature:g}")
    extra = " baseline loss.py |" if base else ""
    print(f"| GiB | measured (fake tensors) |{extra} launch.memory's estimate |")
    print("| --- | ---: |" + (" ---: |" if base else "") + " ---: |")
    rows = [("LM head + logprobs, peak", "logits_peak_gib", f"{e['logits_gib']:.2f} (logits)"),
            ("micro-batch forward + backward, peak", "micro_batch_peak_gib",
             f"{e['micro_batch_gib']:.2f} (activations + logits)"),
            ("saved for backward: logits-sized", "saved_logits_gib", ""),
            ("saved for backward: the rest", "saved_other_gib", "")]
    for name, key, est in rows:
        b = f" {base['measured'][key]:.2f} |" if base else ""
        print(f"| {name} | {m[key]:.2f} |{b} {est} |")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"config": args.config, "overrides": args.overrides, **out,
                                         "baseline": base and base["measured"]}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
