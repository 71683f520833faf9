"""Every vLLM internal ``actor/`` relies on, in one place: what it is, where we use it, which file and function of
vLLM 0.32's CUDA path it was checked against, and a check that fails when a vLLM upgrade changes it.

The installed vllm package ships the CUDA code beside the CPU code, so the CUDA branches can be read here even where
they cannot run: the V2 model runner (``vllm/v1/worker/gpu/``, imports on CPU), the CUDA platform
(``vllm/platforms/cuda.py``, read as source: it does not import without the CUDA extension), the punica GPU wrapper.
``tests/unit/test_vllm_pins.py`` runs every check; a failure names the pin. Public API (``LLM``, ``SamplingParams``,
``LoRARequest``, ``LLMEngine.add_lora`` ...) is not listed: vLLM documents it.

What the reading found, beyond the pins: on CUDA vLLM forks its EngineCore and the actor must not probe CUDA before
(``configs.device.PROCESS_ENV_FORCED``); async scheduling is on, and only the separate EngineCore's pause waits for
its batch queue (``actor.engine_args.gpu_engine_kwargs`` turns it off for inline engines); ``max_num_batched_tokens``
defaults by GPU (the engine now gets the plan's); every step re-activates the running batch's LoRA adapters, LRU
(the adapter load and its readback share one pause); FlashInfer's sampler and attention JIT-compile with nvcc
(``VLLM_USE_FLASHINFER_SAMPLER=0``, the attention backend pinned). The V2 runner keeps what we read and write:
``get_model()``, ``lora_manager`` (the same ``LoRAModelRunnerMixin``), ``reload_weights`` into the same storage (so
captured CUDA graphs stay valid) followed by ``reset_lora_state``, and its sampler honours ``processed_logprobs``.
"""

from __future__ import annotations

import ast
import functools
import inspect
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Pin:
    name: str
    """The internal: attribute, method, environment variable or default."""
    used_in: str
    """Where ``actor/`` (or ``configs``) relies on it."""
    cuda_path: str
    """The vLLM file and function on the CUDA path it was checked against."""
    check: Callable[[], bool]
    """True while vLLM still behaves as the pin says."""


@functools.cache
def vllm_dir() -> Path:
    import importlib.util

    return Path(importlib.util.find_spec("vllm").origin).parent


