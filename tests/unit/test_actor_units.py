"""Actor pieces that need no engine: runtime settings, adapter reading for the merge, metrics, scoring."""

from __future__ import annotations

import json
import math

import pytest
import torch

from actor.merge import lora_scale, read_adapter
from actor.runtime import configure_cpu_env, cpu_core_list, lora_rank_slot
from configs.device import engine_dtype
from actor.serve import ThroughputMeter, score_group
from sync import tensors as T
from sync.wire import Completion, PromptResult, RolloutRequest, SamplingSpec


def test_engine_dtype_auto_is_float32_on_cpu_bf16_on_gpu():
    assert engine_dtype("auto", gpu=False) == "float32"
    assert engine_dtype("auto", gpu=True) == "bfloat16"
    assert engine_dtype("float16", gpu=False) == "float16"


@pytest.mark.parametrize("r,slot", [(1, 1), (2, 8), (8, 8), (16, 16), (17, 32), (512, 512)])
def test_lora_rank_slot(r, slot):
    assert lora_rank_slot(r) == slot


def test_lora_rank_slot_too_large():
    with pytest.raises(ValueError):
        lora_rank_slot(1024)


def test_cpu_env_binds_all_cores_and_preloads_iomp():
    env = {}
    changed = configure_cpu_env(None, 0, env=env)
    cores = cpu_core_list(None, 0)
    assert env["VLLM_CPU_OMP_THREADS_BIND"] == ",".join(map(str, cores))
    assert env["VLLM_CPU_NUM_OF_RESERVED_CPU"] == "0"
    assert env["VLLM_USE_AOT_COMPILE"] == "0"  # vllm-cpu 0.32 cannot load its AOT artifacts back: compile cache
    assert changed == env
    if "LD_PRELOAD" in env:
        assert env["LD_PRELOAD"].split(":")[0].endswith("libiomp5.so")


def test_cpu_env_respects_explicit_settings_and_other_openmp():
    env = {"VLLM_CPU_OMP_THREADS_BIND": "0", "LD_PRELOAD": "/x/libgomp.so", "VLLM_USE_AOT_COMPILE": "1"}
    assert configure_cpu_env(None, 0, env=env) == {}
    assert env == {"VLLM_CPU_OMP_THREADS_BIND": "0", "LD_PRELOAD": "/x/libgomp.so", "VLLM_USE_AOT_COMPILE": "1"}


def test_cpu_threads_slice_per_replica():
    cores = cpu_core_list(None, 0)
    one = [cpu_core_list(1, k) for k in range(len(cores))]
    assert sorted(c for sl in one for c in sl) == cores   # replicas spread over distinct cores
    assert cpu_core_list(len(cores) + 5, 3) == cores


def _write_adapter(tmp_path, tensors: dict, config: dict):
    blobs = {n: T.TensorBlob("F32", tuple(t.shape), t.contiguous().numpy().tobytes()) for n, t in tensors.items()}
    T.write_adapter_dir(tmp_path / "a", blobs, config)
    return tmp_path / "a", T.checksum(blobs)


def test_read_adapter_maps_peft_names_and_returns_wire_checksum(tmp_path):
    pre = "base_model.model.model.layers.0.self_attn.q_proj"
    a, b = torch.randn(4, 8), torch.randn(6, 4)
    d, cs = _write_adapter(tmp_path, {f"{pre}.lora_A.weight": a, f"{pre}.lora_B.weight": b},
                           {"r": 4, "lora_alpha": 8, "target_modules": ["q_proj"]})
    config, pairs, fingerprint = read_adapter(d)
    assert fingerprint == cs
    assert list(pairs) == ["model.layers.0.self_attn.q_proj"]
    got_a, got_b = pairs["model.layers.0.self_attn.q_proj"]
    assert torch.equal(got_a, a) and torch.equal(got_b, b)
    assert lora_scale(config) == 2.0


