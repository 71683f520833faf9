"""Typed run configuration: one pydantic model per section, ``extra="forbid"`` everywhere.

Field names follow the user's handoff (``model_id``, ``max_steps``, ``learning_rate``, ...) so
a V4.1 reader recognises them. ``prompts_per_step`` is the handoff's ``BATCH_SIZE``: prompts per
optimizer step, each expanded to ``num_generations`` completions.

Validation is pure: no file is opened here (paths are checked by the process that uses them,
before anything starts). Loading YAML, ``extends:`` and ``--set`` overrides live in
:mod:`configs.loader`.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from configs.rewards import (  # noqa: F401 - re-exported: configs.schema is where every section is found
    ExtractionFieldWeights, ExtractionReward, ExtractionWeights, InsightsReward, InsightsWeights,
    PushReward, PushWeights, RewardsConfig, SqlQaReward, SqlQaWeights,
)
from configs.section import Section
from configs.tools import EpisodeConfig, ToolSpec
from configs.watch import WatchRule, _handoff_rules  # noqa: F401 - re-exported, as the reward sections

# LoRA ranks vLLM serves (vllm.lora: max_lora_rank must be one of these).
VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)
SCHEDULERS = ("constant", "constant_with_warmup", "cosine", "linear")
TASKS = ("extraction", "sql_qa", "insights", "push")


class DataConfig(Section):
    db_path: Path = Path("data/commerce.db")
    """SQLite database the sql_qa reward runs queries against (opened read-only)."""
    train_pairs: Path = Path("data/pairs/train.jsonl")
    """Training prompts, one JSON object per line: ours (``prompt`` messages, ``task``, ``answer``, references)
    or TRL's (``prompt`` as messages or a string, ``messages``, ``completion``); a row without ``task`` is
    classified from its prompt. Malformed rows are skipped; more than 1% of them stops the run
    (``commerce.rows.MAX_BAD_SHARE``). ``python -m commerce check --pairs FILE`` reports on a file. Also, read
    through ``datasets`` with the same rows: a ``.parquet``, ``.json`` or ``.csv`` file, a directory saved with
    ``save_to_disk`` (``DIR``, or ``DIR:split`` for a DatasetDict), or a Hub dataset and its split
    (``owner/name:train``; from the datasets cache unless ``TUCANO2_ALLOW_DOWNLOAD=1``): ``commerce.sources``."""
    eval_pairs: Path = Path("data/pairs/eval.jsonl")
    """Held-out prompts for eval; never overlapping train. The same sources as ``train_pairs``."""
    tasks: list[str] = list(TASKS)
    """Tasks kept from the pair files (others are filtered out at load): the four, and your own tasks of
    ``rewards.custom`` (added here by default when this field is not set)."""
    balance_tasks: bool = False
    """Draw the training prompts with the tasks in turn (one of each per four prompts) instead of in proportion
    to their pairs (~40/40/10/10): push and insights then get a quarter of the updates each."""
    insights_pairs: int | None = Field(default=None, ge=1)
    """Insights pairs the data build makes (``python -m commerce build --insights N``); None keeps the
    default mix (~148 train). Scenario C (insights) sets 350."""

    @field_validator("tasks")
    @classmethod
    def _tasks_unique(cls, v: list[str]) -> list[str]:
        if not v:
            raise ValueError("at least one task is required")
        if len(set(v)) != len(v):
            raise ValueError("tasks are listed twice")
        return v


class ActorConfig(Section):
    replicas: int = Field(1, ge=1)
    """Actor processes (one vLLM engine each)."""
    tensor_parallel_size: int = Field(1, ge=1)
    """GPUs per actor engine."""
    gpu_memory_utilization: float = Field(0.85, gt=0, le=1)
    """Fraction of device memory vLLM may take; on CPU the fraction of host memory for the KV cache
    (0.2 is a safe value there; vLLM's 0.92 default fails)."""
    kv_cache_gb: float | None = Field(None, gt=0)
    """KV cache size in GiB, overriding gpu_memory_utilization (useful on CPU, where the fraction is
    taken of one NUMA node's memory and several processes share it)."""
    serve_mode: Literal["auto", "merged", "adapter"] = "auto"
    """``merged``: LoRA deltas merged into the served weights (base-model speed); ``adapter``: vLLM LoRA with
    one adapter name per version; ``auto``: merged on a float32 engine, adapter on bf16/fp16 ones, where
    merging rounds most of a small delta back to the base weights (the served-delta cosine checks it)."""
    load_mode: Literal["inflight", "drain"] = "inflight"
    """How an actor takes a new weight version. ``inflight``: at once, between two engine steps, while requests
    run (the learner never waits for the longest completion): in ``adapter`` mode new requests get the new
    adapter and running ones finish on theirs; in ``merged`` mode the running sequences go on under the new
    weights on the KV cache computed under the old ones (as PipelineRL), and every token records the version
    that sampled it (``sync.wire.Completion.version_runs``). ``drain``: admit nothing new, let every running
    request finish, then load (one version per sequence; the engine idles through the longest completion)."""
    max_lora_versions: int | None = Field(None, ge=1)
    """``adapter`` mode: adapter versions that may be live in one engine batch (vLLM's ``max_loras``; the
    scheduler holds back a request whose adapter would exceed it). None: derived (:attr:`RunConfig.lora_slots`):
    ``sync.max_staleness + 1`` with ``load_mode: inflight`` (the newest version and the older ones the learner's
    staleness bound lets running requests hold), 1 with ``drain``."""
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    """Engine dtype; ``auto`` is bfloat16 on GPU and float32 on CPU (bf16 is emulated there)."""
    enable_prefix_caching: bool = True
    """vLLM automatic prefix caching (the G samples of a prompt share its KV)."""
    max_num_seqs: int = Field(256, ge=1)
    """Sequences one engine step may batch."""
    cpu_threads: int | None = Field(None, ge=1)
    """CPU only: OpenMP threads for the engine (None: vLLM's default binding)."""
    score_rewards: bool = False
    """Score completions in the actor process (overlaps CPU scoring with generation)."""
    top_p: float = Field(1.0, gt=0, le=1)
    """Nucleus sampling for rollouts."""
    enforce_eager: bool = False
    """Disable CUDA graphs (debugging)."""
    inline_engine: bool = False
    """Run vLLM's engine inside the actor process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``: no EngineCore and
    worker processes; on CPU the engine starts in ~9 s instead of ~25 s, BENCHMARKS.md "CI time"). Needs
    ``tensor_parallel_size: 1``. Off by default: the separate EngineCore is what a GPU run uses (its scheduler
    overlaps the actor's own work), and what a kill or a crash of the engine looks like there. On a GPU an inline
    engine runs without vLLM's async scheduling (``actor.engine_args.engine_kwargs``): an in-process EngineCore's pause
    does not wait for its queued batch, which would be labelled with the version loaded after it."""
    device: Literal["auto", "cuda"] = "auto"
    """``cuda``: this actor must run on a GPU; without one it refuses to start, with one line giving the driver's and
    CUDA's versions (``configs.device.no_gpu_line``). The launchers set it where their plan puts actors on GPUs.
    ``auto``: a GPU when torch sees one, else the CPU."""
    shared_gpu: bool = False
    """The actor's GPU is shared with a learner rank (the launcher sets it from its plan). Merged mode then keeps the
    base weights of the merged layers (W0) in pinned host memory: the GPU's free memory at the actor's first load
    includes the learner's share, which the learner may not have allocated yet."""
    max_num_batched_tokens: int = Field(8192, ge=1)
    """Tokens one engine step may process (vLLM's ``max_num_batched_tokens``; raised to ``max_seq_length`` when
    shorter). The engine gets exactly this on GPU and CPU, and ``launch.memory`` budgets vLLM's profiling peak from
    it: vLLM 0.32's own default depends on the GPU (16,384 on GPUs of 70 GiB or more except the A100, 8,192 on the
    rest: ``EngineArgs.get_batch_defaults``), which the plan would not match."""
    attention_backend: str = Field("auto", pattern=r"^[A-Za-z0-9_]+$")
    """vLLM's attention backend on a GPU (ignored on CPU), pinned so that one that fails to load is an error and not a
    fall back to another (FlashInfer's kernels are JIT-compiled with nvcc). ``auto``: ``FLASH_ATTN`` on bf16/fp16
    engines (precompiled in the vLLM wheel), ``TRITON_ATTN`` on float32 ones (FlashAttention has no float32
    kernels); ``vllm``: vLLM's own choice; else a vLLM backend name (``FLASHINFER`` on Blackwell GPUs)."""

    @model_validator(mode="after")
    def _check(self) -> ActorConfig:
        if self.inline_engine and self.tensor_parallel_size > 1:
            raise ValueError(f"actor.inline_engine runs one engine in the actor process: it needs "
                             f"actor.tensor_parallel_size 1, not {self.tensor_parallel_size}")
        return self


class LearnerConfig(Section):
    ranks: int = Field(1, ge=1)
    """Learner processes (DeepSpeed data-parallel ranks)."""
    zero_stage: Literal[0, 1, 2, 3] = 2
    """DeepSpeed ZeRO stage. In bf16, 0 runs DeepSpeed's stage 1 (``BF16_Optimizer``: gradients accumulated in fp32,
    which DeepSpeed's stage 0 refuses for a bf16 model; :mod:`learner.engine`)."""
    precision: Literal["auto", "bf16", "fp32"] = "auto"
    """``auto``: bf16 on GPU, fp32 on CPU."""
    device: Literal["auto", "cuda"] = "auto"
    """``cuda``: the learner must run on a GPU; without one it refuses to start (exit 2, one line giving the driver's
    and CUDA's versions) instead of training on the CPU in float32. The launchers set it where their plan puts the
    learner on GPUs. ``auto``: a GPU when torch sees one, else the CPU."""
    max_grad_norm: float = Field(1.0, gt=0)
    """Gradient clipping."""
    micro_batch_size: int = Field(8, ge=1)
    """Completions per forward/backward pass (gradients accumulate within a step)."""
    checkpoint_every: int = Field(50, ge=1)
    """Optimizer steps between checkpoints (one is also written on SIGTERM and at the end)."""
    keep_checkpoints: int = Field(2, ge=1)
    """Rolling checkpoints kept; the best-by-eval adapter is kept apart."""
    publish_every: int = Field(1, ge=1)
    """Optimizer steps between adapter publications to the actors. A batch can then be up to
    ``publish_every - 1`` versions older than the newest published, so the learner requests
    ``sync.max_staleness - (publish_every - 1)`` batches ahead instead of ``max_staleness``."""
    tis_cap: float = Field(2.0, ge=1)
    """Truncated importance sampling cap on pi_learner/pi_actor, on every row: on a stale one it bounds the policy
    drift, on a fresh one the engines' numeric gap (``learner.loss``). ``delta``, when set, replaces it."""
    seq_ratio_band: tuple[float, float] | None = None
    """``[low, high]``: a completion whose geometric-mean ratio ``exp(mean_t log(pi/mu))`` is outside is not trained
    (verl's Geo-RS, SkyRL's geo mask: [0.999, 1.001] and [0.99, 1.01]); ``sampling/seq_masked`` counts them. The
    floor of the fresh rows' ratio in float32 and bf16 is in the README. None: off."""
    probe_every: int = Field(20, ge=0)
    """Steps between actor-vs-learner logprob probes on a fixed prompt (0: off)."""
    gradient_checkpointing: bool = False
    """Recompute activations in backward (saves memory at long completions)."""
    share_prompt: bool = False
    """Forward each prompt once per micro-batch for all its completions (one packed row) instead of once per
    completion. Same logprobs and gradients; pays off when prompts are long next to completions (the CPU
    configs). Each completion's attention is computed on its prompt and itself (``learner.attention``), with no
    ``[L, L]`` mask built. Off in the GPU configs: its per-span SDPA calls are not yet measured on a GPU."""

    @field_validator("seq_ratio_band")
    @classmethod
    def _band(cls, v):
        if v is not None and not (0 < v[0] < 1 < v[1]):
            raise ValueError(f"must be [low, high] with 0 < low < 1 < high, got {list(v)}")
        return v


class SyncConfig(Section):
    """The two ZeroMQ channels. Trust model: only this user's processes may join them. On one node they are
    Unix (ipc) sockets in a private 0700 directory, which other local users cannot enter; across nodes they
    are TCP with CURVE (encryption + client keys from ``keys_dir``), also when the address is loopback."""

    transport: Literal["auto", "ipc", "tcp"] = "auto"
    """``ipc``: Unix sockets in ``ipc_dir`` (one node); ``tcp``: TCP on ``host`` with CURVE (``keys_dir``
    required); ``auto``: ipc when ``host`` is loopback, tcp otherwise."""
    host: str = "127.0.0.1"
    """Address the learner binds its TCP sockets to (``transport: tcp``); non-loopback means tcp."""
    connect_host: str | None = None
    """Address actors connect to over TCP (default: ``host``)."""
    ipc_dir: Path | None = None
    """Directory of the ipc socket files (default ``/tmp/tucano2-<uid>``). Created with mode 0700; refused if
    another user owns it or others may enter it."""
    rollout_port: int = Field(29610, ge=1024, le=65535)
    """Learner ROUTER socket for rollout requests and groups (TCP port, or the ipc file ``p<port>.sock``)."""
    weight_port: int = Field(29611, ge=1024, le=65535)
    """Learner ROUTER socket for weight updates and acknowledgements (TCP port or ipc file name). The next
    port, ``weight_port + 1``, is the learner ranks' torch.distributed rendezvous (:attr:`master_port`)."""
    keys_dir: Path | None = None
    """Directory made by ``python -m sync.keys DIR`` (CURVE key pairs, mode 0600); required over TCP."""
    max_staleness: int = Field(1, ge=0)
    """Batches generated ahead of training; 0 is synchronous on-policy GRPO. Older rollouts are dropped."""
    publish_weights: bool = True
    """Publish each new adapter to the actors. ``false`` is an ablation only (the actors keep serving the first
    version and every rollout is treated as on-policy): it shows that the sync carries the learning."""
    wait_for_acks: bool = False
    """Block after each publication until every actor acknowledged it (the learner idles through every actor's
    load and readback: for debugging, and the baseline ``python -m learner.ack_bench`` compares with). Off: the
    learner goes on to its next step at once and checks the acknowledgements in the background, with the same
    timeout and the same stop lines; it trains only on rollouts of versions their actor acknowledged and whose
    readback passed (``learner.acks``)."""
    wire_dtype: Literal["bf16", "fp32"] = "bf16"
    """Dtype of LoRA tensors on the wire."""
    weight_transfer: Literal["auto", "inline", "file", "sealed"] = "auto"
    """How each version reaches the actors (``sync.carry``). ``file`` (one node; what ``auto`` picks with ipc):
    written once to the learner's private directory on /dev/shm, each actor links it and checks its checksum.
    ``sealed`` (across nodes; what ``auto`` picks with tcp): encrypted once for every actor (``sync.seal``), the key
    sent over CURVE, the sealed bytes fetched from the learner's ``fetch_port``. ``inline``: the tensors in the
    message to each actor (over TCP CURVE encrypts them once per actor)."""
    fetch_port: int = Field(0, ge=0, le=65535)
    """TCP port the learner serves sealed versions on (``weight_transfer: sealed``); 0: a free one, named in each
    notice to the actors. Set it when a firewall between nodes opens only known ports."""
    max_message_mb: int = Field(1024, ge=1)
    """Ceiling for a weight update when the actor cannot derive the adapter's size from the model config;
    the other messages' caps are derived from the run's lengths (``sync.limits``)."""
    ack_timeout_s: float = Field(120.0, gt=0)
    """Seconds to wait for all actors to acknowledge a weight version before failing the run."""
    actor_start_timeout_s: float = Field(900.0, gt=0)
    """Seconds the learner waits, once it has loaded its model, for every actor (``actor.replicas``) to connect
    before it publishes the first version: the launchers start actors and learner together, and an engine's start
    (weights, compile, warm-up) may outlast the learner's. The launchers' ``--ready-timeout`` sets it."""
    min_delta_cosine: float = Field(0.99, ge=0, le=1)
    """Each actor reports the cosine between the LoRA delta it serves and the one published; below this the
    sync failed (e.g. merged serving rounding a small delta away in bf16) and the run stops."""
    max_logprob_gap: float | None = Field(None, gt=0)
    """Mean |actor - learner| logprob per token on the probe prompt (``learner.probe_every``), both at the same
    version, above which the sync failed and the run stops: the engine samples from another policy than the one
    trained. None: by precision, from the measured floors (README, GPU section): 0.01 when actor and learner both
    compute in float32, 0.1 when either is bf16/fp16."""
    request_timeout_s: float = Field(600.0, gt=0)
    """Seconds before an unanswered rollout request is re-sent to another actor."""
    heartbeat_s: float = Field(2.0, gt=0)
    """Actor heartbeat period; an actor silent for 5 periods is presumed dead."""

    @property
    def is_loopback(self) -> bool:
        if self.host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False

    @property
    def kind(self) -> str:
        """The transport in use: ``ipc`` or ``tcp``."""
        if self.transport == "auto":
            return "ipc" if self.is_loopback else "tcp"
        return self.transport

    @property
    def master_port(self) -> int:
        """The learner ranks' torch.distributed rendezvous port (``MASTER_PORT``) on the learner node."""
        return self.weight_port + 1

    @model_validator(mode="after")
    def _check(self) -> SyncConfig:
        if self.weight_transfer == "file" and self.kind != "ipc":
            raise ValueError("sync.weight_transfer file needs every actor on the learner's node (transport ipc); "
                             "across nodes use sealed, inline or auto")
        if self.weight_transfer == "sealed" and self.kind != "tcp":
            raise ValueError("sync.weight_transfer sealed is for actors across nodes (transport tcp); on one node "
                             "use file, inline or auto")
        if self.fetch_port and self.fetch_port in (self.rollout_port, self.weight_port, self.master_port):
            raise ValueError(f"sync.fetch_port {self.fetch_port} is taken by the rollout, weight or rendezvous port")
        if self.rollout_port == self.weight_port:
            raise ValueError("sync.rollout_port and sync.weight_port must differ")
        if self.rollout_port == self.master_port:
            raise ValueError(f"sync.rollout_port {self.rollout_port} is sync.weight_port + 1, the learner ranks' "
                             "rendezvous port: pick another")
        if self.master_port > 65535:
            raise ValueError("sync.weight_port must be below 65535: the next port is the learner ranks' rendezvous")
        if self.kind == "tcp" and self.keys_dir is None:
            why = "transport tcp" if self.is_loopback else f"sync.host {self.host!r} is not loopback (transport tcp)"
            raise ValueError(f"{why}: set sync.keys_dir, TCP channels always use CURVE "
                             "(make keys with `python -m sync.keys DIR`)")
        return self


class EvalConfig(Section):
    every: int = Field(10, ge=0)
    """Optimizer steps between evals (0: off)."""
    subset_size: int = Field(64, ge=1)
    """Eval prompts per eval (a fixed, task-stratified subset of the eval pairs)."""
    temperature: float = Field(0.0, ge=0)
    """Sampling temperature at eval (0: greedy)."""
    samples: int = Field(1, ge=1, le=64)
    """Completions per eval prompt (their mean is the prompt's score); more than 1 only with temperature > 0:
    a sampled eval of several completions per prompt measures the policy GRPO optimises with less noise."""
    at_start: bool = True
    """Eval once before the first update (the 'before' of the report)."""

    @model_validator(mode="after")
    def _check(self) -> EvalConfig:
        if self.samples > 1 and self.temperature == 0:
            raise ValueError("eval.samples > 1 needs eval.temperature > 0 (greedy completions are all the same)")
        return self


class LoggingConfig(Section):
    wandb_mode: Literal["offline", "online", "disabled"] = "offline"
    """wandb mode: offline runs can be synced later with ``wandb sync``."""
    wandb_project: str = "tucano2-grpo"
    """wandb project name."""
    wandb_entity: str | None = None
    """wandb entity (team or user)."""
    log_every: int = Field(1, ge=1)
    """Steps between metric lines."""


class DynamicSamplingConfig(Section):
    """Groups with no spread are replaced (DAPO's dynamic sampling, verl's ``filter_groups``): a step trains on
    ``prompts_per_step`` groups that teach something, as far as the budget below allows (``learner.dynamic``)."""

    enabled: bool = False
    """Replace degenerate groups. Off: every group is trained as it comes (those with no spread teach nothing and
    Dr. GRPO's constant denominator shrinks the step by their share)."""
    tol: float = Field(0.0, ge=0)
    """A group is degenerate when the max - min of its task reward, over the completions that would be trained
    (``mask_truncated_completions`` leaves the cut ones out), is at most this; judged before the overlong
    punishment (``rewards.overlong_buffer``). Our rewards are continuous: a small tol also drops near-ties."""
    max_rounds: int = Field(2, ge=0, le=3)
    """Top-up rounds a step may wait for when its groups are short (each asks for the missing groups at the current
    version, through the re-request path). Then the step trains on what it has (``dynamic/underfilled``)."""
    max_factor: float = Field(3.0, ge=1)
    """Groups one step may request at most, ahead and in top-ups together, as a multiple of ``prompts_per_step``
    (verl asks 3x per round)."""
    window: int = Field(8, ge=1)
    """Steps over which the degenerate share is measured; requests ahead are ``prompts_per_step / (1 - share)``,
    capped by ``max_factor``."""


class SftConfig(Section):
    enabled: bool = False
    """Run the SFT warm-up (Scenario B) before GRPO; GRPO then starts from its adapter."""
    tasks: list[Literal["extraction", "sql_qa", "insights", "push"]] = ["extraction"]
    """Tasks whose reference answers are the SFT targets."""
    epochs: float = Field(1.0, gt=0)
    """Passes over the SFT pairs."""
    learning_rate: float = Field(2e-4, gt=0)
    """SFT learning rate (LoRA)."""
    batch_size: int = Field(8, ge=1)
    """Sequences per SFT step."""
    max_steps: int | None = Field(None, ge=1)
    """Cap on SFT steps (None: the epochs decide)."""


class RunConfig(Section):
    """One training run: the handoff's hyperparameters plus the system's sections."""

    model_id: str
    """Hugging Face model id or local directory (nothing is downloaded at run time on CPU boxes)."""
    max_steps: int = Field(ge=1)
    """Optimizer steps."""
    learning_rate: float = Field(gt=0)
    """Peak learning rate (AdamW)."""
    lr_scheduler_type: str = "constant_with_warmup"
    """One of constant, constant_with_warmup, cosine, linear."""
    warmup_ratio: float = Field(0.05, ge=0, lt=1)
    """Share of max_steps spent warming up linearly."""
    num_generations: int = 16
    """Completions per prompt (G)."""
    max_completion_length: int = Field(512, ge=1)
    """Tokens generated per completion at most."""
    max_seq_length: int = Field(2048, ge=2)
    """Prompt plus completion tokens at most."""
    temperature: float = Field(1.0, gt=0)
    """Rollout sampling temperature."""
    beta: float = Field(0.0, ge=0)
    """KL coefficient; 0 loads no reference model (Dr. GRPO)."""
    scale_rewards: Literal["none", "group", "batch"] = "none"
    """Divide advantages by the group (or batch) reward std; ``none`` is Dr. GRPO. YAML ``false``
    means ``none`` and ``true`` means ``group`` (TRL's old boolean)."""
    loss_type: Literal["dr_grpo", "grpo", "dapo"] = "dr_grpo"
    """Token aggregation: dr_grpo divides the token sum by completions x max_completion_length."""
    epsilon: float = Field(0.2, gt=0, lt=1)
    """PPO clip range of the importance ratio (the lower bound ``1 - epsilon``; TRL's name)."""
    epsilon_high: float | None = Field(None, gt=0)
    """Upper clip bound ``1 + epsilon_high`` (TRL's name: clip-higher; None is ``epsilon``). DAPO uses 0.28."""
    delta: float | None = Field(None, gt=1)
    """TRL's two-sided clip: the unclipped branch's ratio is capped at ``delta`` (no gradient past it), on fresh and
    stale rows alike, in place of ``learner.tis_cap``'s truncation. Must exceed ``1 + epsilon_high`` (TRL recommends
    it; here it is refused otherwise). INTELLECT-2 used 4. None: off."""
    importance_sampling_level: Literal["token", "sequence"] = "token"
    """TRL's name. ``token``: one ratio per token. ``sequence``: GSPO, one ratio per completion, ``exp`` of its mean
    log-ratio, clipped with ``epsilon``/``epsilon_high`` (GSPO used 3e-4 / 4e-4 with ``loss_type: grpo``). Our ratio
    is taken against the engine's logprobs, so it carries the engines' numeric gap even on fresh rows:
    ``sampling/fresh/seq_ratio/*`` measures it every step, and the README says what clip range it leaves room
    for."""
    mask_truncated_completions: bool = False
    """TRL's name: a completion cut at ``max_completion_length`` (the engine's finish reason ``length``) is not
    trained (advantage 0: not forwarded, out of ``dapo``'s token count); its group's advantages are still computed
    over all G, as TRL does. No extra forward."""
    prompts_per_step: int = Field(2, ge=1)
    """Prompts per optimizer step (the handoff's BATCH_SIZE)."""
    grad_accum: int = Field(1, ge=1)
    """Batches of prompts_per_step accumulated per optimizer step."""
    lora_r: int = 16
    """LoRA rank (all linear layers)."""
    lora_alpha: int = Field(32, gt=0)
    """LoRA alpha; the delta is scaled by lora_alpha / lora_r."""
    seed: int = 42
    """Seeds sampling of prompts, rollouts and initialisation."""
    run_dir: Path | None = None
    """Where metrics, checkpoints and the final adapter go (default ``runs/<config file stem>``)."""
    init_adapter: Path | None = None
    """PEFT adapter to start from (an SFT warm-up's output); None starts a fresh LoRA."""

    data: DataConfig = DataConfig()
    """Data files."""
    rewards: RewardsConfig = RewardsConfig()
    """Reward shaping weights and the SQL sandbox limits."""
    actor: ActorConfig = ActorConfig()
    """Rollout servers (vLLM)."""
    learner: LearnerConfig = LearnerConfig()
    """DeepSpeed learner."""
    sync: SyncConfig = SyncConfig()
    """ZeroMQ channels between learner and actors."""
    eval: EvalConfig = EvalConfig()
    """Periodic eval through the actors."""
    logging: LoggingConfig = LoggingConfig()
    """metrics.jsonl is always written; this section drives wandb."""
    watchdog: list[WatchRule] = Field(default_factory=_handoff_rules)
    """Rules from the handoff's "Stop if" column; each warns or stops."""
    sft: SftConfig = SftConfig()
    """Scenario B's supervised warm-up."""
    dynamic_sampling: DynamicSamplingConfig = DynamicSamplingConfig()
    """Replace groups whose rewards have no spread (off by default)."""
    tools: dict[str, list[ToolSpec]] = {}
    """Tools in the rollout, per task (``configs.tools``): ``{sql_qa: [sql], faq: ["pkg.mod:fn", ...]}``. A listed
    task's completions are episodes of up to ``episode.max_turns`` turns; none listed: every task is single-turn."""
    episode: EpisodeConfig = EpisodeConfig()
    """Budgets of the tool-enabled episodes."""

    @field_validator("scale_rewards", mode="before")
    @classmethod
    def _bool_scale(cls, v):
        if v is True:
            return "group"
        if v is False:
            return "none"
        return v

    @field_validator("lr_scheduler_type")
    @classmethod
    def _scheduler(cls, v: str) -> str:
        if v not in SCHEDULERS:
            raise ValueError(f"unknown scheduler {v!r}; known: {', '.join(SCHEDULERS)}")
        return v

    @field_validator("num_generations")
    @classmethod
    def _g(cls, v: int) -> int:
        if v < 2:
            raise ValueError("must be >= 2 (advantages are relative to the group)")
        return v

    @field_validator("lora_r")
    @classmethod
    def _rank(cls, v: int) -> int:
        if v <= 0 or v not in VLLM_LORA_RANKS:
            raise ValueError(f"must be one of the ranks vLLM serves: {VLLM_LORA_RANKS}")
        return v

    @model_validator(mode="after")
    def _cross(self) -> RunConfig:
        custom = list(self.rewards.custom)
        if custom and "tasks" not in self.data.model_fields_set:
            self.data.tasks = list(dict.fromkeys([*self.data.tasks, *custom]))
        unknown = [t for t in self.data.tasks if t not in TASKS and t not in custom]
        if unknown:
            raise ValueError(f"data.tasks: unknown task {unknown[0]!r} (one of {', '.join(TASKS)}, or a task of "
                             "your own with its reward in rewards.custom)")
        for task, specs in self.tools.items():
            if task not in self.data.tasks:
                raise ValueError(f"tools.{task}: not a task of the run (data.tasks: {', '.join(self.data.tasks)})")
            names = [s.name for s in specs]
            if len(set(names)) != len(names) or "observation" in names:
                raise ValueError(f"tools.{task}: tool names must be distinct and not 'observation': {names}")
        if self.rewards.overlong_buffer is not None and self.rewards.overlong_buffer > self.max_completion_length:
            raise ValueError(f"rewards.overlong_buffer ({self.rewards.overlong_buffer}) exceeds max_completion_length "
                             f"({self.max_completion_length})")
        if self.max_completion_length >= self.max_seq_length:
            raise ValueError(f"max_completion_length ({self.max_completion_length}) must be < "
                             f"max_seq_length ({self.max_seq_length})")
        if self.delta is not None and self.delta <= 1 + (self.epsilon_high or self.epsilon):
            high = 1 + (self.epsilon_high or self.epsilon)
            raise ValueError(f"delta ({self.delta}) must exceed 1 + epsilon_high ({high}): below it the cap cuts "
                             "ratios the PPO clip lets through")
        if self.learner.publish_every - 1 > self.sync.max_staleness:
            raise ValueError(f"learner.publish_every ({self.learner.publish_every}) - 1 exceeds sync.max_staleness "
                             f"({self.sync.max_staleness}): rollouts of the version before a publication would be "
                             "too stale to train on")
        a = self.actor
        if (a.serve_mode != "merged" and a.load_mode == "inflight" and a.max_lora_versions is not None
                and a.max_lora_versions < self.sync.max_staleness + 1):
            raise ValueError(f"actor.max_lora_versions ({a.max_lora_versions}) must be >= sync.max_staleness + 1 "
                             f"({self.sync.max_staleness + 1}) with actor.load_mode inflight: requests of that many "
                             "versions run at once, and vLLM holds back any beyond it (a drain in disguise)")
        return self

    @property
    def lora_slots(self) -> int:
        """Adapter versions live in one engine batch in ``adapter`` mode (vLLM's ``max_loras``): the actor holds
        the newest version plus those its running requests were admitted under. In flight, the learner's staleness
        bound keeps a running training request within ``sync.max_staleness`` versions of the newest (a request for
        step t is trained at version t and admitted at t - max_staleness or later), so ``max_staleness + 1``;
        drained, one. A request outside the bound (a re-sent one whose first copy still runs) only waits for a slot.
        ``actor.max_lora_versions`` overrides it."""
        if self.actor.max_lora_versions is not None:
            return self.actor.max_lora_versions
        return self.sync.max_staleness + 1 if self.actor.load_mode == "inflight" else 1

    @property
    def batched_tokens(self) -> int:
        """vLLM's ``max_num_batched_tokens`` for an actor's engine, on GPU and CPU, and what ``launch.memory`` budgets:
        ``actor.max_num_batched_tokens``, at least one whole sequence (``max_seq_length``)."""
        return max(self.max_seq_length, self.actor.max_num_batched_tokens)

    @property
    def completions_per_step(self) -> int:
        return self.prompts_per_step * self.grad_accum * self.num_generations
