"""The model card (``README.md``) ``python -m learner.export`` writes beside an exported adapter or merged model.

Hub metadata first (YAML front matter: ``base_model``, ``library_name`` ``peft`` for an adapter or ``transformers`` for
a merged model, ``pipeline_tag``, ``language``, ``tags``, the base model's ``license`` when its own card names one, a
Hub dataset the run trained on), then: what the model is, the tasks, the eval table with its noise (from the run's
``metrics.jsonl``: the first eval against the exported weights' own, each change with twice its standard error), what
``learner.decide`` concluded from the run, how to load and serve it (vLLM ``--enable-lora`` for an adapter), the key
hyperparameters and the resolved config. Text only: no model is loaded here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import yaml

TASK_TEXT = {
    "extraction": "a customer review to a 10-field JSON record (sentiment, complaint, churn risk, ...)",
    "sql_qa": "a question about the orders to a SQLite query over `orders_enriched`, and a short explanation",
    "insights": "strategic bullet points from a block of figures, citing only those figures",
    "push": "a push notification of at most 120 characters that fits the order's situation",
}


@dataclass
class CardInfo:
    """What the card says; every field is read from the run directory by :mod:`learner.export`."""

    base_model: str
    out_name: str
    which: str                      # "final (step 100)", "best by eval (step 50)", "step 40"
    step: int | None
    merged: bool
    dtype: str | None = None
    lora_r: int = 16
    lora_alpha: int = 32
    tasks: list[str] = field(default_factory=list)
    evals: list[dict] = field(default_factory=list)   # metric rows with eval/mean_reward, in step order
    decision: list[str] = field(default_factory=list)
    config_text: str | None = None
    hyper: dict = field(default_factory=dict)
    license: str | None = None
    datasets: list[str] = field(default_factory=list)
    merge_report: list[str] = field(default_factory=list)
    max_lora_rank: int = 16


def front_matter(info: CardInfo) -> str:
    meta: dict = {"base_model": info.base_model, "library_name": "transformers" if info.merged else "peft",
                  "pipeline_tag": "text-generation", "language": ["pt"],
                  "tags": ["grpo", "lora", "tucano2-rl", "reinforcement-learning"]
                  + (["merged"] if info.merged else [f"base_model:adapter:{info.base_model}"])}
    if info.merged:
        meta["base_model_relation"] = "merge"
    if info.license:
        meta["license"] = info.license
    if info.datasets:
        meta["datasets"] = list(info.datasets)
    return "---\n" + yaml.safe_dump(meta, sort_keys=False, allow_unicode=True) + "---\n"


def _eval_at(evals: list[dict], step: int | None) -> dict | None:
    return next((r for r in evals if step is not None and r.get("step") == step), None)


def eval_table(info: CardInfo) -> list[str]:
    """The eval of the exported weights against the run's first eval, per task, with the noise of each change."""
    if not info.evals:
        return ["The run logged no eval (`eval.every: 0` and `eval.at_start: false`)."]
    first, mine = info.evals[0], _eval_at(info.evals, info.step)
    if mine is None:
        last = info.evals[-1]
        return [f"No eval ran at step {info.step}; the run's last eval (step {last['step']}) was "
                f"{last['eval/mean_reward']:.3f} (eval/mean_reward)."]
    tasks = [t for t in info.tasks if f"eval/{t}" in mine] or sorted(
        k.split("/")[1] for k in mine if k.startswith("eval/") and k.count("/") == 1
        and k not in ("eval/mean_reward", "eval/best_mean_reward", "eval/best_step"))
    se = all(f"eval_se/{t}" in first and f"eval_se/{t}" in mine for t in tasks)
    out = [f"| task | step {first['step']} (start) | step {mine['step']} (these weights) | change |"
           + (" noise (2 s.e.) |" if se else ""),
           "| --- | ---: | ---: | ---: |" + (" ---: |" if se else "")]
    for name, key in [(t, f"eval/{t}") for t in tasks] + [("**mean**", "eval/mean_reward")]:
        if key not in first or key not in mine:
            continue
        k = key.replace("eval/", "eval_se/")
        a, b = first[key], mine[key]
        row = f"| {name} | {a:.3f} | {b:.3f} | {b - a:+.3f} |"
        if se:
            row += f" {2 * (first.get(k, 0.0) ** 2 + mine.get(k, 0.0) ** 2) ** 0.5:.3f} |"
        out.append(row)
    if se:
        out += ["", "Noise: twice the standard error of the change, from each eval's standard error over its prompts "
                "(`eval_se/*` in `metrics.jsonl`). A change larger than that is not sampling luck."]
    return out


