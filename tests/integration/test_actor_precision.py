"""The GPU settings' numerics on CPU: a bf16 engine serves the delta the learner trained, the served-delta
cosine tells merged serving's rounding apart, and tensor parallelism keeps logprob parity in both modes.

Real vLLM engines on the tiny model: bf16 (emulated on this CPU, slower but exact bf16 arithmetic) and
``tensor_parallel_size: 2`` (two worker processes, one core each). The single-rank engines run inline
(``actor.inline_engine``: in this process, seconds to start); the TP=2 ones are separate processes, EngineCore and
a worker per rank: after their parity test they load versions with requests in flight, then they are killed
during a load, which must read as the engine gone.
"""

from __future__ import annotations

import shutil

import psutil
import pytest

from sync.wire import SamplingSpec

pytestmark = pytest.mark.slow


def small_delta_adapter(model_dir, out, b_std: float, seed: int = 0):
    """A PEFT adapter as a few Adam steps at a small learning rate leave it: A at PEFT's init, B tiny."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32),
                           LoraConfig(r=16, lora_alpha=32, target_modules="all-linear", lora_dropout=0.0))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_((torch.randn(p.shape, generator=g) * b_std).bfloat16().float())  # as the bf16 wire has it
            elif "lora_A" in name:
                p.copy_(p.bfloat16().float())
    model.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def adapters(actor_kit, tmp_path_factory):
    d = tmp_path_factory.mktemp("precision-adapters")
    return {"small": small_delta_adapter(actor_kit.model, d / "small", 5e-5),  # ~10 Adam steps at lr 5e-6
            "large": small_delta_adapter(actor_kit.model, d / "large", 5e-2)}


def engine(kit, *overrides):
    from configs import load_config

    from actor.engine import RolloutEngine

    inline = not any(o.startswith("actor.tensor_parallel_size=") for o in overrides)
    cfg = load_config(kit.config, [f"model_id={kit.model}", "actor.enforce_eager=true",
                                   f"actor.inline_engine={str(inline).lower()}", *overrides])
    return RolloutEngine(cfg)


def close(eng):
    pids = list(eng.engine_pids)
    eng.close()
    assert not [p for p in pids if psutil.pid_exists(p) and psutil.Process(p).status() != "zombie"]
    return pids


def load_copy(eng, version, src, tmp_path):
    dst = tmp_path / f"{src.name}-{version}"
    shutil.copytree(src, dst)
    return eng.load_adapter(version, dst)


def parity(eng, kit, adapter_dir) -> float:
    """Max |logprob| gap between the engine's samples and transformers+PEFT (float32) on the same tokens."""
    (res,), _ = eng.generate([kit.chat], SamplingSpec(8, 1.0, 1.0, 16, 3))
    ref = kit.reference.logprobs(adapter_dir, res.prompt_token_ids, [c.token_ids for c in res.completions])
    return max(abs(x - y) for c, r in zip(res.completions, ref, strict=True) for x, y in zip(c.logprobs, r,
                                                                                            strict=True))


def test_bf16_engine_serves_the_trained_delta_by_default(actor_kit, adapters, tmp_path):
    eng = engine(actor_kit, "actor.dtype=bfloat16")  # serve_mode auto
    try:
        assert (eng.mode, eng.dtype) == ("adapter", "bfloat16")
        for i, name in enumerate(("small", "large")):
            load_copy(eng, i, adapters[name], tmp_path)
            assert eng.delta_cosine > 0.999999, (name, eng.delta_cosine)  # bf16 A/B served as they came
        assert parity(eng, actor_kit, adapters["large"]) < 0.05  # bf16 arithmetic against a float32 reference
    finally:
        close(eng)


def test_merged_bf16_rounds_a_small_delta_away_and_says_so(actor_kit, adapters, tmp_path):
    eng = engine(actor_kit, "actor.dtype=bfloat16", "actor.serve_mode=merged")
    try:
        load_copy(eng, 0, adapters["small"], tmp_path)
        small = eng.delta_cosine
        load_copy(eng, 1, adapters["large"], tmp_path)
        large = eng.delta_cosine
    finally:
        close(eng)
    assert small < 0.9, small  # most of an early adapter's delta is under half a bf16 step of W0
    assert large > 0.99, large  # a large delta survives the cast: the measure is not stuck low


@pytest.mark.parametrize("mode", ["merged", "adapter"])
def test_readback_sees_a_module_the_engine_does_not_serve(actor_kit, adapters, tmp_path, monkeypatch, mode):
    """The cosine is read out of the engine: with v_proj's delta zeroed inside each worker from the second load on
    (``TUCANO2_FAULT_ZERO_SERVED``), the same adapter files read back below the floor, naming v_proj."""
    from actor.readback import FAULT_ENV, describe

    monkeypatch.setenv(FAULT_ENV, "v_proj@2")
    eng = engine(actor_kit, f"actor.serve_mode={mode}")
    try:
        load_copy(eng, 0, adapters["large"], tmp_path)
        clean = eng.delta_cosine, dict(eng.readback)
        load_copy(eng, 1, adapters["large"], tmp_path)
        faulty = eng.delta_cosine, dict(eng.readback)
        load_copy(eng, 2, adapters["large"], tmp_path)
        (res,), _ = eng.generate([actor_kit.chat], SamplingSpec(4, 1.0, 1.0, 8, 3))
        ref = actor_kit.reference.logprobs(adapters["large"], res.prompt_token_ids,
                                           [c.token_ids for c in res.completions])
        gap = max(abs(x - y) for c, r in zip(res.completions, ref, strict=True)
                  for x, y in zip(c.logprobs, r, strict=True))
    finally:
        close(eng)
    assert clean[0] > 0.999999 and clean[1]["ranks"] == 1 and not clean[1]["missing"], clean
    assert faulty[0] < 0.99, faulty
    assert faulty[1]["worst"][0] == "v_proj" and faulty[1]["worst"][1] < 0.01, faulty
    assert "v_proj served at cosine 0.0000" in describe(faulty[1])
    assert gap > 1e-3  # the fault is real: the engine's samples no longer match the trained policy


