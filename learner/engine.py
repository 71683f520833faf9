"""DeepSpeed + PEFT setup: the policy (base model + LoRA on every linear layer) and its optimizer step.

* PEFT LoRA with ``r=lora_r``, ``lora_alpha``, ``target_modules="all-linear"`` (every linear layer but the
  LM head, as TRL's ``target_modules="all-linear"``), no dropout; or the adapter at ``init_adapter``.
* DeepSpeed ZeRO (``learner.zero_stage``, 2 by default) around a torch AdamW (betas 0.9/0.999, eps 1e-8,
  no weight decay: transformers' defaults), gradient clipping at ``learner.max_grad_norm``, the LR
  scheduler of :mod:`learner.schedule` stepped by DeepSpeed after every optimizer step.
* bf16 on GPU, float32 on CPU (``learner.precision: auto``). On CPU DeepSpeed runs with its ``cpu``
  accelerator and ``gloo``, on GPUs with NCCL; how ranks meet and where collectives run: :mod:`learner.comm`.
* bf16 weights, fp32 sums (:func:`deepspeed_config`): DeepSpeed takes the gradient accumulation and communication
  dtypes from the model's (``runtime/engine.py`` ``get_data_types``, ``communication_data_type``), so bf16 alone
  would add micro-batch gradients and all-reduce them across ranks in bf16 (8 bits of mantissa). We set
  ``data_types.grad_accum_dtype`` and ``communication_data_type`` to fp32. DeepSpeed then wraps the optimizer in
  ``BF16_Optimizer`` at stage 1 (fp32 gradient buffers), ``DeepSpeedZeroOptimizer`` with fp32 gradient partitions
  at 2, ``DeepSpeedZeroOptimizer_Stage3`` with fp32 partitions at 3; at stage 0 it has no such wrapper (it raises
  ``unsupported mix``), so ``learner.zero_stage: 0`` in bf16 runs DeepSpeed's stage 1 (``BF16_Optimizer``: the same
  step, the fp32 master weights and Adam state split over the ranks, nothing for LoRA to notice).
  ``tests/integration/test_learner_precision.py`` reads this back from the engines.
* One optimizer step may run several micro-batches: DeepSpeed's accumulation boundary is set by hand
  (``set_gradient_accumulation_boundary``) and losses are not rescaled by it (``scale_wrt_gas=False``)
  because :func:`learner.loss.policy_loss` already divides by the step's constant.
* A non-finite loss or gradient never reaches the optimizer: every micro-batch's loss is checked, and a
  hook on every trainable parameter flags a non-finite local gradient during backward (before ZeRO reduces
  it). The flags are all-reduced, and a flagged step is skipped on every rank: ZeRO stages 1-3 and bf16
  skip it themselves (DeepSpeed's overflow path: no update, optimizer state and LR schedule untouched;
  ``bf16.check_grad_overflow`` on), which :meth:`PolicyEngine.step` verifies; fp32 without ZeRO would apply
  it, so there the gradients are dropped and the optimizer is not called.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch


def extensions_dir() -> Path:
    """Where DeepSpeed's JIT-built ops go: inside this virtualenv (``TORCH_EXTENSIONS_DIR`` wins). The default,
    ``~/.cache/torch_extensions``, is shared by every venv of the user: each rebuilds it for its own source
    path, and a build killed half-way leaves a lock that makes every later learner wait forever."""
    import sys

    os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(Path(sys.prefix) / "torch_extensions"))
    return Path(os.environ["TORCH_EXTENSIONS_DIR"])


def build_ops() -> None:
    """Build DeepSpeed's CPU communication op now (``make setup`` does), not inside the first learner."""
    extensions_dir()
    from deepspeed.accelerator import get_accelerator

    builder = get_accelerator().create_op_builder("ShareMemCommBuilder")
    if builder is not None:
        builder.load()


def init_distributed(cpu: bool, store_dir: str | os.PathLike, timeout_s: float = 1800.0) -> tuple[int, int]:
    """Initialise torch.distributed through :func:`learner.comm.init` once per process; return (rank, world)."""
    extensions_dir()
    from learner import comm

    return comm.init(cpu, Path(store_dir), timeout_s)


def select_device_dtype(precision: str, cuda: bool, env=None) -> tuple[torch.device, torch.dtype]:
    """The learner's device and dtype: this rank's GPU (:func:`learner.comm.cuda_index`) in bf16 unless ``fp32``,
    or the CPU in float32 unless ``bf16``."""
    from learner.comm import cuda_index

    if cuda:
        return torch.device("cuda", cuda_index(env)), (torch.float32 if precision == "fp32" else torch.bfloat16)
    return torch.device("cpu"), (torch.bfloat16 if precision == "bf16" else torch.float32)


def pick_device_dtype(precision: str) -> tuple[torch.device, torch.dtype]:
    dev, dtype = select_device_dtype(precision, torch.cuda.is_available())
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    return dev, dtype


def deepspeed_args(device: torch.device):
    """``deepspeed.initialize``'s ``args``: on a GPU the device to use (``device_rank``), or DeepSpeed takes
    ``LOCAL_RANK`` for it, which is wrong when Slurm binds one GPU per task; None on the CPU."""
    from types import SimpleNamespace

    return SimpleNamespace(device_rank=device.index) if device.type == "cuda" else None


