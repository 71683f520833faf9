"""RolloutEngine on the tiny model with real vLLM (CPU, float32), in both serving modes.

One engine per mode for the whole module, inline (``actor.inline_engine``: vLLM in this process, ~2-14 s to start
against ~20 s with EngineCore and worker processes; nothing here needs process isolation), the merged one with
torch.compile (the default, which no other test starts). An engine that dies during a load is tested on the
separate-process engines of ``test_actor_precision.py``. Sync exactness: after each
weight update, the engine's sampling logprobs (temperature 1) of its own tokens equal
transformers+PEFT logprobs of the same adapter on the same tokens within 1e-3, and with prefix caching
on and the same prompt a second version is followed, not the first.

Loads with requests in flight (``actor.load_mode: inflight``, the default): in adapter mode a running request
finishes on its adapter while new ones take the new one, in the same batches, and the adapter (and directory) of
a version a request still runs on survives later loads; in merged mode every token records the version that
sampled it, tokens before the boundary match transformers+PEFT under the old adapter and tokens after it under
the new one on the old KV (``Reference.logprobs_switched``), and a request submitted after the load reuses no
prefix-cache block computed under the old weights.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch

from engine_checks import LONG, check_inflight_load, max_diff  # noqa: F401 - LONG for the prefix-cache tests
from sync.wire import SamplingSpec

pytestmark = pytest.mark.slow
TOL = 1e-3


@pytest.fixture(scope="module", params=["merged", "adapter"])
def engine(request, actor_kit, tmp_path_factory):
    from configs import load_config

    from actor.engine import RolloutEngine

    cfg = load_config(actor_kit.config, [f"model_id={actor_kit.model}", f"actor.serve_mode={request.param}",
                                         "actor.max_lora_versions=2", "sync.max_staleness=1",
                                         "actor.inline_engine=true"])
    eng = RolloutEngine(cfg, delete_retired=True)
    eng.work = tmp_path_factory.mktemp(f"adapters-{request.param}")
    assert eng.engine_pids == []  # inline: no EngineCore process
    set_num_threads = torch.set_num_threads
    yield eng
    eng.close()
    # what vLLM left in this process is undone: its torch.distributed group, the CPU worker's no-op set_num_threads
    assert not torch.distributed.is_initialized() and torch.set_num_threads is not set_num_threads
    assert torch.set_num_threads.__module__ == "torch"


def adapter(engine, kit, name, seed, **kw):
    d = engine.work / name
    if not d.exists():
        kit.make_adapter(kit.model, d, seed=seed, **kw)
    return d


def load(engine, version, d):
    """Load a copy of ``d``: the engine owns (and removes) the directories it retires."""
    served = engine.work / "served" / f"{d.name}-{version}"
    if not served.exists():
        shutil.copytree(d, served)
    return engine.load_adapter(version, served)


def sample(engine, kit, n=16, seed=5, max_tokens=24):
    (res,), stats = engine.generate([kit.chat], SamplingSpec(n, 1.0, 1.0, max_tokens, seed))
    return res


def test_rollout_of_base_model(engine, actor_kit):
    res = sample(engine, actor_kit)
    tok = engine.tokenizer
    assert res.prompt_token_ids == engine.encode_prompt(actor_kit.chat)
    assert len(res.completions) == 16
    for c in res.completions:
        assert c.token_ids and len(c.logprobs) == len(c.token_ids)
        assert all(math.isfinite(x) and x <= 0 for x in c.logprobs)
        assert tok.decode(c.token_ids, skip_special_tokens=True) == c.text
        assert c.finish_reason in ("stop", "length")
    assert len({tuple(c.token_ids) for c in res.completions}) > 1, "16 samples should differ"
    again = sample(engine, actor_kit)
    assert [c.token_ids for c in again.completions] == [c.token_ids for c in res.completions], "seeded"
    ref = actor_kit.reference.logprobs(None, res.prompt_token_ids, [c.token_ids for c in res.completions])
    assert max_diff([c.logprobs for c in res.completions], ref) < TOL


def test_weight_updates_are_exact_and_followed(engine, actor_kit):
    """v1 (all linear layers), then v2 (a subset: merged mode must put v1-only layers back to base)."""
    v1 = adapter(engine, actor_kit, "v1", seed=1)
    v2 = adapter(engine, actor_kit, "v2", seed=2, target_modules=["q_proj", "v_proj", "up_proj"])
    load(engine, 1, v1)
    assert engine.version == 1
    r1 = sample(engine, actor_kit)
    toks1 = [c.token_ids for c in r1.completions]
    ref1 = actor_kit.reference.logprobs(v1, r1.prompt_token_ids, toks1)
    assert max_diff([c.logprobs for c in r1.completions], ref1) < TOL

    load(engine, 2, v2)
    r2 = sample(engine, actor_kit)   # same prompt, same seed: prefix cache is warm with v1's KV
    toks2 = [c.token_ids for c in r2.completions]
    ref2 = actor_kit.reference.logprobs(v2, r2.prompt_token_ids, toks2)
    assert max_diff([c.logprobs for c in r2.completions], ref2) < TOL
    under_v1 = actor_kit.reference.logprobs(v1, r2.prompt_token_ids, toks2)
    assert max_diff([c.logprobs for c in r2.completions], under_v1) > 50 * TOL, "still serving v1"


def test_bad_adapter_refused_previous_version_kept(engine, actor_kit, tmp_path):
    from actor.loading import AdapterLoadError, EngineBusy

    good = adapter(engine, actor_kit, "v3", seed=3)
    load(engine, 3, good)
    before = sample(engine, actor_kit)
    # a truncated file, then a checksum other than the one published: refused, v3 stays
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "adapter_config.json").write_text((good / "adapter_config.json").read_text())
    (bad / "adapter_model.safetensors").write_bytes((good / "adapter_model.safetensors").read_bytes()[:-64])
    with pytest.raises(AdapterLoadError):
        engine.load_adapter(4, bad)
    with pytest.raises(AdapterLoadError, match="expected"):
        engine.load_adapter(4, good, expect_checksum="xxh3_128:" + "0" * 32)
    assert engine.version == 3
    after = sample(engine, actor_kit)
    assert [c.token_ids for c in after.completions] == [c.token_ids for c in before.completions]
    assert max_diff([c.logprobs for c in after.completions], [c.logprobs for c in before.completions]) < 1e-5
    # load_mode drain: a load while requests are in flight is refused (the serve loop drains first)
    engine.submit("busy", [actor_kit.chat], SamplingSpec(2, 1.0, 1.0, 8, 1))
    engine.load_mode = "drain"
    try:
        with pytest.raises(EngineBusy):
            engine.load_adapter(4, good)
    finally:
        engine.load_mode = "inflight"
    while engine.in_flight:
        engine.step()


def test_retired_versions_are_unloaded_and_removed(engine, actor_kit):
    """adapter mode: a new name and id per version; with no request running on them the older versions
    retire at once, through the engine, and the directories the engine took over are removed;
    merged mode: no LoRA slots, the previous version's dir removed once the next is merged."""
    dirs = [adapter(engine, actor_kit, f"w{i}", seed=10 + i) for i in range(3)]
    names, ids, served = [], [], []
    for i, d in enumerate(dirs):
        engine.load_adapter(10 + i, d)
        if engine.mode == "adapter":
            assert engine._lora.lora_name not in names and engine._lora.lora_int_id not in ids
            names.append(engine._lora.lora_name)
            ids.append(engine._lora.lora_int_id)
        served.append(Path(engine._lora.lora_path) if engine.mode == "adapter" else engine._merged_dir)
    assert not any(d.exists() for d in dirs)   # taken over by the engine (renamed out of the endpoint's way)
    assert [d.exists() for d in served] == [False, False, True]
    assert json.loads((served[2] / "adapter_config.json").read_text())["r"] == 16
    assert engine.loaded_lora_ids() == ({ids[-1]} if engine.mode == "adapter" else set())


