"""The actor-vs-learner mismatch of every step, over the trained tokens: fresh rows apart from stale ones.

Our importance ratio is ``r = pi_learner / mu_actor`` per token, with ``mu`` the engine's sampling logprobs. On a
fresh row (sampled by the version the learner holds) ``r`` is the two engines' numeric gap alone; on a stale row it
is that gap plus the policy's drift since the row's version. Logged every step, from tensors the loss already has
(no extra forward), as ``sampling/<name>/<stat>`` over every trained token and ``sampling/fresh/...`` /
``sampling/stale/...`` per kind of row:

* ``sampling_logp_difference/{mean,max}``: ``|log pi - log mu|`` (TRL's name; TRL measures it between its own
  trainer and vLLM, where ours is the same gap);
* ``importance_sampling_ratio/{min,mean,max}``: ``r`` before any cap or clip (TRL logs its separate vLLM weight
  after truncation; ours is the ratio the loss starts from);
* ``k3``: ``mean(r - log r - 1)``, the k3 estimate of KL(mu || pi) (prime-rl's mismatch KL; its model-parity bar
  is a mean under 0.015);
* ``seq_ratio/{min,max}``: each sequence's geometric-mean ratio ``exp(mean_t log r_t)``, the quantity GSPO clips
  (``importance_sampling_level: sequence``) and verl's / SkyRL's sequence masks bound
  (``learner.seq_ratio_band``); ``seq_masked``: the share of sequences that band dropped.

The log-ratio is the loss's own: clamped to +-``LOG_RATIO_MAX`` and 0 at padding.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

KINDS = ("all", "fresh", "stale")
_SUMS = ("tokens", "abs_sum", "ratio_sum", "k3_sum", "seqs", "seq_masked")
_MAXES = ("abs_max", "ratio_max", "seq_ratio_max")
_MINS = ("ratio_min", "seq_ratio_min")


@dataclass
class Mismatch:
    """Sums, maxima and minima of one kind of row, so micro-batches and ranks combine (:meth:`merge`)."""

    tokens: float = 0.0
    abs_sum: float = 0.0
    ratio_sum: float = 0.0
    k3_sum: float = 0.0
    seqs: float = 0.0
    seq_masked: float = 0.0
    abs_max: float = float("-inf")
    ratio_max: float = float("-inf")
    seq_ratio_max: float = float("-inf")
    ratio_min: float = float("inf")
    seq_ratio_min: float = float("inf")

    def merge(self, o: Mismatch) -> None:
        for k in _SUMS:
            setattr(self, k, getattr(self, k) + getattr(o, k))
        for k in _MAXES:
            setattr(self, k, max(getattr(self, k), getattr(o, k)))
        for k in _MINS:
            setattr(self, k, min(getattr(self, k), getattr(o, k)))

    def metrics(self, prefix: str) -> dict[str, float]:
        """``prefix/...`` metrics; nothing when the kind had no token this step."""
        if self.tokens <= 0:
            return {}
        seqs = max(self.seqs, 1.0)
        return {
            f"{prefix}/sampling_logp_difference/mean": self.abs_sum / self.tokens,
            f"{prefix}/sampling_logp_difference/max": self.abs_max,
            f"{prefix}/importance_sampling_ratio/min": self.ratio_min,
            f"{prefix}/importance_sampling_ratio/mean": self.ratio_sum / self.tokens,
            f"{prefix}/importance_sampling_ratio/max": self.ratio_max,
            f"{prefix}/k3": self.k3_sum / self.tokens,
            f"{prefix}/seq_ratio/min": self.seq_ratio_min,
            f"{prefix}/seq_ratio/max": self.seq_ratio_max,
            f"{prefix}/seq_masked": self.seq_masked / seqs,
        }


@dataclass
class StepMismatch:
    """The three kinds of one step (or one micro-batch)."""

    kinds: dict[str, Mismatch] = field(default_factory=lambda: {k: Mismatch() for k in KINDS})

    def merge(self, o: StepMismatch) -> None:
        for k in KINDS:
            self.kinds[k].merge(o.kinds[k])

    def vectors(self) -> tuple[list[float], list[float], list[float]]:
        """(sums, maxima, minima) flattened, for one all-reduce each (:meth:`from_vectors` undoes it)."""
        s = [getattr(self.kinds[k], a) for k in KINDS for a in _SUMS]
        mx = [getattr(self.kinds[k], a) for k in KINDS for a in _MAXES]
        mn = [getattr(self.kinds[k], a) for k in KINDS for a in _MINS]
        return s, mx, mn

    @classmethod
    def from_vectors(cls, s, mx, mn) -> StepMismatch:
        out = cls()
        for i, k in enumerate(KINDS):
            m = out.kinds[k]
            for j, a in enumerate(_SUMS):
                setattr(m, a, float(s[i * len(_SUMS) + j]))
            for j, a in enumerate(_MAXES):
                setattr(m, a, float(mx[i * len(_MAXES) + j]))
            for j, a in enumerate(_MINS):
                setattr(m, a, float(mn[i * len(_MINS) + j]))
        return out

    def metrics(self) -> dict[str, float]:
        out = self.kinds["all"].metrics("sampling")
        out.update(self.kinds["fresh"].metrics("sampling/fresh"))
        out.update(self.kinds["stale"].metrics("sampling/stale"))
        return out


@torch.no_grad()
def measure(log_ratio: torch.Tensor, mask: torch.Tensor, stale: torch.Tensor | None,
            seq_masked: torch.Tensor | None = None) -> StepMismatch:
    """The mismatch of one micro-batch: ``log_ratio`` ``[B, T]`` (log pi - log mu, 0 at padding), ``mask``
    ``[B, T]`` (the trained tokens), ``stale`` ``[B]`` bool (None: every row fresh), ``seq_masked`` ``[B]`` bool
    (rows a sequence band dropped). Computed on the tensors' device without boolean indexing and brought to the host
    in one transfer (one device sync per micro-batch on a GPU)."""
    d = log_ratio.detach().float()
    m = mask.detach().float()
    b = d.size(0)
    rows = m.sum(-1) > 0
    stale = torch.zeros(b, dtype=torch.bool, device=d.device) if stale is None else stale.to(d.device, torch.bool)
    dropped = (torch.zeros(b, dtype=torch.bool, device=d.device) if seq_masked is None
               else seq_masked.to(d.device, torch.bool))
    r = torch.exp(d)
    k3 = r - d - 1.0
    seq = torch.exp((d * m).sum(-1) / m.sum(-1).clamp(min=1.0))
    inf = torch.tensor(float("inf"), device=d.device)
    per_kind = []
    for sel in (rows, rows & ~stale, rows & stale):
        w = m * sel.unsqueeze(1).float()
        on = w > 0
        per_kind.append(torch.stack([
            w.sum(), (d.abs() * w).sum(), (r * w).sum(), (k3 * w).sum(), sel.float().sum(),
            (dropped & sel).float().sum(),
            torch.where(on, d.abs(), -inf).max(), torch.where(on, r, -inf).max(), torch.where(sel, seq, -inf).max(),
            torch.where(on, r, inf).min(), torch.where(sel, seq, inf).min(),
        ]))
    vals = torch.stack(per_kind).tolist()
    out = StepMismatch()
    for kind, v in zip(KINDS, vals, strict=True):
        if v[0] > 0:
            out.kinds[kind] = Mismatch(*v)
    return out
