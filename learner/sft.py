"""``python -m learner.sft --config FILE [--set k=v ...]``: Scenario B's supervised warm-up.

One epoch (``cfg.sft.epochs``, capped by ``cfg.sft.max_steps``) over the train pairs of
``cfg.sft.tasks``, with their ``answer`` column as the assistant turn, the loss on the assistant
turn's tokens only (prompt and system tokens are masked with -100, like TRL's
``assistant_only_loss``). LoRA as in the GRPO run (``lora_r``, ``lora_alpha``, all linear layers),
AdamW at ``cfg.sft.learning_rate`` with 3% linear warmup then constant, gradient clipping at
``learner.max_grad_norm``. The adapter lands at ``RUN_DIR/sft/adapter`` — where the GRPO run looks
when ``sft.enabled`` is true.

``--balance`` (used by the demo) draws every batch with the tasks in turn instead of in proportion to
their pair counts: with the four tasks the 148 push and insights pairs otherwise get a tenth of the steps
each and a small model leaves the warm-up writing their format badly. The number of steps is the same.

A plain torch loop on one device rather than TRL's SFTTrainer: the set is ~590 short pairs, one GPU
does it in minutes, and the loop keeps the assistant-only masking explicit (SFTTrainer's
``assistant_only_loss`` needs ``{% generation %}`` markers that the Tucano2 chat template lacks).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path


def encode_pair(tokenizer, messages: list[dict], answer: str, max_len: int) -> tuple[list[int], list[int]]:
    """Token ids of prompt + assistant answer, and labels with everything but the answer turn masked."""
    prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    full = tokenizer.apply_chat_template(
        messages + [{"role": "assistant", "content": answer}], tokenize=False
    )
    if not full.startswith(prompt):
        raise ValueError("the chat template does not render the prompt as a prefix of the conversation")
    p_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    a_ids = tokenizer(full[len(prompt) :], add_special_tokens=False)["input_ids"]
    ids = (p_ids + a_ids)[:max_len]
    labels = ([-100] * len(p_ids) + a_ids)[:max_len]
    return ids, labels


class BatchOrder:
    """Indices of the SFT pairs, ``bs`` at a time: a reshuffled pass over all pairs (``balance`` false), or
    the tasks in turn, each task drawing from its own reshuffled pass (``balance`` true)."""

    def __init__(self, tasks: list[str], seed: int, balance: bool = False):
        import torch

        self.gen = torch.Generator().manual_seed(seed)
        self.groups = ({t: [i for i, x in enumerate(tasks) if x == t] for t in dict.fromkeys(tasks)} if balance
                       else {"all": list(range(len(tasks)))})
        self.queues: dict[str, list[int]] = {k: [] for k in self.groups}
        self.turn = 0

    def _next(self, key: str) -> int:
        import torch

        if not self.queues[key]:
            g = self.groups[key]
            self.queues[key] = [g[i] for i in torch.randperm(len(g), generator=self.gen).tolist()]
        return self.queues[key].pop(0)

    def take(self, bs: int) -> list[int]:
        keys = list(self.groups)
        out = []
        for _ in range(bs):
            out.append(self._next(keys[self.turn % len(keys)]))
            self.turn += 1
        return out


def run_sft(cfg, out_dir: Path | None = None, log=print, balance: bool = False) -> Path:
    import torch

    from learner.data import load_items
    from learner.engine import build_peft_model, load_tokenizer, pick_device_dtype

    run_dir = Path(cfg.run_dir or "runs/run")
    out_dir = Path(out_dir or run_dir / "sft" / "adapter")
    device, dtype = pick_device_dtype(cfg.learner.precision)
    tok = load_tokenizer(cfg.model_id)
    items = [it for it in load_items(cfg.data.train_pairs, list(cfg.sft.tasks)) if it.columns.get("answer")]
    if not items:
        raise ValueError(f"no pairs with an answer for tasks {cfg.sft.tasks} in {cfg.data.train_pairs}")
    data = [encode_pair(tok, it.messages, it.columns["answer"], cfg.max_seq_length) for it in items]
    model = build_peft_model(
        cfg.model_id,
        lora_r=cfg.lora_r,
        lora_alpha=cfg.lora_alpha,
        dtype=dtype,
        seed=cfg.seed,
        gradient_checkpointing=cfg.learner.gradient_checkpointing,
    ).to(device)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.sft.learning_rate, weight_decay=0.0)
    bs = cfg.sft.batch_size
    steps_per_epoch = math.ceil(len(data) / bs)
    total = math.ceil(steps_per_epoch * cfg.sft.epochs)
    if cfg.sft.max_steps:
        total = min(total, cfg.sft.max_steps)
    warm = max(1, math.ceil(0.03 * total))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warm))
    order = BatchOrder([it.task for it in items], cfg.seed, balance)
    metrics_path = out_dir.parent / "metrics.jsonl"
    metrics_path.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    losses = []
    with metrics_path.open("w") as mf:
        for step in range(total):
            batch = [data[i] for i in order.take(bs)]
            width = max(len(ids) for ids, _ in batch)
            ids = torch.full((len(batch), width), tok.pad_token_id, dtype=torch.long)
            labels = torch.full((len(batch), width), -100, dtype=torch.long)
            att = torch.zeros((len(batch), width), dtype=torch.long)
            for i, (x, y) in enumerate(batch):
                ids[i, : len(x)], labels[i, : len(y)], att[i, : len(x)] = torch.tensor(x), torch.tensor(y), 1
            out = model(input_ids=ids.to(device), attention_mask=att.to(device), labels=labels.to(device))
            out.loss.backward()
            gn = torch.nn.utils.clip_grad_norm_(params, cfg.learner.max_grad_norm)
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            losses.append(float(out.loss.detach()))
            mf.write(
                json.dumps(
                    {
                        "step": step + 1,
                        "sft/loss": losses[-1],
                        "sft/grad_norm": float(gn),
                        "sft/learning_rate": sched.get_last_lr()[0],
                    }
                )
                + "\n"
            )
            if (step + 1) % 10 == 0 or step + 1 == total:
                log(f"sft: step {step + 1}/{total} loss {losses[-1]:.4f} ({time.perf_counter() - t0:.0f} s)")
    tmp = out_dir.parent / f".tmp-{out_dir.name}"
    model.save_pretrained(str(tmp))
    if out_dir.exists():
        import shutil

        shutil.rmtree(out_dir)
    tmp.rename(out_dir)
    log(
        f"sft: {len(data)} pairs, {total} steps, loss {losses[0]:.4f} -> {losses[-1]:.4f}; "
        f"adapter at {out_dir}"
    )
    return out_dir


def main(argv: list[str] | None = None) -> int:
    from configs import ConfigError, load_config, private_run_dir
    from configs.__main__ import add_config_args

    p = argparse.ArgumentParser(prog="python -m learner.sft", description=__doc__.split("\n\n")[0])
    add_config_args(p)
    p.add_argument("--out", type=Path, default=None, help="adapter directory (default RUN_DIR/sft/adapter)")
    p.add_argument("--balance", action="store_true", help="draw the tasks in turn instead of by pair counts")
    args = p.parse_args(argv)
    try:
        cfg = load_config(args.config, args.overrides)
    except ConfigError as e:
        print(f"learner.sft: invalid config: {e}", file=sys.stderr)
        return 2
    from learner.__main__ import model_problem

    problem = model_problem(cfg.model_id)
    if problem is None:
        from commerce.sources import problem as source_problem

        why = source_problem(cfg.data.train_pairs)
        problem = (f"training pairs not found: {cfg.data.train_pairs}" if why[0] else f"training pairs: {why[1]}"
                   ) if why else None
    if problem:
        print(f"learner.sft: {problem}", file=sys.stderr)
        return 2
    private_run_dir(cfg.run_dir or "runs/run")
    try:
        run_sft(cfg, args.out, balance=args.balance)
    except ValueError as e:
        print(f"learner.sft: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
