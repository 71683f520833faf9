"""``python -m learner.export RUN_DIR --out DIR [--best | --step N] [--merge [--dtype D]] [--push-to-hub REPO]``

From a run to a model in use: one of the run's adapters (the final one, ``RUN_DIR/adapter``; ``--best``, the best by
eval, ``RUN_DIR/best``; ``--step N``, a kept checkpoint's) written to ``DIR`` as a PEFT folder with the base model's
tokenizer and a model card (``README.md``, :mod:`learner.modelcard`: Hub metadata, the tasks, the eval table with its
noise, ``learner.decide``'s conclusion, how to serve it with vLLM), the run's ``config.yaml`` and ``eval.json``.

``--merge`` writes the base model with the adapter merged in instead: merged in float32, written in ``--dtype``
(default: the base checkpoint's), and checked (:mod:`learner.export_merge`): the delta that survives the cast, per
module type, and the merged model's logprobs against base + adapter on eval prompts. A merge that is not the model
trained (a bf16 merge of an early, small adapter) is refused with one line and exit 2 unless ``--force``.

``--push-to-hub REPO`` uploads ``DIR`` to the Hugging Face Hub as a private repository (``--public`` to publish): the
token is read from the environment (``HF_TOKEN``, or the one ``hf auth login`` stored), the endpoint from
``HF_ENDPOINT`` (default https://huggingface.co). Nothing is pushed without ``--push-to-hub``.

Exit codes: 0 written (and pushed), 1 the push failed (``DIR`` is written), 2 bad input, one line: a run directory
without the adapter asked for, a step that was not kept, an output folder that exists (``--overwrite``), a base model
that cannot be found (nothing is downloaded unless ``TUCANO2_ALLOW_DOWNLOAD=1``), a refused merge, no Hub token.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")


class ExportError(ValueError):
    """Bad input: one line, exit 2."""


def _is_adapter(d: Path) -> bool:
    return all((d / f).is_file() for f in ADAPTER_FILES)


def kept_steps(run_dir: Path) -> list[int]:
    """Steps whose checkpoint (``learner.checkpoint``'s complete ``checkpoints/step-N``) holds an adapter."""
    root = run_dir / "checkpoints"
    dirs = sorted(root.glob("step-*")) if root.is_dir() else []
    return [int(p.name.split("-")[1]) for p in dirs if p.name.split("-")[1].isdigit()
            and (p / "trainer_state.json").is_file() and _is_adapter(p / "adapter")]


def read_evals(run_dir: Path) -> list[dict]:
    """The eval rows of ``metrics.jsonl`` (one per step, the last line of a step wins), in step order."""
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return []
    from learner.metrics import read_metrics

    by_step = {}
    for r in read_metrics(run_dir):
        if isinstance(r.get("eval/mean_reward"), (int, float)) and "step" in r:
            by_step[int(r["step"])] = r
    return [by_step[s] for s in sorted(by_step)]


def last_step(run_dir: Path) -> int | None:
    from learner.metrics import read_metrics

    if not (run_dir / "metrics.jsonl").is_file():
        return None
    steps = [int(r["step"]) for r in read_metrics(run_dir) if "perf/step_s" in r and "step" in r]
    return max(steps) if steps else None


def select(run_dir: Path, best: bool, step: int | None) -> tuple[Path, str, int | None]:
    """(adapter directory, what it is in words, its step) or :class:`ExportError`."""
    if not run_dir.is_dir():
        raise ExportError(f"{run_dir}: no such run directory")
    kept = kept_steps(run_dir)
    kept_txt = f"kept checkpoints: steps {', '.join(map(str, kept))}" if kept else "no checkpoint is kept"
    if step is not None:
        d = run_dir / "checkpoints" / f"step-{step:06d}" / "adapter"
        if not _is_adapter(d):
            raise ExportError(f"--step {step}: that step was not kept in {run_dir} ({kept_txt}; the run keeps the "
                              "newest learner.keep_checkpoints)")
        return d, f"step {step}", step
    if best:
        d = run_dir / "best"
        evals = read_evals(run_dir)
        if not _is_adapter(d):
            raise ExportError(f"{run_dir} has no best-by-eval adapter (best/{ADAPTER_FILES[1]}): the run ran no eval")
        s = int(evals[-1]["eval/best_step"]) if evals and "eval/best_step" in evals[-1] else None
        return d, f"best by eval (step {s})" if s is not None else "best by eval", s
    d = run_dir / "adapter"
    if not _is_adapter(d):
        raise ExportError(f"{run_dir} has no adapter ({d.name}/{ADAPTER_FILES[1]}): the run has not finished; "
                          f"--step N exports a checkpoint's ({kept_txt}), --best the best by eval")
    s = last_step(run_dir)
    return d, f"final (step {s})" if s is not None else "final", s


def load_run_config(run_dir: Path, config: Path | None):
    """The run's config (``--config`` or ``RUN_DIR/config.yaml``) and its text, or (None, None) when there is none."""
    path = config or run_dir / "config.yaml"
    if not path.is_file():
        if config is not None:
            raise ExportError(f"--config {config}: no such file")
        return None, None
    from configs import ConfigError, load_config

    try:
        return load_config(path), path.read_text()
    except ConfigError as e:
        raise ExportError(f"invalid config: {e}") from None


def probe_samples(cfg, tokenizer, n: int) -> list[tuple[list[int], list[int]]]:
    """(prompt ids, reference answer ids) of ``n`` eval prompts (the run's own stratified eval subset, in its order):
    what the merge check scores. Fixed Portuguese answers stand in where the pairs have none."""
    from sync.prompts import encode_prompt

    items = []
    if cfg is not None:
        from learner.data import load_items, stratified_subset

        try:
            every = load_items(cfg.data.eval_pairs, cfg.data.tasks, custom_tasks=tuple(cfg.rewards.custom))
            items = stratified_subset(every, cfg.eval.subset_size, cfg.seed)[:n]
        except ValueError:
            items = []
    pairs = [(it.messages, it.columns.get("answer")) for it in items]
    if not pairs:
        pairs = [([{"role": "user", "content": q}], a) for q, a in FALLBACK_PROMPTS][:n]
    out = []
    for msgs, answer in pairs:
        ids = tokenizer(answer or "O pedido chegou no prazo e bem embalado.", add_special_tokens=False)["input_ids"]
        out.append((encode_prompt(tokenizer, msgs), list(ids)[:96] or [tokenizer.eos_token_id]))
    return out


FALLBACK_PROMPTS = [
    ("Resuma a avaliação: o produto chegou atrasado e com defeito.", "Cliente insatisfeito: atraso e defeito."),
    ("Escreva uma notificação curta sobre o pedido enviado.", "Seu pedido saiu para entrega! Chega amanhã."),
    ("Quantos pedidos foram entregues em SP?", "SELECT COUNT(*) FROM orders_enriched WHERE customer_state = 'SP';"),
    ("Dê um insight sobre a taxa de atraso de 12%.", "- Reduzir a taxa de atraso de 12% com transportadoras."),
]


def max_lora_rank(r: int) -> int:
    from configs.schema import VLLM_LORA_RANKS

    return next((s for s in VLLM_LORA_RANKS if s >= r), VLLM_LORA_RANKS[-1])


def base_dtype(model_dir: str) -> str:
    """The base checkpoint's dtype (``config.json``), bfloat16 when it says none."""
    try:
        c = json.loads((Path(model_dir) / "config.json").read_text())
    except (OSError, ValueError):
        return "bfloat16"
    d = c.get("dtype") or c.get("torch_dtype") or "bfloat16"
    return d if d in ("float32", "bfloat16", "float16") else "bfloat16"


def decision_lines(run_dir: Path) -> list[str]:
    from learner.decide import DecideError, decide
    from learner.decide import read_evals as decide_evals

    try:
        d = decide(decide_evals(run_dir))
    except DecideError as e:
        return [f"not judged: {e}"]
    step, nxt = d.next_step
    return [d.title, *(f"  {x}" for x in d.lines), f"Next: {step}", f"Run next: {nxt or 'nothing prescribed'}"]


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m learner.export", description=__doc__.split("\n\n")[1].split("\n")[0],
                                epilog="Exit codes: 0 done, 1 the push failed (DIR is written), 2 bad input.")
    p.add_argument("run_dir", type=Path, metavar="RUN_DIR", help="a run directory (runs/NAME)")
    p.add_argument("--out", type=Path, required=True, metavar="DIR", help="the folder to write")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--best", action="store_true", help="the best adapter by eval (RUN_DIR/best)")
    which.add_argument("--step", type=int, default=None, metavar="N", help="a kept checkpoint's adapter")
    p.add_argument("--merge", action="store_true", help="write the base model with the adapter merged in")
    p.add_argument("--dtype", choices=("auto", "float32", "bfloat16", "float16"), default="auto",
                   help="--merge: the dtype written (auto: the base checkpoint's)")
    p.add_argument("--force", action="store_true", help="--merge: write it even when the checks refuse it")
    p.add_argument("--check-prompts", type=int, default=8, metavar="N",
                   help="--merge: eval prompts the logprob check scores (default 8)")
    p.add_argument("--overwrite", action="store_true", help="replace DIR when it exists")
    p.add_argument("--config", type=Path, default=None, help="the run's config (default RUN_DIR/config.yaml)")
    p.add_argument("--base-model", default=None, metavar="ID",
                   help="the base model to record and load (default: the config's model_id, else the adapter's)")
    p.add_argument("--push-to-hub", default=None, metavar="REPO", help="upload DIR to this Hub repository (owner/name)")
    p.add_argument("--public", action="store_true", help="--push-to-hub: a public repository (default private)")
    return p.parse_args(argv)