@pytest.fixture(scope="module", params=["merged", "adapter"])
def tp2(request, actor_kit):
    """A TP=2 engine per mode (separate processes), for the parity test and then the engine-death test."""
    eng = engine(actor_kit, "actor.tensor_parallel_size=2", f"actor.serve_mode={request.param}")
    yield eng
    assert close(eng)


def test_tensor_parallel_2_keeps_logprob_parity(tp2, actor_kit, adapters, tmp_path):
    eng = tp2
    assert len(eng.engine_pids) >= 3  # EngineCore and one worker per rank
    load_copy(eng, 0, adapters["small"], tmp_path)
    assert eng.readback["ranks"] == 2 and eng.delta_cosine > 0.999999  # read back from both ranks
    load_copy(eng, 1, adapters["large"], tmp_path)
    assert eng.delta_cosine > 0.999999
    assert parity(eng, actor_kit, adapters["large"]) < 1e-3  # each rank merged/served its shard exactly


def test_a_load_with_requests_in_flight_on_separate_processes(tp2, actor_kit, tmp_path):
    """``engine_checks.check_inflight_load`` where it matters most: EngineCore in its own process steps on its own
    while the actor loads, so the load must pause it to land between two steps (merged mode), on both ranks."""
    from engine_checks import check_inflight_load

    dirs = tuple(actor_kit.make_adapter(actor_kit.model, tmp_path / f"live{i}", seed=40 + i) for i in range(3))
    check_inflight_load(tp2, actor_kit, dirs, lambda eng, v, d: load_copy(eng, v, d, tmp_path), 1e-3)


def test_the_readback_sees_the_new_adapter_under_slot_pressure(tp2, actor_kit, monkeypatch, tmp_path):
    """Requests of two versions hold both LoRA slots (``max_loras`` 2) while a third loads in flight. EngineCore, in
    its own process, steps on its own, and every step re-activates the running batch's adapters, evicting the least
    recently used slot: a step between ``add_lora`` and the readback evicted the new adapter, which then read back as
    an empty slot (cosine 0) and stopped a correct run. Loaded and read back inside one scheduler pause, it reads back
    exactly, on both ranks. The same readback against other weights than the slot holds still fails. (Merged mode has
    no slots: the same sequence must read back exactly there too.)"""
    from engine_checks import LONG

    eng = tp2
    a, b, c = (actor_kit.make_adapter(actor_kit.model, tmp_path / f"press{i}", seed=60 + i) for i in range(3))
    load_copy(eng, 31, a, tmp_path)
    eng.submit("on-v31", [LONG], SamplingSpec(2, 1.0, 1.0, 160, 5), ignore_eos=True)
    for _ in range(3):
        assert not eng.step()
    load_copy(eng, 32, b, tmp_path)
    eng.submit("on-v32", [LONG], SamplingSpec(2, 1.0, 1.0, 160, 6), ignore_eos=True)
    for _ in range(3):
        assert not eng.step()
    assert eng.versions_in_flight() == {31: 1, 32: 1}  # both slots held by running requests
    load_copy(eng, 33, c, tmp_path)
    assert eng.in_flight == 2 and eng.readback["ranks"] == 2
    assert eng.delta_cosine > 0.999999, eng.readback
    # the readback compares what the slot holds: against another adapter's weights it fails
    real = eng._read_back
    monkeypatch.setattr(eng, "_read_back", lambda served_dir: real(a))
    load_copy(eng, 34, c, tmp_path)
    assert eng.delta_cosine < 0.5, eng.readback
    monkeypatch.undo()
    eng.abort_all()


def test_engine_death_during_a_load_is_engine_gone(tp2, actor_kit, adapters, tmp_path):
    """After the parity test, on the same engine: EngineCore and its workers are killed once the load has begun
    (before the add_lora / collective_rpc reaches them); the error must classify as engine gone, not a bad
    adapter (``actor.serve.engine_gone``: the actor then exits as a lost actor instead of refusing the version)."""
    from actor.serve import engine_gone

    eng = tp2
    core = [psutil.Process(p) for p in eng.engine_pids if psutil.pid_exists(p)]
    assert core, "no EngineCore process to kill"
    target = eng.llm if eng.mode == "merged" else eng.llm.llm_engine
    name = "collective_rpc" if eng.mode == "merged" else "add_lora"
    real = getattr(target, name)

    def killing(*a, **kw):
        for p in core:
            p.kill()
        psutil.wait_procs(core, timeout=10)
        return real(*a, **kw)

    setattr(target, name, killing)
    try:
        with pytest.raises(Exception) as err:
            load_copy(eng, 99, adapters["large"], tmp_path)
    finally:
        setattr(target, name, real)
    assert engine_gone(err.value), f"{type(err.value).__name__}: {err.value} not classified as engine gone"
    assert eng.version != 99