def src(rel: str, qualname: str | None = None) -> str:
    """The source of ``vllm/<rel>``, or of one class or function in it (``"Class.method"``), read from the installed
    package without importing it (``platforms/cuda.py`` does not import on a CPU build)."""
    text = (vllm_dir() / rel).read_text()
    if qualname is None:
        return text
    nodes = ast.parse(text).body
    node = None
    for part in qualname.split("."):
        node = next((n for n in nodes if isinstance(n, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
                     and n.name == part), None)
        if node is None:
            return ""
        nodes = node.body
    return ast.get_source_segment(text, node) or ""


def _has(obj, *names: str) -> bool:
    return all(callable(getattr(obj, n, None)) for n in names)


def _dtypes(rel: str, cls: str) -> str:
    """The ``supported_dtypes`` list of an attention backend class, as source."""
    return src(rel, cls).split("supported_dtypes", 1)[-1].split("= [", 1)[-1].split("]", 1)[0]


def _core():
    from vllm.v1.engine.core import EngineCore, EngineCoreProc

    return EngineCore, EngineCoreProc


def _params(fn) -> set[str]:
    return set(inspect.signature(fn).parameters)


def _v2_runner():
    from vllm.v1.worker.gpu.model_runner import GPUModelRunner

    return GPUModelRunner


def _v1_runner():
    from vllm.v1.worker.gpu_model_runner import GPUModelRunner

    return GPUModelRunner


PINS: list[Pin] = [
    # --- process start (CUDA forks EngineCore) ------------------------------------------------------------------
    Pin("VLLM_WORKER_MULTIPROC_METHOD defaults to fork",
        "configs.device.PROCESS_ENV_FORCED (why no CUDA probe may come before vLLM's fork)",
        "vllm/envs.py; vllm/utils/system_utils.py get_mp_context",
        lambda: '"VLLM_WORKER_MULTIPROC_METHOD", "fork"' in src("envs.py")),
    Pin("_maybe_force_spawn switches to spawn only when CUDA is initialised",
        "configs.device.PROCESS_ENV_FORCED",
        "vllm/utils/system_utils.py _maybe_force_spawn, vllm/utils/platform_utils.py cuda_is_initialized",
        lambda: "cuda_is_initialized()" in src("utils/system_utils.py", "_maybe_force_spawn")
        and "is_initialized()" in src("utils/platform_utils.py", "cuda_is_initialized")),
    Pin("import vllm sets PYTORCH_NVML_BASED_CUDA_CHECK=1 (only at import)",
        "configs.device.process_env sets it before any probe",
        "vllm/env_override.py",
        lambda: 'os.environ["PYTORCH_NVML_BASED_CUDA_CHECK"] = "1"' in src("env_override.py")),
    Pin("VLLM_NO_USAGE_STATS=1 turns usage statistics off",
        "configs.device.PROCESS_ENV_DEFAULTS",
        "vllm/usage/usage_lib.py is_usage_stats_enabled",
        lambda: "VLLM_NO_USAGE_STATS" in src("usage/usage_lib.py", "is_usage_stats_enabled")),
    Pin("VLLM_USE_FLASHINFER_SAMPLER=0 keeps the nvcc-free sampler",
        "configs.device.PROCESS_ENV_DEFAULTS",
        "vllm/v1/sample/ops/topk_topp_sampler.py",
        lambda: "if not envs.VLLM_USE_FLASHINFER_SAMPLER" in src("v1/sample/ops/topk_topp_sampler.py")),
    Pin("a selected attention backend that does not load raises (no fall back)",
        "actor.engine_args.attention_backend",
        "vllm/platforms/cuda.py CudaPlatformBase.get_attn_backend_cls",
        lambda: "Selected backend" in (s := src("platforms/cuda.py", "CudaPlatformBase.get_attn_backend_cls"))
        and "raise ValueError" in s.split("# No selected backend")[0]),
    Pin("FlashAttention has no float32 kernels (TRITON_ATTN has)",
        "actor.engine_args.attention_backend (auto: TRITON_ATTN for float32 engines)",
        "vllm/v1/attention/backends/flash_attn.py, triton_attn.py supported_dtypes",
        lambda: "float32" not in _dtypes("v1/attention/backends/flash_attn.py", "FlashAttentionBackend")
        and "float32" in _dtypes("v1/attention/backends/triton_attn.py", "TritonAttentionBackend")),
    # --- engine defaults that differ by platform ----------------------------------------------------------------
    Pin("max_num_batched_tokens defaults by GPU memory (16,384 on >= 70 GiB except the A100)",
        "actor.engine_args.engine_kwargs sets RunConfig.batched_tokens; launch.memory budgets it",
        "vllm/engine/arg_utils.py EngineArgs.get_batch_defaults",
        lambda: "70 * GiB_bytes" in (s := src("engine/arg_utils.py", "EngineArgs.get_batch_defaults"))
        and '"a100" not in device_name' in s),
    Pin("async scheduling: None becomes True unless the executor cannot; the CPU platform forces False",
        "actor.engine_args.gpu_engine_kwargs (async_scheduling=False for inline engines on a GPU)",
        "vllm/config/vllm.py VllmConfig (async_scheduling), vllm/platforms/cpu.py check_and_update_config",
        lambda: "self.scheduler_config.async_scheduling = True" in src("config/vllm.py")
        and "scheduler_config.async_scheduling = False" in src("platforms/cpu.py")),
    Pin("async scheduling queues 2 batches (max_concurrent_batches)",
        "actor.engine_args.gpu_engine_kwargs",
        "vllm/config/vllm.py VllmConfig.max_concurrent_batches",
        lambda: "return 2" in src("config/vllm.py", "VllmConfig.max_concurrent_batches")),
    Pin("the V2 model runner on CUDA with Triton",
        "actor.readback, actor.merge (get_model, lora_manager, reload_weights on either runner)",
        "vllm/config/vllm.py VllmConfig.use_v2_model_runner, vllm/v1/worker/gpu_worker.py",
        lambda: "HAS_TRITON" in src("config/vllm.py", "VllmConfig.use_v2_model_runner")),
    # --- the scheduler pause (in-flight loads) ------------------------------------------------------------------
    Pin("LLMEngine.sleep(level=0, mode='keep') / wake_up(['scheduling']) / set_weight_version",
        "actor.loading.VersionLoading._paused, _load_merged",
        "vllm/v1/engine/llm_engine.py LLMEngine.sleep, wake_up, set_weight_version",
        lambda: __import__("vllm.v1.engine.llm_engine", fromlist=["LLMEngine"]).LLMEngine is not None
        and _has(__import__("vllm.v1.engine.llm_engine", fromlist=["LLMEngine"]).LLMEngine,
                 "sleep", "wake_up", "set_weight_version")),
    Pin("EngineCore.sleep(level=0) is pause_scheduler(mode, ...) with 'keep' (PAUSED_ALL)",
        "actor.loading.VersionLoading._paused",
        "vllm/v1/engine/core.py EngineCore.sleep, EngineCore.pause_scheduler",
        lambda: "pause_scheduler(mode=mode" in inspect.getsource(_core()[0].sleep)
        and "PAUSED_ALL" in inspect.getsource(_core()[0].pause_scheduler)),
    Pin("the separate EngineCore answers a pause once has_work() is False",
        "actor.loading.VersionLoading._paused (the pause lands between two steps)",
        "vllm/v1/engine/core.py EngineCoreProc.pause_scheduler, _pause_complete",
        lambda: "has_work" in inspect.getsource(_core()[1]._pause_complete)
        and "_pause_complete" in inspect.getsource(_core()[1].pause_scheduler)),
    Pin("has_work() counts the batch queue (async scheduling's queued batch)",
        "actor.loading.VersionLoading._paused: a pause waits for the queued batch on a separate engine",
        "vllm/v1/engine/core.py EngineCoreProc.has_work",
        lambda: "batch_queue" in inspect.getsource(_core()[1].has_work)),
    Pin("the in-process EngineCore's pause does not wait for its batch queue",
        "actor.engine_args.gpu_engine_kwargs (why inline engines run without async scheduling on a GPU)",
        "vllm/v1/engine/core.py EngineCore.pause_scheduler",
        lambda: "_pause_complete" not in inspect.getsource(_core()[0].pause_scheduler)
        and "return None" in inspect.getsource(_core()[0].pause_scheduler)),
    Pin("step_with_batch_queue stamps each batch's outputs with the weight label at its output time",
        "actor.versions.token_runs (merged mode's per-token versions on CUDA)",
        "vllm/v1/engine/core.py EngineCore.step_with_batch_queue",
        lambda: "_attach_weight_version" in inspect.getsource(_core()[0].step_with_batch_queue)
        and "_attach_weight_version" in inspect.getsource(_core()[0].step)),
    Pin("weight labels: EngineCoreOutputs.weight_version -> CompletionOutput.weight_versions spans",
        "actor.versions.token_runs",
        "vllm/v1/engine/__init__.py EngineCoreOutputs, vllm/v1/engine/output_processor.py, vllm/outputs.py",
        lambda: "weight_version" in __import__("vllm.v1.engine", fromlist=["EngineCoreOutputs"])
        .EngineCoreOutputs.__struct_fields__
        and "weight_versions" in _params(__import__("vllm.outputs", fromlist=["CompletionOutput"]).CompletionOutput)
        and [f for f in ("version", "start", "end") if f in _params(
            __import__("vllm.outputs", fromlist=["WeightVersionSpan"]).WeightVersionSpan)] == ["version", "start",
                                                                                            "end"]),
    Pin("TokensPrompt.cache_salt (per-load prefix-cache salt)",
        "actor.engine.RolloutEngine.submit",
        "vllm/inputs (TokensPrompt), vllm/v1/core/kv_cache_utils.py (salt in the first block hash)",
        lambda: "cache_salt" in __import__("vllm.inputs", fromlist=["TokensPrompt"]).TokensPrompt.__annotations__),
    Pin("Scheduler.reset_prefix_cache refuses while running requests hold blocks",
        "actor.loading.VersionLoading._load_merged (reset only when idle; the salt otherwise)",
        "vllm/v1/core/sched/scheduler.py Scheduler.reset_prefix_cache",
        lambda: "reset_running_requests" in _params(
            __import__("vllm.v1.core.sched.scheduler", fromlist=["Scheduler"]).Scheduler.reset_prefix_cache)),
    # --- the workers (merge and readback) -----------------------------------------------------------------------
    Pin("worker_extension_cls is mixed into the worker class",
        "actor.engine_args.WORKER_EXTENSION (merge_lora_dir, readback_served through collective_rpc)",
        "vllm/v1/worker/worker_base.py WorkerWrapperBase",
        lambda: "worker_extension_cls" in src("v1/worker/worker_base.py")),
    Pin("V1 and V2 model runners: get_model()",
        "actor.merge, actor.readback (self.model_runner.get_model())",
        "vllm/v1/worker/gpu/model_runner.py GPUModelRunner.get_model (V2), gpu_model_runner.py (V1, CPU's base)",
        lambda: _has(_v2_runner(), "get_model") and _has(_v1_runner(), "get_model")),
    Pin("V1 and V2 model runners: reload_weights(weights_iterator=...) in place, then reset_lora_state",
        "actor.merge.LoraMergeExtension.merge_lora_dir",
        "vllm/v1/worker/gpu/model_runner.py GPUModelRunner.reload_weights (V2), gpu_model_runner.py (V1)",
        lambda: all("weights_iterator" in _params(r.reload_weights) and "reset_lora_state" in
                    inspect.getsource(r.reload_weights) for r in (_v2_runner(), _v1_runner()))),
    Pin("reset_lora_state is a no-op without LoRA (merged mode keeps nothing to lose)",
        "actor.merge (merged mode runs without enable_lora)",
        "vllm/v1/worker/lora_model_runner_mixin.py LoRAModelRunnerMixin.reset_lora_state",
        lambda: "if not self.lora_config" in src("v1/worker/lora_model_runner_mixin.py",
                                                 "LoRAModelRunnerMixin.reset_lora_state")),
    Pin("V2 runner's lora_manager is the LoRAModelRunnerMixin's LRUCacheWorkerLoRAManager",
        "actor.readback.ActorWorkerExtension._readback_lora (model_runner.lora_manager._adapter_manager)",
        "vllm/v1/worker/gpu/model_runner.py GPUModelRunner (LoRAModelRunnerMixin.load_lora_model)",
        lambda: "LoRAModelRunnerMixin" in [b.__name__ for b in _v2_runner().__mro__]
        and "self.lora_manager = LRUCacheWorkerLoRAManager" in src("v1/worker/lora_model_runner_mixin.py")
        and "self.load_lora_model" in inspect.getsource(_v2_runner().load_model)),
    Pin("LoRA slots: lora_index_to_id, modules, lora_a_stacked / lora_b_stacked per layer",
        "actor.readback.ActorWorkerExtension._readback_lora",
        "vllm/lora/model_manager.py LoRAModelManager, vllm/lora/layers/base_linear.py BaseLinearLayerWithLoRA",
        lambda: "self.lora_index_to_id" in src("lora/model_manager.py", "LoRAModelManager.__init__")
        and "self.lora_a_stacked = tuple(" in src("lora/layers/base_linear.py")
        and "self.lora_b_stacked = tuple(" in src("lora/layers/base_linear.py")),
    Pin("activating an adapter into full slots evicts the least recently used one",
        "actor.loading.VersionLoading.load_adapter (add_lora and the readback inside one pause)",
        "vllm/lora/model_manager.py LRUCacheLoRAModelManager.activate_adapter, worker_manager.py _apply_adapters",
        lambda: "remove_oldest" in src("lora/model_manager.py", "LRUCacheLoRAModelManager.activate_adapter")
        and "self.add_adapter(lora)" in src("lora/worker_manager.py", "LRUCacheWorkerLoRAManager._apply_adapters")),
    Pin("the parallel linear layers' partition attributes",
        "actor.readback.shard_slices",
        "vllm/model_executor/layers/linear.py QKVParallelLinear, MergedColumnParallelLinear, Column/RowParallelLinear",
        lambda: all(a in src("model_executor/layers/linear.py") for a in (
            "self.num_kv_head_replicas", "self.output_sizes", "self.output_size_per_partition",
            "self.input_size_per_partition", "self.head_size"))),
    # --- sampling ------------------------------------------------------------------------------------------------
    Pin("logprobs_mode='processed_logprobs' on the V2 sampler",
        "actor.engine_args.engine_kwargs (the importance ratio needs the sampled distribution's logprobs)",
        "vllm/v1/worker/gpu/sample/sampler.py Sampler.__call__",
        lambda: "PROCESSED_LOGPROBS_MODES" in src("v1/worker/gpu/sample/sampler.py", "Sampler.__call__")
        and '"logprobs_mode": self.model_config.logprobs_mode' in src("v1/worker/gpu/model_runner.py")),
    Pin("SamplingParams.flat_logprobs and FlatLogprobs.token_ids / logprobs",
        "actor.outputs.sampled_logprobs",
        "vllm/sampling_params.py, vllm/logprobs.py FlatLogprobs",
        lambda: "flat_logprobs" in _params(__import__("vllm", fromlist=["SamplingParams"]).SamplingParams)
        or hasattr(__import__("vllm", fromlist=["SamplingParams"]).SamplingParams(), "flat_logprobs")),
    # --- tool episodes (actor.episodes) -------------------------------------------------------------------------
    Pin("stop strings need detokenize=True; the token completing one is kept (include_stop_str_in_output), later "
        "tokens of the same step dropped",
        "actor.episodes.EpisodeRunner._params (a tool's closing tag ends the turn; the ids are what was sampled)",
        "vllm/sampling_params.py SamplingParams._verify_args, vllm/v1/engine/detokenizer.py "
        "BaseIncrementalDetokenizer.update (front end: the same on CUDA, where async scheduling may have sampled a "
        "token past the stop that is never returned)",
        lambda: "stop strings are only supported when detokenize is True" in src("sampling_params.py")
        and "del self.token_ids[first_new_token_index + num_kept :]" in src(
            "v1/engine/detokenizer.py", "BaseIncrementalDetokenizer.update")),
    Pin("the k-th child of an n-sample request is seeded seed + k",
        "actor.episodes.EpisodeRunner.start (episode k's first turn samples what a single-turn request's k-th did)",
        "vllm/v1/engine/parallel_sampling.py ParentRequest",
        lambda: "child_sampling_params.seed = seed + index" in src("v1/engine/parallel_sampling.py")),
    # --- the inline engine ---------------------------------------------------------------------------------------
    Pin("VLLM_ENABLE_V1_MULTIPROCESSING=0 runs EngineCore in-process (InprocClient)",
        "actor.runtime.inline_engine_env",
        "vllm/v1/engine/llm_engine.py LLMEngine.from_engine_args, vllm/v1/engine/core_client.py InprocClient",
        lambda: "envs.VLLM_ENABLE_V1_MULTIPROCESSING" in src("v1/engine/llm_engine.py")
        and "self.engine_core.step_fn()" in src("v1/engine/core_client.py", "InprocClient.get_output")),
    Pin("cleanup_dist_env_and_memory releases an inline engine's process groups",
        "actor.runtime.release_inline_engine",
        "vllm/distributed/parallel_state.py cleanup_dist_env_and_memory",
        lambda: callable(__import__("vllm.distributed.parallel_state", fromlist=["x"]).cleanup_dist_env_and_memory)),
    Pin("VLLM_RPC_BASE_PATH places vLLM's ipc sockets",
        "actor.runtime.private_rpc_dir",
        "vllm/envs.py",
        lambda: '"VLLM_RPC_BASE_PATH"' in src("envs.py")),
    # --- a dead EngineCore (the same SyncMPClient on CUDA and CPU) -----------------------------------------------
    Pin("SyncMPClient: step() waits on outputs_queue, a utility call on its future in utility_results",
        "actor.core_watch.CoreWatch.fail_waiting",
        "vllm/v1/engine/core_client.py SyncMPClient.get_output, SyncMPClient.call_utility",
        lambda: "self.outputs_queue.get()" in src("v1/engine/core_client.py", "SyncMPClient.get_output")
        and "self.utility_results[call_id] = future" in src("v1/engine/core_client.py", "SyncMPClient.call_utility")
        and "future.result()" in src("v1/engine/core_client.py", "SyncMPClient.call_utility")),
    Pin("the monitor of a dead EngineCore sets resources.engine_dead and fails no waiting call",
        "actor.core_watch.CoreWatch.dead",
        "vllm/v1/engine/core_client.py MPClient.start_engine_core_monitor",
        lambda: "_self.resources.engine_dead = True" in src("v1/engine/core_client.py",
                                                            "MPClient.start_engine_core_monitor")
        and "utility_results" not in src("v1/engine/core_client.py", "MPClient.start_engine_core_monitor")),
]


def failing() -> list[str]:
    """Names of the pins whose check fails (or raises) on the installed vLLM."""
    bad = []
    for pin in PINS:
        try:
            ok = bool(pin.check())
        except Exception as e:  # noqa: BLE001 - an internal that moved raises: that is the failure reported
            ok = False
            bad.append(f"{pin.name} ({type(e).__name__}: {e})")
            continue
        if not ok:
            bad.append(pin.name)
    return bad
