"""From a finished vLLM request to the wire: the sampled tokens' logprobs and a prompt's ``PromptResult``.

Split from :mod:`actor.engine`; :mod:`actor.episodes` builds its turns from the same pieces.
"""

from __future__ import annotations

import math

from actor.versions import token_runs


def prompt_result(out, version: int, merged: bool, tokenizer):
    """One prompt's finished completions; ``version``: the one it was admitted under (adapter mode, drain: every
    token's; merged mode in flight: the first run's, later runs from vLLM's weight-version spans). Text is decoded once
    from the final token ids (``actor.engine``'s docstring says why)."""
    from sync.wire import Completion, PromptResult

    comps = []
    for c in sorted(out.outputs, key=lambda c: c.index):
        ids = list(c.token_ids)
        lps = sampled_logprobs(ids, c.logprobs)
        text = tokenizer.decode(ids, skip_special_tokens=True)
        runs = token_runs(c.weight_versions if merged else None, len(ids), version)
        comps.append(Completion(token_ids=ids, logprobs=lps, text=text, finish_reason=str(c.finish_reason),
                                version_runs=runs))
    return PromptResult(prompt_token_ids=list(out.prompt_token_ids), completions=comps)


def sampled_logprobs(ids: list[int], logprobs) -> list[float]:
    """The logprob of each sampled token (NaN where vLLM gave none). With ``flat_logprobs`` and ``logprobs=0`` vLLM
    keeps exactly one entry per position, the sampled token's, in flat lists: taken whole when its token ids are
    ``ids``; else (a list of per-position dicts) looked up token by token."""
    from vllm.logprobs import FlatLogprobs

    if isinstance(logprobs, FlatLogprobs) and logprobs.token_ids == ids and len(logprobs.logprobs) == len(ids):
        return [float(x) for x in logprobs.logprobs]
    lps = []
    for tok, entry in zip(ids, logprobs or [None] * len(ids), strict=True):
        lp = entry.get(tok) if entry is not None else None
        lps.append(float(lp.logprob) if lp is not None else math.nan)
    return lps
