"""The ``vllm.LLM`` arguments of an actor's engine: a function of the run config and the device, so CPU tests check
the GPU ones (vLLM's CUDA path is not its CPU path: what each GPU-only argument is for is said where it is set)."""

from __future__ import annotations

from configs import RunConfig

from actor.runtime import lora_rank_slot

WORKER_EXTENSION = "actor.readback.ActorWorkerExtension"  # merged serving and the readback, every worker


def engine_kwargs(cfg: RunConfig, *, gpu: bool, dtype: str, mode: str, seed: int) -> dict:
    """The ``vllm.LLM`` arguments of an actor's engine (a function of the config, so CPU tests check the GPU ones)."""
    kwargs = dict(
        model=str(cfg.model_id),
        tokenizer=str(cfg.model_id),
        dtype=dtype,
        max_model_len=cfg.max_seq_length,
        tensor_parallel_size=cfg.actor.tensor_parallel_size,
        enable_prefix_caching=cfg.actor.enable_prefix_caching,
        max_num_seqs=cfg.actor.max_num_seqs,
        logprobs_mode="processed_logprobs",
        seed=seed,
        enforce_eager=cfg.actor.enforce_eager,
    )
    if cfg.actor.kv_cache_gb is not None:
        kwargs["kv_cache_memory_bytes"] = int(cfg.actor.kv_cache_gb * 2**30)
    if cfg.actor.kv_cache_gb is None or gpu:
        # On a GPU vLLM's start-up check asks for gpu_memory_utilization x total to be free, also beside a fixed KV
        # cache: on a GPU shared with the learner (launch.memory sets both) that is the actor's share, so a restarted
        # actor starts beside a running learner. On CPU the fraction is of host memory and stays out of it.
        kwargs["gpu_memory_utilization"] = cfg.actor.gpu_memory_utilization
    # The plan's value (launch.memory budgets vLLM's profiling peak from it) on every device: vLLM's own default
    # depends on the GPU (16,384 on GPUs of 70 GiB or more except the A100: EngineArgs.get_batch_defaults).
    kwargs["max_num_batched_tokens"] = cfg.batched_tokens
    if gpu:
        kwargs.update(gpu_engine_kwargs(cfg, dtype))
    else:
        # Seeded requests whose prompt is prefilled in chunks crash vLLM 0.32's CPU worker ("CPU Generator
        # does not use offset": it rewinds the generator of a partially prefilled request, which only CUDA
        # generators support). Whole prompts only: never split a prefill across engine steps.
        kwargs["enable_chunked_prefill"] = False
    kwargs["worker_extension_cls"] = WORKER_EXTENSION
    if mode == "adapter":
        # max_loras: the versions live in one batch (RunConfig.lora_slots); the CPU cache keeps one more, so the
        # newest version loads beside them without evicting one a running request holds.
        kwargs.update(enable_lora=True, max_lora_rank=lora_rank_slot(cfg.lora_r), max_loras=cfg.lora_slots,
                      max_cpu_loras=cfg.lora_slots + 1)
    return kwargs


def attention_backend(setting: str, dtype: str) -> str | None:
    """The attention backend a GPU engine is pinned to (``actor.attention_backend``; None: vLLM chooses).

    >>> [attention_backend(s, d) for s, d in (("auto", "bfloat16"), ("auto", "float32"), ("vllm", "float16"))]
    ['FLASH_ATTN', 'TRITON_ATTN', None]
    """
    if setting == "vllm":
        return None
    if setting == "auto":
        return "TRITON_ATTN" if dtype == "float32" else "FLASH_ATTN"
    return setting


def gpu_engine_kwargs(cfg: RunConfig, dtype: str) -> dict:
    """What an engine on a GPU gets beyond the common arguments (vLLM's CUDA path is not its CPU path):

    - ``attention_backend`` pinned (:func:`attention_backend`): vLLM's CUDA platform raises on a selected backend that
      does not load (``CudaPlatform.get_attn_backend_cls``) where its own choice would fall through a priority list
      to FlashInfer, whose kernels are JIT-compiled with nvcc.
    - ``async_scheduling=False`` for an inline engine. On CUDA vLLM turns async scheduling on (a batch queue of 2,
      ``VllmConfig`` when ``async_scheduling`` is None). An in-process EngineCore's ``pause_scheduler`` returns without
      waiting for that queue, unlike the separate EngineCore's (``EngineCoreProc._pause_complete`` waits for
      ``has_work()``, the batch queue included): a batch computed under the old weights would be labelled with the
      version an in-flight load set after it. Separate engines keep vLLM's default.
    """
    out: dict = {}
    backend = attention_backend(cfg.actor.attention_backend, dtype)
    if backend is not None:
        out["attention_backend"] = backend
    if cfg.actor.inline_engine:
        out["async_scheduling"] = False
    return out