def check_inputs(args) -> tuple:
    """Everything that can be refused before a model loads: (adapter dir, words, step, cfg, config text, base)."""
    from learner.__main__ import model_problem

    if args.step is not None and args.step < 0:
        raise ExportError(f"--step {args.step}: a step is >= 0")
    adapter, which, step = select(args.run_dir, args.best, args.step)
    out, run = args.out.resolve(), args.run_dir.resolve()
    if out == run or out in run.parents or any(x in (run / "adapter", run / "best", run / "checkpoints")
                                               for x in (out, *out.parents)):
        raise ExportError(f"--out {args.out} would replace the run's own files; choose another folder")
    if args.out.exists() and not args.overwrite:
        raise ExportError(f"--out {args.out} exists (--overwrite replaces it)")
    cfg, text = load_run_config(args.run_dir, args.config)
    conf = json.loads((adapter / "adapter_config.json").read_text())
    base = args.base_model or (str(cfg.model_id) if cfg is not None else conf.get("base_model_name_or_path"))
    if not base:
        raise ExportError(f"{adapter}: no base model recorded; name it with --base-model")
    why = model_problem(base)
    if why:
        raise ExportError(f"base model: {why}")
    if args.push_to_hub:
        if args.push_to_hub.count("/") != 1 or not all(args.push_to_hub.split("/")):
            raise ExportError(f"--push-to-hub {args.push_to_hub}: a repository is owner/name")
        from huggingface_hub import get_token

        if not get_token():
            raise ExportError("--push-to-hub: no Hugging Face token (set HF_TOKEN, or run `hf auth login`)")
    return adapter, which, step, cfg, text, base


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        adapter, which, step, cfg, text, base = check_inputs(args)
    except ExportError as e:
        print(f"export: {e}", file=sys.stderr)
        return 2
    from learner.modelcard import CardInfo, base_license, render

    conf = json.loads((adapter / "adapter_config.json").read_text())
    info = CardInfo(base_model=base, out_name=args.push_to_hub.split("/")[1] if args.push_to_hub else args.out.name,
                    which=which, step=step, merged=args.merge, lora_r=int(conf.get("r", 16)),
                    lora_alpha=int(conf.get("lora_alpha", 32)), tasks=list(cfg.data.tasks) if cfg else [],
                    evals=read_evals(args.run_dir), decision=decision_lines(args.run_dir), config_text=text,
                    license=base_license(base), max_lora_rank=max_lora_rank(int(conf.get("r", 16))))
    if cfg is not None:
        info.hyper = {k: getattr(cfg, k) for k in ("max_steps", "learning_rate", "num_generations",
                                                   "max_completion_length", "temperature", "loss_type",
                                                   "prompts_per_step", "lora_r", "lora_alpha", "seed")}
        from commerce.sources import parse as parse_source

        for spec in (cfg.data.train_pairs, cfg.data.eval_pairs):
            try:
                src = parse_source(spec)
            except ValueError:
                continue
            if src.kind == "hub" and src.path not in info.datasets:
                info.datasets.append(src.path)
    import transformers
    from transformers import AutoTokenizer

    transformers.utils.logging.disable_progress_bar()  # "Loading weights" bars: the CLI prints its own lines
    tokenizer = AutoTokenizer.from_pretrained(base)
    tmp = args.out.parent / f".tmp-{args.out.name}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        if args.merge:
            from learner.export_merge import merge

            info.dtype = base_dtype(base) if args.dtype == "auto" else args.dtype
            merged, check = merge(base, adapter, info.dtype, probe_samples(cfg, tokenizer, args.check_prompts))
            for line in check.lines():
                print(line)
            why = check.refusal()
            if why and not args.force:
                print(f"export: refused: {why}", file=sys.stderr)
                return 2
            info.merge_report = check.lines() + ([f"**Written with --force despite: {why}.**"] if why else [])
            merged.save_pretrained(tmp, safe_serialization=True)
        else:
            for f in ADAPTER_FILES:
                shutil.copy2(adapter / f, tmp / f)
            conf["base_model_name_or_path"] = base
            (tmp / "adapter_config.json").write_text(json.dumps(conf, indent=2) + "\n")
        tokenizer.save_pretrained(tmp)
        if text is not None:
            (tmp / "config.yaml").write_text(text)
        (tmp / "eval.json").write_text(json.dumps({"adapter": which, "step": step, "evals": info.evals}, indent=1))
        (tmp / "README.md").write_text(render(info, args.push_to_hub))
        if args.out.exists():
            shutil.rmtree(args.out)
        tmp.rename(args.out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"export: wrote {args.out} ({'merged, ' + info.dtype if args.merge else 'adapter'}; the {which} weights of "
          f"{args.run_dir})")
    if args.push_to_hub:
        try:
            url = push(args.out, args.push_to_hub, private=not args.public)
        except Exception as e:  # noqa: BLE001 - the Hub's errors are many; one line, the folder stays
            print(f"export: push to {args.push_to_hub} failed: {type(e).__name__}: {str(e).splitlines()[0]}",
                  file=sys.stderr)
            return 1
        print(f"export: pushed to {url} ({'public' if args.public else 'private'})")
    return 0


def push(folder: Path, repo: str, private: bool = True) -> str:
    """Create ``repo`` (private unless told; an existing one is kept as it is) and commit every file of ``folder``
    in one commit. Token and endpoint come from the environment (``HF_TOKEN``, ``HF_ENDPOINT``)."""
    from huggingface_hub import CommitOperationAdd, HfApi

    api = HfApi()
    url = api.create_repo(repo, private=private, exist_ok=True, repo_type="model")
    ops = [CommitOperationAdd(path_in_repo=p.relative_to(folder).as_posix(), path_or_fileobj=str(p))
           for p in sorted(folder.rglob("*")) if p.is_file()]
    api.create_commit(repo, ops, commit_message="Upload from tucano2-rl (python -m learner.export)",
                      repo_type="model")
    return str(url)


if __name__ == "__main__":
    sys.exit(main())
