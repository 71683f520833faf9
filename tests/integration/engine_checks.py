"""A check several test modules run on real engines: a version loaded while requests run (``actor.load_mode:
inflight``), against transformers+PEFT per version."""

from __future__ import annotations

from sync.wire import SamplingSpec

LONG = [{"role": "user",
         "content": "Resuma a avaliação do pedido: " + "o produto chegou atrasado e com defeito, " * 24}]
"""A prompt over two of vLLM's CPU KV blocks (128 tokens): long enough for the prefix cache to hold it."""


def max_diff(a, b):
    return max(abs(x - y) for ra, rb in zip(a, b, strict=True) for x, y in zip(ra, rb, strict=True))


def run_until(engine, keys) -> dict:
    """Step until the requests ``keys`` are done; their (results, stats) in order of completion."""
    done: dict = {}
    while not set(keys) <= set(done):
        for key, results, stats in engine.step():
            done[key] = (results, stats)
    return done


def check_inflight_load(engine, kit, dirs, load, tol: float) -> None:
    """The load lands between two engine steps while a request of 4 x 96 tokens runs (no drain). ``dirs``: three
    adapters (v21, v22, v23), ``load(engine, version, dir)`` loads one, ``tol`` the logprob tolerance.

    adapter mode: the running request finishes on v21's adapter, one submitted after the load runs on v22's in
    the same batches (it finishes first although it started later), v22 is replaced by v23 while the first still
    runs, and v21's adapter and directory live until the last request on it is done.
    merged mode: each completion's tokens are v21's up to a boundary inside it and v22's after; each side matches
    transformers+PEFT under its own adapter (after it, on v21's KV), neither under the other; a request
    submitted after the load is v22's throughout, with no prefix-cache block of v21 reused (its prompt is long
    enough for the cache to hold it, and the running request still holds those blocks)."""
    a, b, c = dirs
    ref = kit.reference
    load(engine, 21, a)
    engine.submit("old", [LONG], SamplingSpec(4, 1.0, 1.0, 96, 7), ignore_eos=True)
    early = {}
    for _ in range(3):
        early.update({k: r for k, r, _ in engine.step()})
    assert not early, "finished before the load: no request in flight"
    load(engine, 22, b)
    assert engine.version == 22 and engine.in_flight == 1
    if engine.mode == "adapter":
        v21 = next(lid for lid, v in engine.loras.live.items() if v.version == 21)
        v21_dir = engine.loras.live[v21].dir
        engine.submit("new", [LONG], SamplingSpec(4, 1.0, 1.0, 8, 7), ignore_eos=True)
        order = list(run_until(engine, ["new"]))
        assert order == ["new"] and engine.in_flight == 1   # v22's request ran beside v21's, not after it
        load(engine, 23, c)   # v22 is held by nothing now: retired; v21 still runs
        assert engine.loaded_lora_ids() == {v21, engine._lora.lora_int_id} and v21_dir.exists()
        done = run_until(engine, ["old"])
        assert engine.loaded_lora_ids() == {engine._lora.lora_int_id} and not v21_dir.exists()
        (res,), stats = done["old"]
        assert stats["version"] == 21
        for comp in res.completions:
            assert comp.version_runs == [0, 21] and len(comp.token_ids) == 96
        toks = [comp.token_ids for comp in res.completions]
        assert max_diff([comp.logprobs for comp in res.completions], ref.logprobs(a, res.prompt_token_ids, toks)) < tol
        return
    done = run_until(engine, ["old"])
    (res,), stats = done["old"]
    assert stats["version"] == 21
    for comp in res.completions:
        n = len(comp.token_ids)
        assert n == 96 and len(comp.version_runs) == 4, comp.version_runs
        start, v_old, boundary, v_new = comp.version_runs
        assert (start, v_old, v_new) == (0, 21, 22) and 0 < boundary < n
        got = comp.logprobs
        before = ref.logprobs(a, res.prompt_token_ids, [comp.token_ids])[0]
        switched = ref.logprobs_switched(a, b, res.prompt_token_ids, comp.token_ids, boundary)
        assert max(abs(x - y) for x, y in zip(got[:boundary], before[:boundary], strict=True)) < tol
        assert max(abs(x - y) for x, y in zip(got[boundary:], switched[boundary:], strict=True)) < tol
        assert max(abs(x - y) for x, y in zip(got[boundary:], before[boundary:], strict=True)) > 50 * tol
    # (the four samples' boundaries can differ by a step or two: the sync client sends each of the n child requests
    # to EngineCore on its own, and EngineCore steps between them, so a child can start a step later)
    # a request after the load: v22 from its first token, on a prompt the cache holds from v21
    (fresh,), _ = engine.generate([LONG], SamplingSpec(4, 1.0, 1.0, 16, 8))
    assert all(comp.version_runs == [0, 22] for comp in fresh.completions)
    toks = [comp.token_ids for comp in fresh.completions]
    assert max_diff([comp.logprobs for comp in fresh.completions], ref.logprobs(b, fresh.prompt_token_ids, toks)) < tol