def serve_lines(info: CardInfo, repo: str | None) -> list[str]:
    where = repo or f"path/to/{info.out_name}"
    if info.merged:
        return [
            "```bash",
            f"vllm serve {where} --dtype {info.dtype}",
            "```",
            "",
            "```python",
            "from transformers import AutoModelForCausalLM, AutoTokenizer",
            f"model = AutoModelForCausalLM.from_pretrained(\"{where}\")",
            f"tokenizer = AutoTokenizer.from_pretrained(\"{where}\")",
            "```",
        ]
    return [
        "With vLLM, as a LoRA adapter on the base model (an OpenAI-compatible server; ask for the model `grpo`):",
        "",
        "```bash",
        f"vllm serve {info.base_model} --enable-lora --max-lora-rank {info.max_lora_rank} \\",
        f"    --lora-modules grpo={where}",
        "```",
        "",
        "```python",
        "from vllm import LLM, SamplingParams",
        "from vllm.lora.request import LoRARequest",
        "",
        f"llm = LLM(model=\"{info.base_model}\", enable_lora=True, max_lora_rank={info.max_lora_rank})",
        "messages = [[{\"role\": \"user\", \"content\": \"...\"}]]",
        "out = llm.chat(messages, SamplingParams(temperature=0.7, max_tokens=512),",
        f"               lora_request=LoRARequest(\"grpo\", 1, \"{where}\"))",
        "```",
        "",
        "With transformers and PEFT:",
        "",
        "```python",
        "from peft import PeftModel",
        "from transformers import AutoModelForCausalLM, AutoTokenizer",
        "",
        f"base = AutoModelForCausalLM.from_pretrained(\"{info.base_model}\")",
        f"model = PeftModel.from_pretrained(base, \"{where}\")",
        f"tokenizer = AutoTokenizer.from_pretrained(\"{where}\")",
        "```",
        "",
        "Serve it unmerged on a bf16 or fp16 engine: merging a small LoRA delta into bf16 weights rounds most of it "
        "back to the base weights (`python -m learner.export --merge` measures what survives and refuses such a "
        "merge).",
    ]


def render(info: CardInfo, repo: str | None = None) -> str:
    kind = (f"{info.base_model} with a GRPO-trained LoRA adapter merged in ({info.dtype})" if info.merged
            else f"A GRPO-trained LoRA adapter for {info.base_model}")
    lines = [front_matter(info), f"# {info.out_name}", "",
             f"{kind}: the {info.which} weights of a tucano2-rl run (Dr. GRPO, vLLM actors and a DeepSpeed learner; "
             f"LoRA rank {info.lora_r}, alpha {info.lora_alpha}).",
             "", "## Tasks", ""]
    lines += [f"- **{t}**: {TASK_TEXT.get(t, 'a task of the run' + chr(39) + 's own reward (rewards.custom)')}"
              for t in info.tasks] or ["- (not recorded: the run directory has no config.yaml)"]
    lines += ["", "## Eval", ""] + eval_table(info)
    if info.merge_report:
        lines += ["", "## The merge", ""] + info.merge_report
    lines += ["", "## What `learner.decide` concluded from the run", ""]
    lines += ["```", *info.decision, "```"] if info.decision else ["(no decision)"]
    lines += ["", "## Use", ""] + serve_lines(info, repo)
    if info.hyper:
        lines += ["", "## Training", "", "| setting | value |", "| --- | --- |"]
        lines += [f"| `{k}` | {v} |" for k, v in info.hyper.items()]
    if info.config_text:
        lines += ["", "<details><summary>The run's resolved config (config.yaml)</summary>", "", "```yaml",
                  info.config_text.rstrip(), "```", "", "</details>"]
    return "\n".join(lines) + "\n"


def base_license(model_dir: str) -> str | None:
    """The ``license`` of a local base model's own card front matter, or None."""
    p = Path(model_dir) / "README.md"
    try:
        text = p.read_text()
    except OSError:
        return None
    if not text.startswith("---"):
        return None
    try:
        meta = yaml.safe_load(text.split("---", 2)[1])
    except (yaml.YAMLError, IndexError):
        return None
    lic = meta.get("license") if isinstance(meta, dict) else None
    return lic if isinstance(lic, str) else None