def test_read_adapter_refuses_half_pairs_and_non_lora_tensors(tmp_path):
    pre = "base_model.model.model.layers.0.mlp.up_proj"
    d, _ = _write_adapter(tmp_path, {f"{pre}.lora_A.weight": torch.zeros(2, 3)}, {"r": 2})
    with pytest.raises(ValueError, match="lacks its lora_B"):
        read_adapter(d)
    d2, _ = _write_adapter(tmp_path / "x", {"base_model.model.lm_head.weight": torch.zeros(2, 3)}, {"r": 2})
    with pytest.raises(ValueError, match="not a LoRA"):
        read_adapter(d2)


def test_lora_scale_rslora():
    assert math.isclose(lora_scale({"r": 16, "lora_alpha": 32, "use_rslora": True}), 8.0)


def test_throughput_meter_window():
    m = ThroughputMeter(window_s=10)
    m.add(100, now=0.0)
    m.add(300, now=4.0)
    assert m.rate(now=4.0) == pytest.approx(100.0)       # 400 tokens over 4 s
    assert m.rate(now=20.0) == 0.0                        # all outside the window


def test_score_group_uses_per_prompt_columns():
    def reward(completions, prompts=None, **cols):  # stand-in reward: the completion contains its column
        return [1.0 if cols["want"][i] in c else 0.0 for i, c in enumerate(completions)]

    req = RolloutRequest("r", [[1, 2], [3]], SamplingSpec(2, 1.0, 1.0, 4), meta={"columns": [{"want": "a"},
                                                                                              {"want": "b"}]})
    results = [PromptResult([1, 2], [Completion([5], [-0.1], "abc", "stop"), Completion([6], [-0.2], "x", "stop")]),
               PromptResult([3], [Completion([5], [-0.1], "b", "stop"), Completion([6], [-0.2], "a", "stop")])]
    assert score_group(reward, req, results) == [[1.0, 0.0], [1.0, 0.0]]


def test_make_scorer_off_by_default(smoke_config):
    from actor.serve import make_scorer

    assert make_scorer(smoke_config) is None
    smoke_config.actor.score_rewards = True
    smoke_config.rewards.toy_token = "a"
    fn = make_scorer(smoke_config)
    scores = fn(["aaaa", "bbbb"])
    assert scores[0] > scores[1]


def test_actor_cli_refuses_bad_config_with_one_line(tmp_path):
    import subprocess
    import sys

    bad = tmp_path / "bad.yaml"
    bad.write_text(json.dumps({"model_id": "x", "max_steps": 1, "learning_rate": 1.0, "actor": {"nope": 1}}))
    p = subprocess.run([sys.executable, "-m", "actor", "--config", str(bad)], capture_output=True, text=True,
                       timeout=60)
    assert p.returncode == 2
    assert len(p.stderr.strip().splitlines()) == 1 and "actor.nope" in p.stderr


def test_reap_waits_for_a_child_that_needed_sigkill():
    """An EngineCore that ignores SIGTERM is killed and waited for: it is not reported as left (the actor then
    releases the shared-memory queues it mapped; reporting it kept them in /dev/shm)."""
    import subprocess
    import sys

    import psutil

    from actor.runtime import reap

    stubborn = subprocess.Popen([sys.executable, "-c", "import signal, sys, time\n"
                                 "signal.signal(signal.SIGTERM, signal.SIG_IGN)\nprint(flush=True)\ntime.sleep(60)"],
                                stdout=subprocess.PIPE)
    stubborn.stdout.readline()   # its handler is installed
    assert reap([stubborn.pid], timeout_s=0.1, term_s=0.5) == []
    assert not psutil.pid_exists(stubborn.pid)


def test_sweep_removes_what_killed_engines_left(tmp_path):
    """/dev/shm leftovers of SIGKILLed engines: OpenMP registration files of dead pids and vLLM's
    shared-memory queues no process maps; those of live processes stay."""
    import mmap
    import os
    import subprocess

    from actor.runtime import sweep_engine_leftovers

    gone = subprocess.Popen(["true"])
    gone.wait()
    dead_kmp = tmp_path / f"__KMP_REGISTERED_LIB_{gone.pid}_{os.getuid()}"
    live_kmp = tmp_path / f"__KMP_REGISTERED_LIB_{os.getpid()}_{os.getuid()}"
    orphan, in_use, fresh = tmp_path / "psm_dead0001", tmp_path / "psm_live0001", tmp_path / "psm_new00001"
    for f in (dead_kmp, live_kmp, orphan, in_use, fresh):
        f.write_bytes(b"\0" * 4096)
    for f in (orphan, in_use):
        os.utime(f, (0, 0))  # old enough
    with open(in_use, "r+b") as fh, mmap.mmap(fh.fileno(), 4096):
        removed = sweep_engine_leftovers(tmp_path)
    assert sorted(p.name for p in removed) == sorted([dead_kmp.name, orphan.name])
    assert live_kmp.exists() and in_use.exists() and fresh.exists()


