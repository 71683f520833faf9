"""Pre-train a zoo model on the synthetic commerce text: the stand-in for Tucano2's own pre-training.

The real Tucano2 models reach GRPO already fluent in Portuguese. A random-weight tiny model is not, and
a LoRA adapter on random weights has too little capacity to learn the tasks' formats in a demo's
minutes. So the demo first trains *all* weights of the tiny model, as a causal LM on packed raw text
(reviews, questions, SQL, JSON records, bullets and pushes from ``commerce.corpus_texts``, with no chat
turns), then runs the SFT warm-up (LoRA, chat format) and GRPO on top like the real recipe.

``python -m zoo pretrain --model models/tiny --db data/commerce.db --out models/tiny-pt [--steps N]``
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path


def packed_blocks(tokenizer, texts, block: int) -> list[list[int]]:
    """Concatenate texts (each closed by the eos token) and cut into blocks of ``block`` tokens."""
    eos = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    stream: list[int] = []
    for t in texts:
        stream += tokenizer(t, add_special_tokens=False)["input_ids"] + [eos]
    return [stream[i:i + block] for i in range(0, len(stream) - block + 1, block)]


def pretrain(model_dir: str | Path, out: str | Path, db_path=None, steps: int = 300, batch: int = 16,
             block: int = 256, lr: float = 3e-3, seed: int = 0, log=print) -> Path:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from zoo.build import atomic_dir, corpus

    torch.manual_seed(seed)
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    blocks = torch.tensor(packed_blocks(tok, corpus(db_path), block))
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01, betas=(0.9, 0.95))
    warm = max(1, steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warm) * 0.5 * (1 + math.cos(math.pi * min(1.0, s / steps))))
    model.train()
    t0, first = time.perf_counter(), None
    for step in range(1, steps + 1):
        idx = torch.randint(len(blocks), (batch,), generator=gen)
        x = blocks[idx]
        loss = model(input_ids=x, labels=x).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        first = first if first is not None else loss.item()
        if step % 50 == 0 or step == steps:
            log(f"pretrain: step {step}/{steps} loss {loss.item():.3f} ({time.perf_counter() - t0:.0f} s)")
    out = Path(out)
    with atomic_dir(out) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
        meta = json.loads((Path(model_dir) / "zoo.json").read_text()) if (Path(model_dir) / "zoo.json").exists() else {}
        meta.update(pretrain={"steps": steps, "batch": batch, "block": block, "lr": lr, "seed": seed,
                              "blocks": len(blocks), "loss_first": first, "loss_last": loss.item()})
        (tmp / "zoo.json").write_text(json.dumps(meta))
    log(f"pretrain: {len(blocks)} blocks of {block} tokens, loss {first:.3f} -> {loss.item():.3f}; model at {out}")
    return out
