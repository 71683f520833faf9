"""``python -m learner.export --merge``: the adapter merged into the base weights, and proof that it survived the cast.

The merge is done in float32 (``W = W0 + (alpha / r) * B @ A`` by PEFT's ``merge_and_unload`` on a float32 model),
then the merged model is cast to the dtype asked for. Two checks decide whether what is written is still the model
trained:

* **The delta that survives the cast, per module type.** For every merged layer, ``served = cast(W0 + delta) -
  cast(W0)`` (in float32) is what a model shipped in that dtype adds to its base; its cosine with the trained
  ``delta``, summed over the layers of each module type (``q_proj``, ..., ``down_proj``), is reported. In bf16 an early
  adapter (a delta under half a bf16 step of ``W0``) keeps a fraction of it: DESIGN.md measured 0.36 after 10 updates
  at the handoff's learning rates. Below :data:`MIN_COSINE` (``sync.min_delta_cosine``'s default: the threshold the
  run's own readback holds served weights to) the merge is refused.
* **Logprobs on eval prompts.** The learner's policy (the base in float32 plus the adapter, PEFT, unmerged) scores the
  reference answers of a few eval prompts; the merged model in the asked dtype scores the same tokens. The floor is what
  the dtype costs anyway: the base cast to that dtype plus the adapter, unmerged (what vLLM's adapter mode serves). A
  merged model whose mean per-token gap exceeds ``2 x floor + ABS_SLACK`` is refused: its weights sample from another
  policy than the dtype alone explains.

``--force`` writes it anyway (the report says what was lost). Runs on CPU (an export is a one-off; the merge and the few
forwards take minutes for 3.7B in host memory).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

MIN_COSINE = 0.99
ABS_SLACK = 1e-4
"""Mean per-token logprob gap tolerated on top of twice the dtype's floor (float32's own rounding: the floor there is
0, merged-vs-unmerged float32 measured ~1e-6 on the tiny model)."""
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class MergeCheck:
    dtype: str
    cosines: dict[str, float] = field(default_factory=dict)   # module type -> cosine of the surviving delta
    gap: float = float("nan")           # mean |merged - learner| logprob per token
    floor: float = float("nan")         # mean |base-in-dtype + adapter - learner|
    tokens: int = 0
    prompts: int = 0

    @property
    def limit(self) -> float:
        return 2 * self.floor + ABS_SLACK

    def refusal(self) -> str | None:
        """One line saying why the merge is not the trained model, or None."""
        low = {k: v for k, v in self.cosines.items() if not v >= MIN_COSINE}
        if low:
            worst = min(low, key=low.get)
            return (f"a {self.dtype} merge keeps the trained delta of {worst} at cosine {low[worst]:.4f} "
                    f"(< {MIN_COSINE}; {len(low)} of {len(self.cosines)} module types below): the cast rounds it back "
                    "to the base weights. Export the adapter (no --merge), merge to --dtype float32, or --force")
        if not self.gap <= self.limit:
            return (f"the {self.dtype} merge's logprobs are {self.gap:.2e} per token from base + adapter on "
                    f"{self.prompts} eval prompts (limit {self.limit:.2e}: twice the dtype's floor {self.floor:.2e} "
                    f"+ {ABS_SLACK}). "
                    "Export the adapter (no --merge), merge to --dtype float32, or --force")
        return None

    def lines(self) -> list[str]:
        out = [f"Merged in float32, written in {self.dtype}. The trained delta that survives the cast to {self.dtype}, "
               "per module type (cosine of `cast(W0 + delta) - cast(W0)` with `delta`; the run's readback holds served "
               f"weights to {MIN_COSINE}):", "", "| module | cosine |", "| --- | ---: |"]
        out += [f"| {k} | {v:.6f} |" for k, v in sorted(self.cosines.items())]
        out += ["", f"Logprobs of {self.tokens} reference-answer tokens on {self.prompts} eval prompts: the merged "
                f"model is {self.gap:.2e} per token (mean absolute) from the learner's policy (base in float32 + "
                f"adapter); the {self.dtype} floor (the base in {self.dtype} + the adapter, unmerged) is "
                f"{self.floor:.2e}."]
        return out


def module_type(name: str) -> str:
    """``model.layers.3.self_attn.q_proj`` -> ``q_proj``."""
    return name.rsplit(".", 1)[-1]


def merge(base_model: str, adapter_dir, dtype: str, samples: list[tuple[list[int], list[int]]]):
    """(merged model in ``dtype``, :class:`MergeCheck`). ``samples``: (prompt ids, completion ids) to score."""
    from peft import PeftModel
    from peft.tuners.lora import LoraLayer
    from transformers import AutoModelForCausalLM

    target = DTYPES[dtype]
    check = MergeCheck(dtype, prompts=len(samples), tokens=sum(len(c) for _, c in samples))
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_model, dtype=torch.float32),
                                      str(adapter_dir)).eval()
    ref = _logprobs(model, samples)
    dots: dict[str, list[float]] = {}
    with torch.no_grad():
        for name, mod in model.named_modules():
            if isinstance(mod, LoraLayer) and "default" in getattr(mod, "lora_A", {}):
                w0 = mod.get_base_layer().weight.float()
                delta = mod.get_delta_weight("default").float()
                served = (w0 + delta).to(target).float() - w0.to(target).float()
                acc = dots.setdefault(module_type(name), [0.0, 0.0, 0.0])
                acc[0] += float((served * delta).sum())
                acc[1] += float((served * served).sum())
                acc[2] += float((delta * delta).sum())
    check.cosines = {k: (d / math.sqrt(s * t) if s > 0 and t > 0 else (1.0 if t == 0 else 0.0))
                     for k, (d, s, t) in dots.items()}
    merged = model.merge_and_unload().to(target).eval()   # float32 merge, then the cast
    got = _logprobs(merged, samples)
    floor_model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_model, dtype=target),
                                            str(adapter_dir)).eval()
    floor = _logprobs(floor_model, samples)
    del floor_model
    check.gap = _mean_abs(got, ref)
    check.floor = _mean_abs(floor, ref)
    return merged, check


def _logprobs(model, samples) -> list[torch.Tensor]:
    from learner.loss import model_completion_logps

    out = []
    with torch.no_grad():
        for prompt, comp in samples:
            ids = torch.tensor([list(prompt) + list(comp)])
            lp = model_completion_logps(model, ids, torch.ones_like(ids), len(prompt))
            out.append(lp[0].float())
    return out


def _mean_abs(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    n = sum(x.numel() for x in a)
    return float(sum((x - y).abs().sum() for x, y in zip(a, b, strict=True)) / max(n, 1))