class LoadFailingEngine:
    """A stand-in for ``actor.engine.RolloutEngine`` (no vLLM): idle, and its adapter load fails with
    ``error``; ``during`` runs first, as a signal handler would in the middle of the load."""

    in_flight, version, delta_cosine = 0, 3, 1.0

    def __init__(self, error: Exception, during=None):
        self.error, self.during = error, during

    def load_adapter(self, version, adapter_dir, expect_checksum=None):
        if self.during is not None:
            self.during()
        raise self.error

    def step(self):
        return []


class RecordingEndpoint:
    """An actor endpoint that hands out ``items`` one per turn of the serve loop (each followed by an empty
    poll), then a Shutdown, and records what the actor sends."""

    def __init__(self, items):
        self.items, self.acks, self.heartbeats = [x for it in items for x in (it, None)], [], []

    def poll(self, timeout_s):
        from sync.wire import Shutdown

        return self.items.pop(0) if self.items else Shutdown("drained")

    def send_ack(self, ack):
        self.acks.append(ack)

    def heartbeat(self, hb):
        self.heartbeats.append(hb)


def _server(engine, items):
    from actor.serve import ActorServer
    from configs import load_config

    ep = RecordingEndpoint(items)
    return ActorServer(load_config("smoke_cpu.yaml"), engine, ep, "a0", grace_s=0.1, idle_poll_s=0.0), ep


def _update(tmp_path):
    from sync.interfaces import ReceivedWeights

    return ReceivedWeights(7, tmp_path, "c0ffee", {"r": 2}, "L1")


def test_a_load_cut_short_by_the_actors_own_stop_is_not_refused(tmp_path):
    """Slurm signals every process of a step at once: EngineCore shuts down under a load in progress.
    The learner must see a lost actor, not a refusal of v7 (which would stop the run)."""
    holder = {}
    engine = LoadFailingEngine(Exception("Server shutting down"), during=lambda: holder["s"].request_stop("SIGTERM"))
    server, ep = _server(engine, [_update(tmp_path)])
    holder["s"] = server
    assert server.run() == "SIGTERM"
    assert ep.acks == []


def test_an_engine_that_stopped_on_its_own_ends_the_actor_without_a_refusal(tmp_path):
    from vllm.v1.engine.exceptions import EngineDeadError

    for err in (Exception("Server shutting down"), EngineDeadError()):
        server, ep = _server(LoadFailingEngine(err), [_update(tmp_path)])
        with pytest.raises(RuntimeError, match="a0: the engine stopped while loading v7"):
            server.run()
        assert ep.acks == []


class DeadEngine(LoadFailingEngine):
    """Requests in flight, and an EngineCore that died with them (the step raises as ``actor.core_watch`` makes it)."""

    in_flight = 2

    def __init__(self):
        from vllm.v1.engine.exceptions import EngineDeadError

        super().__init__(EngineDeadError())
        self.aborted = False

    def step(self):
        raise self.error

    def abort_all(self):
        self.aborted, self.in_flight = True, 0


def test_a_stop_whose_engine_died_with_requests_in_flight_ends_cleanly():
    """A SIGTERM to the whole process group reaches EngineCore too: the actor's stop does not wait out its grace
    on an engine that is gone, nor end in a traceback; the requests in flight are dropped (the learner re-sends)."""
    engine = DeadEngine()
    server, _ = _server(engine, [])
    server.grace_s = 3600.0
    server.request_stop("SIGTERM")
    assert server.run() == "SIGTERM"
    assert engine.aborted


