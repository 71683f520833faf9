"""Small, real inputs for learner tests and demos: a toy pair file and a config that trains on it.

Not a mock: these are ordinary pair files (the ``commerce`` format: ``prompt``, ``task``, ``answer``)
with short prompts, and a run config with the toy-token reward, so a learner run on the tiny model
takes seconds on a CPU.
"""

from __future__ import annotations

import json
from pathlib import Path

TASKS = ("extraction", "sql_qa", "insights", "push")
WORDS = ["pedido", "entrega", "produto", "frete", "loja", "caixa", "prazo", "troca", "cliente", "nota"]


def write_toy_pairs(out_dir: Path, n_train: int = 24, n_eval: int = 8) -> tuple[Path, Path]:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)

    def rows(n: int, offset: int) -> list[dict]:
        out = []
        for i in range(n):
            task = TASKS[i % len(TASKS)]
            w = WORDS[(i + offset) % len(WORDS)]
            out.append(
                {
                    "id": f"{task}-{i + offset:05d}",
                    "task": task,
                    "prompt": [
                        {"role": "system", "content": f"Tarefa {task}."},
                        {"role": "user", "content": f"Fale sobre {w} numero {i + offset}."},
                    ],
                    "answer": f"O {w} {i + offset} chegou bem.",
                }
            )
        return out

    train, ev = out_dir / "train.jsonl", out_dir / "eval.jsonl"
    train.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows(n_train, 0)))
    ev.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows(n_eval, 1000)))
    return train, ev


def toy_overrides(model_dir: Path, run_dir: Path, pairs_dir: Path, **extra) -> list[str]:
    """``--set`` items pointing ``configs/smoke_cpu.yaml`` at the tiny model and the toy pairs."""
    train, ev = write_toy_pairs(pairs_dir)
    items = {
        "model_id": str(model_dir),
        "run_dir": str(run_dir),
        "data.train_pairs": str(train),
        "data.eval_pairs": str(ev),
        "rewards.toy_token": "m",
        "max_completion_length": 16,
        "num_generations": 4,
        "prompts_per_step": 2,
        "eval.at_start": False,
        "eval.every": 0,
        "eval.subset_size": 4,
        "learner.probe_every": 0,
        "logging.wandb_mode": "disabled",
        "sync.max_staleness": 0,
    }
    items.update(extra)
    return [f"{k}={v}" for k, v in items.items()]