def test_a_load_with_requests_in_flight(engine, actor_kit):
    """The load lands between two engine steps while a request of 4 x 96 tokens runs (no drain): the checks of
    ``engine_checks.check_inflight_load``, on this module's inline engines (EngineCore steps only inside ``step()``;
    ``test_actor_precision.py`` runs them on separate processes, where it steps on its own)."""
    dirs = tuple(adapter(engine, actor_kit, f"live{i}", seed=40 + i) for i in range(3))
    check_inflight_load(engine, actor_kit, dirs, load, TOL)


def test_many_seeded_prompts_over_the_token_budget(engine):
    """More prompt tokens than one engine step takes, all seeded: vLLM 0.32's CPU worker crashed here when
    prefills were chunked ("CPU Generator does not use offset"); the engine keeps prefills whole."""
    words = "avaliação do pedido chegou atrasado e o produto veio com defeito " * 40
    prompts = [[{"role": "user", "content": f"{i} {words}"}] for i in range(40)]
    results, stats = engine.generate(prompts, SamplingSpec(1, 0.7, 1.0, 4, 11))
    assert len(results) == 40 and all(len(r.completions[0].token_ids) > 0 for r in results)
    assert sum(len(r.prompt_token_ids) for r in results) > engine.engine_kwargs["max_num_batched_tokens"]