def load_tokenizer(model_id: str):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_id)
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok


def build_peft_model(
    model_id: str | None,
    *,
    lora_r: int,
    lora_alpha: int,
    dtype: torch.dtype,
    init_adapter: str | os.PathLike | None = None,
    seed: int = 0,
    gradient_checkpointing: bool = False,
    base=None,
    grouped_attention: bool = False,
):
    """Base model (loaded from ``model_id``, or ``base`` as given) + LoRA (fresh, seeded; or loaded
    trainable from ``init_adapter``). ``grouped_attention``: the base runs :data:`learner.attention.GROUPED`
    (prompt-shared rows split per completion; every other forward is SDPA as before)."""
    from peft import LoraConfig, PeftModel, get_peft_model
    from transformers import AutoModelForCausalLM

    if base is None:
        base = AutoModelForCausalLM.from_pretrained(model_id, dtype=dtype)
    if grouped_attention:
        from learner.attention import register

        base.set_attn_implementation(register())
    base.config.use_cache = False
    if gradient_checkpointing:
        base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    # the CPU generator only: PEFT initialises LoRA on the CPU and then moves it to the base layer's device;
    # torch.manual_seed would also reseed every GPU's generator, the learner's and the local stand-in's alike
    torch.random.default_generator.manual_seed(seed)
    if init_adapter is not None:
        model = PeftModel.from_pretrained(base, str(init_adapter), is_trainable=True)
    else:
        cfg = LoraConfig(
            r=lora_r,
            lora_alpha=lora_alpha,
            target_modules="all-linear",
            lora_dropout=0.0,
            bias="none",
            task_type="CAUSAL_LM",
        )
        model = get_peft_model(base, cfg)
    return model


def lora_state_dict(peft_model) -> dict[str, torch.Tensor]:
    """The adapter's tensors under PEFT's saved names (``base_model.model....lora_A.weight``), on CPU."""
    from peft import get_peft_model_state_dict

    return {k: v.detach().to("cpu").contiguous() for k, v in get_peft_model_state_dict(peft_model).items()}


def adapter_config_dict(peft_model) -> dict:
    cfg = peft_model.peft_config["default"].to_dict()
    return json.loads(json.dumps(cfg, default=lambda o: sorted(o) if isinstance(o, set) else str(o)))


def deepspeed_stage(zero_stage: int, bf16: bool) -> int:
    """The ZeRO stage DeepSpeed runs: ``learner.zero_stage``, except 0 in bf16, which runs 1 (module docstring)."""
    return 1 if bf16 and zero_stage == 0 else zero_stage


def deepspeed_config(cfg, micro_batch: int, bf16: bool) -> dict:
    stage = deepspeed_stage(cfg.learner.zero_stage, bf16)
    zero = {"stage": stage}
    if stage in (1, 2):
        zero.update(
            overlap_comm=False, contiguous_gradients=True, reduce_bucket_size=5e7, allgather_bucket_size=5e7
        )
    out = {
        "train_micro_batch_size_per_gpu": micro_batch,
        "gradient_accumulation_steps": 1,
        "gradient_clipping": cfg.learner.max_grad_norm,
        "zero_optimization": zero,
        "bf16": {"enabled": bf16, "check_grad_overflow": True},
        "fp16": {"enabled": False},
        "zero_allow_untested_optimizer": True,
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }
    if bf16:  # gradients summed over micro-batches and ranks in fp32, not in the weights' bf16
        out["data_types"] = {"grad_accum_dtype": "fp32"}
        out["communication_data_type"] = "fp32"
    return out


@dataclass
class StepResult:
    grad_norm: float
    """Global gradient norm before clipping (NaN for a skipped step)."""
    skipped: str | None = None
    """Why the step was skipped (``non-finite loss`` / ``non-finite gradient``), None when it was applied."""


