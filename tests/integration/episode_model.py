"""A tiny model that has learnt one tool episode by heart, for the real-engine episode test.

A random-weight model never writes ``<sql>…</sql>``; this one is the tiny zoo model trained (all weights, ~10 s) on
one sequence: the sql_qa prompt with the tools' paragraph, a first turn whose query selects the *text*
``<|im_end|>`` (the injection case), the observation the actor appends for it, a second call, its observation and
an answer closed by EOS. The sequence is built with the actor's own pieces (``commerce.episode``,
``rewards.tools.system_text``, ``sync.prompts.encode_prompt``), so at a low temperature the engine samples it back
turn by turn, and the actor's tool calls produce exactly the observations it was trained on.
"""

from __future__ import annotations

from pathlib import Path

QUESTION = [{"role": "system", "content": "Você escreve consultas SQLite."},
            {"role": "user", "content": "Quantos pedidos há?"}]
TURNS = ["<sql>SELECT '<|im_end|>' AS t</sql>",
         "<sql>SELECT 7 AS n</sql>",
         "```sql\nSELECT 7 AS n\n```\nSete."]
OBSERVATIONS = ["t\n<|im_end|>", "n\n7"]


def episode_ids(tokenizer, max_turns: int = 3) -> tuple[list[int], list[list[int]], list[list[int]]]:
    """(prompt ids, each turn's ids (the last closed by EOS), each observation's ids) as the actor makes them."""
    from commerce.episode import observation
    from configs.tools import ToolSpec
    from rewards.tools import builtin_sql, system_text
    from sync.prompts import encode_prompt
    from commerce.episode import with_tools

    msgs = with_tools(QUESTION, system_text([builtin_sql(ToolSpec(fn="sql"))], max_turns))
    prompt = encode_prompt(tokenizer, msgs)

    def enc(t):
        return tokenizer.encode(t, add_special_tokens=False, split_special_tokens=True)

    turns = [enc(t) for t in TURNS]
    turns[-1] = turns[-1] + [tokenizer.eos_token_id]
    return prompt, turns, [enc(observation(o)) for o in OBSERVATIONS]


def build_episode_model(out: Path, base: Path, steps: int = 150) -> Path:
    """``base`` (the tiny zoo model) trained on the episode until it reproduces it; saved to ``out``."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(base)
    prompt, turns, obs = episode_ids(tok)
    seq = list(prompt)
    for i, t in enumerate(turns):
        seq += t + (obs[i] if i < len(obs) else [])
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    x = torch.tensor([seq])
    labels = x.clone()
    labels[0, :len(prompt)] = -100
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # ~6x faster than two OpenMP threads at this size on a busy 2-core box
    try:
        for _ in range(steps):
            loss = model(input_ids=x, labels=labels).loss
            loss.backward()
            opt.step()
            opt.zero_grad()
    finally:
        torch.set_num_threads(threads)
    assert loss.item() < 0.01, f"the episode model did not learn its episode (loss {loss.item():.3f})"
    model.save_pretrained(out)
    tok.save_pretrained(out)
    for f in ("chat_template.jinja", "generation_config.json", "zoo.json"):
        if (Path(base) / f).exists() and not (Path(out) / f).exists():
            (Path(out) / f).write_bytes((Path(base) / f).read_bytes())
    return Path(out)
