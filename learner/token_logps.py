"""Logprobs of chosen tokens under the LM head's logits, keeping for backward only what backward needs.

``log_softmax(logits / T)`` taken by autograd keeps its fp32 output for the backward pass: at 8 completions x 512
tokens x a 49,152-token vocabulary that is 0.75 GiB of fp32 per micro-batch beside the logits themselves, and the
scaled copy ``logits / T`` is alive too while the forward runs (``learner.loss`` did exactly that until #33; measured
with saved-tensor hooks, ``launch.learner_memory``). :func:`token_logps` is one autograd function instead: its
forward goes one row at a time in fp32 and keeps only the logits it was given (which the LM head produced
anyway, in the model's dtype), the targets and the log-sum-exp of each position; its backward recomputes each
row's softmax from them, ``d logp / d logits = (onehot(target) - softmax(logits / T)) / T``, and writes the
gradient in the logits' dtype. What lives beyond the logits is one row's fp32 work (a few ``C x V`` buffers).

The arithmetic is the same as ``log_softmax(logits.float() / T).gather(target)`` (tested to 1e-6 in fp32,
``tests/unit/test_loss.py``); in bf16 the gradient is rounded to bf16 once, where autograd's chain rounded it twice
(after the cast back and after the division by T).
"""

from __future__ import annotations

import torch


def _row(logits: torch.Tensor, r: int, cols: torch.Tensor | None, start: int, n: int, temperature: float):
    """Row ``r``'s logits at the wanted positions, as a fresh fp32 tensor (safe to change in place), over T."""
    x = logits[r, start : start + n] if cols is None else logits[r].index_select(0, cols)
    x = x.to(torch.float32, copy=True)
    if temperature != 1.0:
        x.div_(temperature)
    return x


class _TokenLogps(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits, targets, rows, cols, start, temperature):  # noqa: PLR0913
        b, n = targets.shape
        out = torch.empty((b, n), dtype=torch.float32, device=logits.device)
        lse = torch.empty((b, n), dtype=torch.float32, device=logits.device)
        for i, r in enumerate(rows):
            x = _row(logits, r, None if cols is None else cols[i], start, n, temperature)
            lse[i] = torch.logsumexp(x, dim=-1)
            out[i] = x.gather(-1, targets[i].unsqueeze(-1)).squeeze(-1) - lse[i]
            del x
        ctx.save_for_backward(logits, targets, lse, cols)
        ctx.rows, ctx.start, ctx.temperature = rows, start, temperature
        return out

    @staticmethod
    def backward(ctx, grad_out):
        logits, targets, lse, cols = ctx.saved_tensors
        n, t = targets.shape[1], ctx.temperature
        grad = torch.zeros_like(logits)
        for i, r in enumerate(ctx.rows):
            g = grad_out[i].to(torch.float32).unsqueeze(-1)  # [n, 1]
            p = _row(logits, r, None if cols is None else cols[i], ctx.start, n, t)
            p.sub_(lse[i].unsqueeze(-1)).exp_().mul_(-g)  # -g * softmax
            p.scatter_add_(-1, targets[i].unsqueeze(-1), g)  # + g at the target
            if t != 1.0:
                p.div_(t)
            if cols is None:
                grad[r, ctx.start : ctx.start + n] += p.to(grad.dtype)
            else:
                grad[r].index_add_(0, cols[i], p.to(grad.dtype))
            del p
        return grad, None, None, None, None, None


def token_logps(
    logits: torch.Tensor,
    targets: torch.Tensor,
    temperature: float = 1.0,
    *,
    rows: torch.Tensor | None = None,
    cols: torch.Tensor | None = None,
    start: int = 0,
) -> torch.Tensor:
    """``log_softmax(logits / temperature)`` of ``targets`` (``[B, C]``), fp32 ``[B, C]``.

    ``logits``: ``[R, K, V]`` in any float dtype (the LM head's output, not copied). Sample ``i``'s logits are in
    row ``rows[i]`` (default ``i``), at positions ``cols[i]`` (``[B, C]``; default ``start .. start + C - 1``)."""
    if targets.dim() != 2 or logits.dim() != 3:
        raise ValueError(f"token_logps takes logits [R, K, V] and targets [B, C], got {tuple(logits.shape)} and "
                         f"{tuple(targets.shape)}")
    row_list = list(range(targets.size(0))) if rows is None else [int(r) for r in rows.tolist()]
    return _TokenLogps.apply(logits, targets, row_list, cols, start, float(temperature))