def test_a_bad_adapter_is_refused_and_the_actor_serves_on(tmp_path):
    from actor.loading import AdapterLoadError

    bad = AdapterLoadError(f"{tmp_path}: adapter file hashes to ab12, expected c0ffee")
    server, ep = _server(LoadFailingEngine(bad), [_update(tmp_path)])
    assert server.run() == "shutdown: drained"
    assert [(a.version, a.ok, a.learner) for a in ep.acks] == [(7, False, "L1")]
    assert "hashes to ab12" in ep.acks[0].error


def test_actor_serve_doctests():
    import doctest

    import actor.serve

    assert doctest.testmod(actor.serve).failed == 0


def test_engine_kwargs_on_a_gpu_keep_the_fraction_beside_a_fixed_kv_cache():
    """The GPU branch of the engine's arguments, checked here: on a shared GPU launch.memory sets both the
    fraction (vLLM's start-up check asks for that much to be free) and the KV cache; on CPU the fraction is
    of host memory and is left out beside a fixed cache."""
    from actor.engine_args import engine_kwargs
    from configs import RunConfig

    cfg = RunConfig(model_id="m", max_steps=1, learning_rate=1e-5,
                    actor={"gpu_memory_utilization": 0.19, "kv_cache_gb": 2.08})
    gpu = engine_kwargs(cfg, gpu=True, dtype="bfloat16", mode="adapter", seed=1)
    assert gpu["gpu_memory_utilization"] == 0.19 and gpu["kv_cache_memory_bytes"] == int(2.08 * 2**30)
    assert "enable_chunked_prefill" not in gpu and gpu["enable_lora"] and gpu["max_loras"] == 2
    cpu = engine_kwargs(cfg, gpu=False, dtype="float32", mode="merged", seed=1)
    assert "gpu_memory_utilization" not in cpu and cpu["enable_chunked_prefill"] is False
    assert "enable_lora" not in cpu
    assert cpu["worker_extension_cls"] == gpu["worker_extension_cls"] == "actor.readback.ActorWorkerExtension"
    plain = engine_kwargs(RunConfig(model_id="m", max_steps=1, learning_rate=1e-5), gpu=True, dtype="bfloat16",
                          mode="adapter", seed=1)
    assert plain["gpu_memory_utilization"] == 0.85 and "kv_cache_memory_bytes" not in plain


def test_actor_versions_doctests():
    import doctest

    import actor.versions

    assert doctest.testmod(actor.versions).failed == 0


def test_token_runs_from_vllm_spans_are_valid_wire_runs():
    """Whatever spans vLLM reports (empty ones, repeated labels, a label that is no version, a first span that
    starts late), the runs sent decode on the learner's side and cover every token."""
    from types import SimpleNamespace as S

    from actor.versions import token_runs
    from sync.wire import RolloutGroup, decode, encode

    cases = [
        ([S(version="2", start=0, end=3), S(version="3", start=3, end=3), S(version="4", start=3, end=8)], 8, 2),
        ([S(version="5", start=2, end=6)], 6, 4),
        ([S(version="5", start=2, end=6)], 6, 5),
        ([S(version="x", start=0, end=2), S(version="7", start=2, end=4)], 4, 7),
        (None, 3, 1),
    ]
    for spans, n, default in cases:
        runs = token_runs(spans, n, default)
        c = Completion(list(range(n)), [-1.0] * n, "t", "stop", runs)
        got = decode(encode(RolloutGroup("r", "a", default, [PromptResult([1], [c])]))).results[0].completions[0]
        cover = got.runs(default)
        assert cover[0][0] == 0 and cover[-1][1] == n
        assert all(a[1] == b[0] for a, b in zip(cover, cover[1:], strict=False))
    assert token_runs(cases[0][0], 8, 2) == [0, 2, 3, 4]
    assert token_runs(cases[1][0], 6, 4) == [0, 4, 2, 5] and token_runs(cases[2][0], 6, 5) == [0, 5]


