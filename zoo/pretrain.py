"""Pre-train a zoo model on the synthetic commerce text: the stand-in for Tucano2's own pre-training.

The real Tucano2 models reach GRPO already fluent in Portuguese. A random-weight tiny model is not, and
a LoRA adapter on random weights has too little capacity to learn the tasks' formats in a demo's
minutes. So the demo first trains *all* weights of the tiny model, as a causal LM on packed raw text
(reviews, questions, SQL, JSON records, bullets and pushes from ``commerce.corpus_texts``, with no chat
turns), then runs the SFT warm-up (LoRA, chat format) and GRPO on top like the real recipe.

What the model reads (:func:`pretrain_texts`), all plain text with no chat turns, each text closed by the
tokenizer's eos token:

- ``commerce.corpus_texts`` (system prompts, the schema text, every review) minus every text of the held-out
  eval pairs (user prompts, reference answers and records; ``DB_DIR/pairs/eval.jsonl`` by default), so the
  eval measures prompts the model never read;
- task documents: a prompt followed by its reference answer as one text. The train pairs
  (``DB_DIR/pairs/train.jsonl``), then more documents of the four tasks drawn from the same database with
  other seeds (``commerce.pairs.make_items``), up to :data:`DOC_CAPS` per task, none with an eval prompt and
  none twice. Why: a pre-trained model carries names, numbers and places from a text into what follows it,
  and that is the skill the tasks need (the product in a push, the state in a query, the figures in an
  insight). Read apart from their prompts, the answers taught the templates only; read joined but twice
  each, they were memorised, fills included (a probe on held-out prompts: 0 of 20 pushes named their
  product, 0 of 20 queries used the asked literals). Fresh documents leave copying as the only way to
  predict a fill;
- the sql_qa schema text (``ENRICHED_DOC``, the same ~370 tokens in front of every sql_qa question) kept in
  front of one question in 20 and cut from the rest: read 600 times it took 40% of the tokens and taught
  nothing after the first few.

Blocks are drawn in epochs (a fresh permutation each), so every block is read once before any twice.

``python -m zoo pretrain --model models/small --db data/commerce.db --out models/small-pt [--steps N]``
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path


SCHEMA_EVERY = 20  # keep the sql_qa schema text in front of one question in this many
# task documents at most (train pairs first, then other seeds' pairs); about 630k tokens with the 2,048 tokenizer
DOC_CAPS = {"extraction": 800, "sql_qa": 1200, "insights": 400, "push": 1000}
EXTRA_SEEDS = range(1001, 1021)


def _rows(path: str | Path | None) -> list:
    """The accepted rows of a pair file (``commerce.rows.read_pairs``; [] when there is none)."""
    if path is None or not Path(path).is_file():
        return []
    from commerce.rows import read_pairs as read_pair_file

    return read_pair_file(path).rows


def _user(row) -> str:
    return str(row.messages[-1].get("content", "")) if row.messages else ""


def read_pairs(path: str | Path | None) -> list[tuple[str, str]]:
    """(user prompt, answer) of every row of a pair file ([] when there is none)."""
    return [(_user(r), r.answer or "") for r in _rows(path)]


def pair_strings(path: str | Path | None) -> set[str]:
    """Every user prompt, answer and reference record of a pair file (as ``corpus_texts`` yields them)."""
    return {x for r in _rows(path) for x in (_user(r), r.answer, r.columns.get("reference"))
            if isinstance(x, str) and x}


def task_documents(db_path, train_pairs, held_out_prompts: set[str], caps: dict[str, int] | None = None,
                   log=None, tool_share: float = 0.0, seed: int = 0) -> list[str]:
    """Prompt + answer documents: the train pairs, then other seeds' pairs from ``db_path`` (up to ``caps``);
    ``tool_share`` of the sql_qa ones written as tool episodes (``zoo.tool_docs``)."""
    import random
    import sqlite3

    caps = dict(DOC_CAPS if caps is None else caps)
    docs: list[str] = []
    seen: set[str] = set(held_out_prompts)
    count = dict.fromkeys(caps, 0)
    rng = random.Random(seed)
    sandbox = None
    if tool_share > 0 and db_path is not None and Path(db_path).is_file():
        from commerce.sandbox import Sandbox

        sandbox = Sandbox(db_path)

    def add(task: str, user: str, answer: str) -> None:
        if user in seen or count.get(task, 0) >= caps.get(task, 0):
            return
        seen.add(user)
        count[task] += 1
        if sandbox is not None and task == "sql_qa" and rng.random() < tool_share:
            from zoo.tool_docs import episode_answer

            answer = episode_answer(answer, sandbox, rng) or answer
            count["sql_qa episodes"] = count.get("sql_qa episodes", 0) + 1
        docs.append(user + "\n\n" + answer)

    for r in _rows(train_pairs):
        add(r.task, _user(r), r.answer or "")
    if db_path is not None and Path(db_path).is_file():
        try:
            from commerce.pairs import DEFAULT_COUNTS, make_items
        except ImportError:
            make_items = None
        if make_items is not None:
            con = sqlite3.connect(f"{Path(db_path).resolve().as_uri()}?mode=ro", uri=True)
            try:
                for seed in EXTRA_SEEDS:
                    short = tuple(t for t in caps if count[t] < caps[t])
                    if not short:
                        break
                    for task, items in make_items(con, seed, DEFAULT_COUNTS, short).items():
                        for it in items:
                            add(task, it["prompt"][-1]["content"], it["answer"])
            finally:
                con.close()
    if sandbox is not None:
        sandbox.close()
    if log:
        log(f"pretrain: task documents {count}")
    return docs


def pretrain_texts(db_path=None, train_pairs: str | Path | None = None, exclude_pairs: str | Path | None = None,
                   caps: dict[str, int] | None = None, log=None, tool_share: float = 0.0) -> tuple[list[str], int]:
    """The pre-training texts (see the module docstring) and how many corpus texts were held out as eval."""
    from zoo.build import corpus

    try:
        from commerce.schema import ENRICHED_DOC
    except ImportError:  # the fallback corpus has no schema text
        ENRICHED_DOC = None
    sql_seen = 0

    def trim(t: str) -> str:
        nonlocal sql_seen
        if ENRICHED_DOC and t.startswith(ENRICHED_DOC) and t != ENRICHED_DOC:
            sql_seen += 1
            if sql_seen % SCHEMA_EVERY:
                return t[len(ENRICHED_DOC):].lstrip()
        return t

    held_out = pair_strings(exclude_pairs)
    pair_texts = pair_strings(train_pairs)
    docs = task_documents(db_path, train_pairs, {u for u, _ in read_pairs(exclude_pairs)}, caps, log, tool_share)
    texts, dropped = [], 0
    for t in corpus(db_path):
        if t in held_out:
            dropped += 1
        elif t in pair_texts:
            continue  # the train pairs come back as documents, prompt and answer together
        else:
            texts.append(trim(t))
    texts += [trim(d) for d in docs]
    return texts, dropped


def packed_blocks(tokenizer, texts, block: int) -> list[list[int]]:
    """Concatenate texts (each closed by the tokenizer's eos token) and cut into blocks of ``block`` tokens.

    The eos token is the one generation stops at (``<|im_end|>`` for the zoo's ChatML tokenizers), so the
    model learns in pre-training to end a text, answers included, with the token that ends its turn: a model
    that closed its texts with ``<|endoftext|>`` instead kept writing after a push or an insight until the
    completion cap, the SFT warm-up's one ``<|im_end|>`` per answer notwithstanding.
    """
    eos = tokenizer.eos_token_id
    stream: list[int] = []
    for t in texts:
        stream += tokenizer(t, add_special_tokens=False)["input_ids"] + [eos]
    return [stream[i:i + block] for i in range(0, len(stream) - block + 1, block)]


def pretrain(model_dir: str | Path, out: str | Path, db_path=None, steps: int = 300, batch: int = 16,
             block: int = 256, lr: float = 3e-3, seed: int = 0, train_pairs: str | Path | None = "auto",
             exclude_pairs: str | Path | None = "auto", log=print, tool_share: float = 0.0) -> Path:
    """Train all weights of ``model_dir`` as a causal LM on :func:`pretrain_texts`; write ``out`` atomically.

    ``train_pairs`` / ``exclude_pairs`` "auto" are ``pairs/train.jsonl`` / ``pairs/eval.jsonl`` beside
    ``db_path`` (when there is one); None joins no pair / holds out nothing. Deterministic for (model, texts,
    steps, batch, block, lr, seed) on a given build.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from zoo.build import atomic_dir

    pairs_dir = Path(db_path).parent / "pairs" if db_path else None
    if train_pairs == "auto":
        train_pairs = pairs_dir / "train.jsonl" if pairs_dir else None
    if exclude_pairs == "auto":
        exclude_pairs = pairs_dir / "eval.jsonl" if pairs_dir else None
    torch.manual_seed(seed)
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    texts, dropped = pretrain_texts(db_path, train_pairs, exclude_pairs, log=log, tool_share=tool_share)
    blocks = torch.tensor(packed_blocks(tok, texts, block))
    gen = torch.Generator().manual_seed(seed)
    order: list[int] = []
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01, betas=(0.9, 0.95))
    warm = max(1, steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warm) * 0.5 * (1 + math.cos(math.pi * min(1.0, s / steps))))
    model.train()
    t0, first = time.perf_counter(), None
    for step in range(1, steps + 1):
        while len(order) < batch:  # epochs: every block once before any twice
            order += torch.randperm(len(blocks), generator=gen).tolist()
        x, order = blocks[order[:batch]], order[batch:]
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
                              "tool_share": tool_share,
                              "blocks": len(blocks), "held_out_texts": dropped,
                              "loss_first": first, "loss_last": loss.item()})
        (tmp / "zoo.json").write_text(json.dumps(meta))
    log(f"pretrain: {len(blocks)} blocks of {block} tokens ({dropped} eval texts held out), "
        f"loss {first:.3f} -> {loss.item():.3f}; model at {out}")
    return out
