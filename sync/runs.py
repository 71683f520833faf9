"""Run-length codes of a completion's tokens: ``version_runs`` (which version sampled each token) and ``loss_mask``
(which tokens the policy sampled, 1, and which a tool's observation put there, 0).

Both are flattened ``[start_0, value_0, start_1, value_1, ...]``: tokens ``[start_k, start_{k+1})`` have
``value_k``, the last run to the end of the completion. ``start_0`` is 0, the starts rise strictly and stay inside
the completion, neighbouring runs differ in value; empty means one run of the default. At most one run per token,
so a code is never longer than twice its completion. Pure Python: the wire, the actor and the learner share it.
"""

from __future__ import annotations


def runs_problem(r: list, n_tokens: int, values: tuple | None = None, min_value: int | None = None,
                 what: str = "value") -> str | None:
    """Why ``r`` is not a run-length code of ``n_tokens`` tokens (``values``: the allowed values; ``min_value``: the
    smallest; ``what``: what a value is, for the message), or None.

    >>> runs_problem([0, 1, 3, 0, 5, 1], 8, values=(0, 1)) is None
    True
    >>> runs_problem([0, 1, 3, 1], 8, values=(0, 1)), runs_problem([2, 1], 8)
    ('two neighbouring runs of value 1', 'the first run starts at token 2, not 0')
    >>> runs_problem([0, 1, 9, 0], 8)
    'a run starts at token 9 of a 8-token completion'
    """
    if not r:
        return None
    if len(r) % 2:
        return f"odd length {len(r)} (expected [start, value] pairs)"
    if any(type(x) is not int for x in r):
        return "not a list of ints"
    starts, vals = r[0::2], r[1::2]
    if starts[0] != 0:
        return f"the first run starts at token {starts[0]}, not 0"
    for a, b in zip(starts, starts[1:], strict=False):
        if b <= a:
            return f"run starts {a}, {b} do not rise"
    if starts[-1] >= max(n_tokens, 1):
        return f"a run starts at token {starts[-1]} of a {n_tokens}-token completion"
    if values is not None and any(v not in values for v in vals):
        return f"{what} {next(v for v in vals if v not in values)} is not one of {list(values)}"
    if min_value is not None and min(vals) < min_value:
        return f"{what} {min(vals)} < {min_value}"
    for a, b in zip(vals, vals[1:], strict=False):
        if a == b:
            return f"two neighbouring runs of {what} {a}"
    return None


def expand(r: list[int], n_tokens: int, default: int) -> list[int]:
    """The per-token values of a code (``default`` for every token when empty).

    >>> expand([0, 1, 2, 0, 3, 1], 5, 1), expand([], 3, 1)
    ([1, 1, 0, 1, 1], [1, 1, 1])
    """
    if not r:
        return [default] * n_tokens
    out: list[int] = []
    starts = r[0::2]
    for s, e, v in zip(starts, [*starts[1:], n_tokens], r[1::2], strict=True):
        out += [v] * (e - s)
    return out


def encode(values: list[int]) -> list[int]:
    """The code of per-token values (empty for no tokens).

    >>> encode([1, 1, 0, 0, 1]), encode([4, 4]), encode([])
    ([0, 1, 2, 0, 4, 1], [0, 4], [])
    """
    out: list[int] = []
    for i, v in enumerate(values):
        if not out or out[-1] != v:
            out += [i, v]
    return out


def spans(r: list[int], n_tokens: int, default: int) -> list[tuple[int, int, int]]:
    """``(start, end, value)`` of every run (one run of ``default`` when empty).

    >>> spans([0, 1, 2, 0], 5, 1), spans([], 3, 7)
    ([(0, 2, 1), (2, 5, 0)], [(0, 3, 7)])
    """
    if not r:
        return [(0, n_tokens, default)]
    starts = r[0::2]
    return [(s, e, v) for s, e, v in zip(starts, [*starts[1:], n_tokens], r[1::2], strict=True)]


def mask_problem(mask: list[int], n_tokens: int) -> str | None:
    """Why ``mask`` is not the loss mask of an ``n_tokens``-token completion (a code of 0/1 whose first token was
    sampled: an episode starts with the model's turn), or None.

    >>> mask_problem([0, 1, 4, 0, 9, 1], 12), mask_problem([0, 0, 3, 1], 6), mask_problem([0, 1, 2, 2], 6)
    (None, 'the first token was not sampled', 'value 2 is not one of [0, 1]')
    """
    why = runs_problem(mask, n_tokens, values=(0, 1))
    if why is None and mask and mask[1] != 1:
        why = "the first token was not sampled"
    return why