def test_engine_kwargs_size_max_loras_to_the_versions_live():
    """adapter mode: vLLM's max_loras is the versions that can run in one batch: max_staleness + 1 in flight,
    1 drained, or actor.max_lora_versions; its CPU cache one more."""
    from actor.engine_args import engine_kwargs
    from configs import RunConfig

    def slots(**actor_sync):
        actor = {k: v for k, v in actor_sync.items() if k != "max_staleness"}
        cfg = RunConfig(model_id="m", max_steps=1, learning_rate=1e-5, actor=actor,
                        sync={"max_staleness": actor_sync.get("max_staleness", 1)})
        kw = engine_kwargs(cfg, gpu=True, dtype="bfloat16", mode="adapter", seed=1)
        assert kw["max_cpu_loras"] == kw["max_loras"] + 1
        return kw["max_loras"]

    assert slots(max_staleness=0) == 1 and slots(max_staleness=1) == 2 and slots(max_staleness=3) == 4
    assert slots(max_staleness=3, load_mode="drain") == 1
    assert slots(max_staleness=1, max_lora_versions=5) == 5


def test_sampled_logprobs_flat_and_per_position():
    """The sampled tokens' logprobs out of vLLM's flat lists (one entry per position) or its per-position dicts;
    the same numbers either way, NaN where a position has none, and flat lists of other tokens are not taken."""
    from vllm.logprobs import FlatLogprobs, Logprob

    from actor.outputs import sampled_logprobs

    ids, lps = [5, 9, 5], [-0.5, -1.25, -2.0]
    flat = FlatLogprobs()
    for t, lp in zip(ids, lps, strict=True):
        flat.append({t: Logprob(lp, 1, None)})
    dicts = [{t: Logprob(lp, 1, None)} for t, lp in zip(ids, lps, strict=True)]
    assert sampled_logprobs(ids, flat) == sampled_logprobs(ids, dicts) == lps
    assert sampled_logprobs([5, 9, 6], flat)[:2] == lps[:2] and math.isnan(sampled_logprobs([5, 9, 6], flat)[2])
    assert math.isnan(sampled_logprobs([5, 9, 5], [dicts[0], None, dicts[2]])[1])


def test_the_vllm_internals_inflight_loads_rely_on():
    """``actor.loading``'s in-flight load leans on vLLM 0.32 internals (its module docstring): a scheduler pause that
    keeps requests (``sleep(level=0, mode="keep")`` -> ``pause_scheduler("keep")``, resumed by
    ``wake_up(["scheduling"])``), weight labels stamped on every step's outputs and turned into per-completion
    spans, prompts with a prefix-cache salt, ``reset_prefix_cache`` refusing while requests hold blocks. A vLLM
    without them fails here, not silently in a run."""
    import inspect
    import typing

    from vllm.inputs import TokensPrompt
    from vllm.outputs import CompletionOutput, WeightVersionSpan
    from vllm.v1.core.sched.scheduler import Scheduler
    from vllm.v1.engine import EngineCoreOutputs
    from vllm.v1.engine.core import EngineCore, EngineCoreProc
    from vllm.v1.engine.llm_engine import LLMEngine
    from vllm.v1.engine.output_processor import OutputProcessor

    assert "keep" in typing.get_args(inspect.signature(EngineCore.pause_scheduler).parameters["mode"].annotation)
    assert "_weight_version" in inspect.getsource(EngineCore.step)  # outputs stamped in every step
    assert "pause_scheduler(mode=mode" in inspect.getsource(EngineCore.sleep)
    assert "has_work" in inspect.getsource(EngineCoreProc._pause_complete)  # answered once no step is running
    for name in ("sleep", "wake_up", "set_weight_version"):
        assert callable(getattr(LLMEngine, name))
    assert "weight_version" in inspect.signature(OutputProcessor.process_outputs).parameters
    assert "weight_version" in EngineCoreOutputs.__struct_fields__
    assert "weight_versions" in inspect.signature(CompletionOutput).parameters
    assert [f for f in ("version", "start", "end") if f in inspect.signature(WeightVersionSpan).parameters] == [
        "version", "start", "end"]
    assert "cache_salt" in TokensPrompt.__annotations__
    assert "reset_running_requests" in inspect.signature(Scheduler.reset_prefix_cache).parameters