class PolicyEngine:
    """The trainable policy behind DeepSpeed. ``module`` is the PEFT model, ``engine`` the DS engine."""

    def __init__(self, cfg, *, init_adapter=None, base_model=None):
        t0 = time.perf_counter()
        import deepspeed

        from learner.schedule import make_scheduler

        self.startup: dict[str, float] = {"deepspeed import": time.perf_counter() - t0}
        """Seconds of each start-up phase (``learner/__main__`` prints them)."""
        t0 = time.perf_counter()
        self.cfg = cfg
        self.device, self.dtype = pick_device_dtype(cfg.learner.precision)
        self.cpu = self.device.type == "cpu"
        from learner.comm import group_timeout_s

        self.rank, self.world = init_distributed(self.cpu, Path(cfg.run_dir) / ".dist", group_timeout_s(cfg))
        self.startup["process group"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        self.tokenizer = load_tokenizer(cfg.model_id) if base_model is None else None
        adapter = init_adapter if init_adapter is not None else cfg.init_adapter
        if base_model is not None:
            base_model = base_model.to(device=self.device, dtype=self.dtype)
        self.module = build_peft_model(
            cfg.model_id,
            lora_r=cfg.lora_r,
            lora_alpha=cfg.lora_alpha,
            dtype=self.dtype,
            init_adapter=adapter,
            seed=cfg.seed,
            gradient_checkpointing=cfg.learner.gradient_checkpointing,
            base=base_model,
            grouped_attention=cfg.learner.share_prompt,
        )
        self.vocab_size = self.module.get_input_embeddings().weight.shape[0]
        self.startup["model"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        params = [p for p in self.module.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=cfg.learning_rate, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)
        sched = make_scheduler(opt, cfg.lr_scheduler_type, cfg.warmup_ratio, cfg.max_steps)
        self.engine, self.optimizer, _, self.scheduler = deepspeed.initialize(
            args=deepspeed_args(self.device),
            model=self.module,
            optimizer=opt,
            lr_scheduler=sched,
            config=deepspeed_config(cfg, cfg.learner.micro_batch_size, self.dtype == torch.bfloat16),
        )
        self.engine.train()
        self.startup["deepspeed init"] = time.perf_counter() - t0
        self._grad_bad = torch.zeros((), dtype=torch.bool, device=self.device)
        self._loss_bad = False
        for p in params:
            p.register_hook(self._check_grad)

    def _check_grad(self, grad: torch.Tensor) -> None:
        self._grad_bad |= ~torch.isfinite(grad).all()  # stays on the device: no sync per parameter

    # -- forward -----------------------------------------------------------------------------------
    def completion_logps(self, batch, temperature: float, grad: bool = True) -> torch.Tensor:
        """Logprobs of the completion tokens of a :class:`learner.rollouts.Collated` or
        :class:`learner.rollouts.Packed` batch."""
        from learner.loss import model_completion_logps, packed_completion_logps
        from learner.rollouts import Packed

        ctx = torch.enable_grad() if grad else torch.no_grad()
        with ctx:
            if isinstance(batch, Packed):
                return packed_completion_logps(self.engine, batch, temperature, dtype=self.dtype)
            return model_completion_logps(
                self.engine,
                batch.input_ids,
                batch.attention_mask,
                batch.prompt_len,
                temperature,
                position_ids=batch.position_ids,
            )

    def backward(self, loss: torch.Tensor, boundary: bool) -> None:
        if not math.isfinite(float(loss.detach())):
            self._loss_bad = True
        self.engine.set_gradient_accumulation_boundary(boundary)
        self.engine.backward(loss, scale_wrt_gas=False)

    def step(self) -> StepResult:
        """Optimizer step (DeepSpeed clips, steps the optimizer and the scheduler), or a skipped one when any
        rank saw a non-finite loss or gradient since the last step (collective)."""
        from learner import comm

        flags = comm.all_reduce(torch.tensor([float(self._loss_bad), float(self._grad_bad)]), op="max")
        self._loss_bad = False
        self._grad_bad.zero_()
        loss_bad, grad_bad = bool(flags[0]), bool(flags[1])
        if not (loss_bad or grad_bad):
            self.engine.step()
            gn = self.engine.get_global_grad_norm()
            return StepResult(float(gn) if gn is not None else float("nan"))
        reason = "non-finite loss" if loss_bad else "non-finite gradient"
        if self.cfg.learner.zero_stage == 0 and self.dtype != torch.bfloat16:
            self.engine.zero_grad()  # plain fp32 DeepSpeed would apply it: drop the gradients, do not step
        else:
            self.engine.step()  # DeepSpeed's overflow path skips it (verified)
            if getattr(self.engine, "_step_applied", False):
                raise RuntimeError(f"DeepSpeed applied an optimizer step with a {reason}")
        return StepResult(float("nan"), reason)

    @property
    def learning_rate(self) -> float:
        return float(self.engine.get_lr()[0])

    # -- adapter -----------------------------------------------------------------------------------
    def lora_tensors(self) -> dict[str, torch.Tensor]:
        """Full adapter tensors on every rank (gathered under ZeRO-3)."""
        if self.cfg.learner.zero_stage == 3:
            import deepspeed

            params = [p for p in self.module.parameters() if p.requires_grad]
            with deepspeed.zero.GatheredParameters(params, modifier_rank=None):
                return lora_state_dict(self.module)
        return lora_state_dict(self.module)

    def adapter_config(self) -> dict:
        return adapter_config_dict(self.module)

    def save_adapter(self, out: str | os.PathLike) -> None:
        """PEFT format (adapter_config.json + adapter_model.safetensors); rank 0 writes."""
        tensors = self.lora_tensors()
        if self.rank != 0:
            return
        from safetensors.torch import save_file

        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        save_file(
            {k: v.to(torch.float32) if self.cpu else v for k, v in tensors.items()},
            str(out / "adapter_model.safetensors"),
            metadata={"format": "pt"},
        )
        self.module.peft_config["default"].save_pretrained(str(out))


def nonfinite_tensors(tensors: dict[str, torch.Tensor]) -> list[str]:
    """Names of the tensors holding a NaN or an infinity."""
    return [n for n, t in tensors.items() if not bool(torch.isfinite(t).all())]
