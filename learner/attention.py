"""Grouped attention for prompt-shared rows (``learner.share_prompt``): each completion attends to its prompt
and to itself only, computed as such instead of as one masked square.

A packed row (:class:`learner.rollouts.Packed`) is ``prompt, completion 1, ..., completion G``. Under the
block-causal mask, plain SDPA still computes the whole ``L x L`` score matrix of the row and masks most of it
away: with the demo's shapes (prompt ~250 tokens, G = 8 completions of ~60) three quarters of it. Here every
row is split along its spans: the prompt attends causally to itself, and each completion attends to
``[its prompt; itself]`` under a causal mask shifted by the prompt's length. The arithmetic is what the mask
selects, so logprobs and gradients equal the masked square's (``tests/unit/test_learner_packing.py``); on one
CPU core the demo's learner step takes ~25-35% less time (BENCHMARKS.md).

It is registered with transformers as the attention implementation :data:`GROUPED`. A forward that carries
``packed_spans`` (only :func:`learner.loss.packed_completion_logps` does) is split; any other forward (the
collated path, generation with a KV cache) runs transformers' SDPA with the mask transformers builds for SDPA.
The packed forward of a model under :data:`GROUPED` carries no mask, so the ``[R, 1, L, L]`` block mask (1 GB a
row at ``L`` = 16K in float32) is never built; a model under any other implementation gets it and gives the same
numbers, only slower. Each span's shifted causal mask is built once per forward (:class:`SpanMasks`), not per
layer.

Not FlashAttention's varlen kernel: it is CUDA-only and an optional install. On CUDA the per-span calls go to
SDPA's kernels with a float mask (memory-efficient attention); the extra kernel launches (rows x (G + 1) per
layer) are small against a 0.5B/3.7B layer's matmuls, but that was not measured on a GPU.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

GROUPED = "tucano2_grouped"
"""The attention implementation's name in transformers' registry (``model.set_attn_implementation``)."""

Spans = list[tuple[int, list[tuple[int, int]]]]
"""Per packed row: the prompt's length and each completion's ``(start, length)`` in the row."""


class SpanMasks:
    """The additive masks of a forward's completion spans, ``[n, p + n]``: 0 on the prompt, causal on the
    completion. Built on first use and shared by every layer of the forward (and a checkpointed recompute)."""

    def __init__(self):
        self._masks: dict[tuple, torch.Tensor] = {}

    def get(self, p: int, n: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        key = (p, n, dtype, device)
        if key not in self._masks:
            mask = torch.zeros(n, p + n, dtype=dtype, device=device)
            mask[:, p:] = torch.triu(torch.full((n, n), float("-inf"), dtype=dtype, device=device), 1)
            self._masks[key] = mask
        return self._masks[key]


def grouped_attention(module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None,
                      packed_spans: Spans | None = None, span_masks: SpanMasks | None = None, **kwargs):
    """transformers' attention-function signature: ``query [B, Hq, L, D]``, ``key``/``value [B, Hkv, L, D]``;
    returns ``([B, L, Hq, D], None)``. Without ``packed_spans``: SDPA as transformers runs it. With them the
    ``attention_mask`` is not read."""
    from transformers.integrations.sdpa_attention import repeat_kv, sdpa_attention_forward

    if packed_spans is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)
    if dropout:
        raise ValueError("grouped attention has no dropout (the learner trains with attention dropout 0)")
    span_masks = span_masks if span_masks is not None else SpanMasks()
    n_rep = query.shape[1] // key.shape[1]
    key, value = repeat_kv(key, n_rep), repeat_kv(value, n_rep)
    width = query.shape[2]
    rows = []
    for r, (p, spans) in enumerate(packed_spans):
        # 4D slices: CPU SDPA takes its flash kernel for 4D inputs, its math kernel for 3D ones
        q, k, v = query[r : r + 1], key[r : r + 1], value[r : r + 1]
        kp, vp = k[:, :, :p], v[:, :, :p]
        parts = [F.scaled_dot_product_attention(q[:, :, :p], kp, vp, is_causal=True, scale=scaling)]
        for start, n in spans:
            ks = torch.cat([kp, k[:, :, start : start + n]], dim=2)
            vs = torch.cat([vp, v[:, :, start : start + n]], dim=2)
            parts.append(F.scaled_dot_product_attention(q[:, :, start : start + n], ks, vs,
                                                        attn_mask=span_masks.get(p, n, q.dtype, q.device),
                                                        scale=scaling))
        end = spans[-1][0] + spans[-1][1] if spans else p
        if end < width:  # the row's padding: nothing reads its outputs
            parts.append(q.new_zeros(1, q.shape[1], width - end, q.shape[3]))
        rows.append(torch.cat(parts, dim=2))
    return torch.cat(rows).transpose(1, 2).contiguous(), None


def register() -> str:
    """Register :data:`GROUPED` (idempotent) with SDPA's mask builder; returns the name."""
    from transformers import AttentionInterface, AttentionMaskInterface
    from transformers.masking_utils import sdpa_mask

    AttentionInterface.register(GROUPED, grouped_attention)
    AttentionMaskInterface.register(GROUPED, sdpa_mask)
    return GROUPED
