"""End to end, the saved adapter: ``RUN_DIR/adapter`` of a real run (the learning proof's sync-on run,
made once per session, see ``e2e_helpers.learning_run``) is a PEFT adapter, and its export (``python -m learner.export
RUN_DIR --out DIR``, the command ``make demo`` prints for its own run) is a folder that vLLM (``enable_lora`` +
``LoRARequest``) and transformers+PEFT both load, and both reproduce the learner's own logprobs of fixed completion
tokens on the run's eval prompts (temperature 1, float32; the learner reading ``RUN_DIR/adapter``) within 1e-3.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from safetensors.torch import load_file

from configs import load_config
from e2e_helpers import learning_run

pytestmark = pytest.mark.slow

VLLM = textwrap.dedent("""
    import json, sys
    if __name__ == "__main__":
        from vllm import LLM, SamplingParams
        from vllm.lora.request import LoRARequest
        model, adapter, chats = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
        llm = LLM(model=model, dtype="float32", kv_cache_memory_bytes=128 * 2**20, max_model_len=256,
                  enable_lora=True, max_lora_rank=16, max_loras=1, enforce_eager=True, seed=0)
        sp = SamplingParams(n=4, temperature=1.0, max_tokens=12, logprobs=0, seed=3, ignore_eos=True)
        outs = llm.chat(chats, sp, lora_request=LoRARequest("trained", 1, adapter))
        res = [dict(prompt_ids=list(out.prompt_token_ids),
                    completions=[dict(ids=list(c.token_ids), lps=[lp[t].logprob for t, lp in zip(c.token_ids,
                                                                                                 c.logprobs)])
                                 for c in out.outputs]) for out in outs]
        print("RESULT " + json.dumps(res))
""")


@pytest.fixture(scope="module")
def trained(tiny_model, tmp_path_factory):
    base = tmp_path_factory.getbasetemp() / "e2e_learning"  # shared with test_e2e_learning.py
    base.mkdir(exist_ok=True)
    run = learning_run(tiny_model, base, publish=True)
    cfg = load_config(run / "config.yaml")
    return run / "adapter", cfg


@pytest.fixture(scope="module")
def exported(trained, tmp_path_factory):
    """The run's adapter exported with the command ``launch/demo.sh`` prints for its own run (RUN_DIR and the output
    folder substituted)."""
    import shlex
    from pathlib import Path

    adapter, _ = trained
    run, out = adapter.parent, tmp_path_factory.mktemp("exported") / "demo-export"
    line = next(ln for ln in (Path(__file__).resolve().parents[2] / "launch" / "demo.sh").read_text().splitlines()
                if "-m learner.export" in ln and ln.lstrip().startswith("echo"))
    words = shlex.split(shlex.split(line)[1])   # echo "  $PY -m learner.export $RUN --out $RUN-export"
    argv = [{"$RUN": str(run), "$RUN-export": str(out)}.get(w, w) for w in words[words.index("learner.export") + 1:]]
    r = subprocess.run([sys.executable, "-m", "learner.export", *argv], capture_output=True, text=True, timeout=300,
                       cwd=Path(__file__).resolve().parents[2])
    assert r.returncode == 0, r.stderr[-3000:]
    return out


@pytest.fixture(scope="module")
def vllm_sampled(trained, exported, tmp_path_factory):
    _, cfg = trained
    adapter = exported
    script = tmp_path_factory.mktemp("vllm_adapter") / "sample.py"
    script.write_text(VLLM)
    from learner.data import load_items, stratified_subset

    chats = [it.messages for it in stratified_subset(load_items(cfg.data.eval_pairs, cfg.data.tasks),
                                                     cfg.eval.subset_size, cfg.seed)[:4]]   # the run's eval prompts
    proc = subprocess.run([sys.executable, str(script), str(cfg.model_id), str(adapter), json.dumps(chats)],
                          capture_output=True, text=True, timeout=300,
                          env={**os.environ, "VLLM_ENABLE_V1_MULTIPROCESSING": "0"})  # in-process: ~15 s sooner
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
    assert line is not None, proc.stderr[-3000:]
    return json.loads(line[len("RESULT "):])


def learner_logprobs(cfg, adapter, prompt_ids, completions) -> list[list[float]]:
    """The learner's code path: PEFT model as the learner builds it, its collate and logprob helper."""
    from learner.engine import build_peft_model
    from learner.loss import model_completion_logps
    from learner.rollouts import Sample, collate

    model = build_peft_model(cfg.model_id, lora_r=cfg.lora_r, lora_alpha=cfg.lora_alpha, dtype=torch.float32,
                             init_adapter=adapter).eval()
    samples = [Sample(list(prompt_ids), list(c), [0.0] * len(c), 0.0, 0.0, 0, False) for c in completions]
    b = collate(samples, 0)
    with torch.no_grad():
        lp = model_completion_logps(model, b.input_ids, b.attention_mask, b.prompt_len, 1.0,
                                    position_ids=b.position_ids)
    return [lp[i, : len(c)].tolist() for i, c in enumerate(completions)]


def test_saved_adapter_is_peft_format(trained):
    adapter, cfg = trained
    conf = json.loads((adapter / "adapter_config.json").read_text())
    assert conf["peft_type"] == "LORA" and conf["r"] == cfg.lora_r and conf["lora_alpha"] == cfg.lora_alpha
    tensors = load_file(str(adapter / "adapter_model.safetensors"))
    assert tensors and all(k.startswith("base_model.model.") and ".lora_" in k for k in tensors)
    assert all(t.dtype == torch.float32 for t in tensors.values())
    assert any("lora_B" in k and t.abs().max() > 0 for k, t in tensors.items())  # trained (B starts at 0)


def test_the_export_is_a_peft_folder_with_tokenizer_and_card(trained, exported):
    adapter, cfg = trained
    assert (exported / "adapter_model.safetensors").read_bytes() == (adapter / "adapter_model.safetensors").read_bytes()
    assert (exported / "tokenizer_config.json").is_file() and (exported / "config.yaml").is_file()
    card = (exported / "README.md").read_text()
    assert card.startswith(f"---\nbase_model: {cfg.model_id}\nlibrary_name: peft\n")
    assert f"the final (step {cfg.max_steps}) weights" in card and "--enable-lora" in card


def test_vllm_and_peft_reproduce_the_learners_logprobs(trained, exported, vllm_sampled, actor_kit):
    adapter, cfg = trained
    ours, peft, base, sampled = [], [], [], []
    for res in vllm_sampled:  # one per eval prompt
        prompt_ids, comps = res["prompt_ids"], [r["ids"] for r in res["completions"]]
        ours += learner_logprobs(cfg, adapter, prompt_ids, comps)
        peft += type(actor_kit.reference)(cfg.model_id).logprobs(exported, prompt_ids, comps)
        base += learner_logprobs(cfg, None, prompt_ids, comps)  # fresh LoRA (B = 0): the base model
        sampled += [r["lps"] for r in res["completions"]]
    flat = lambda rows: torch.tensor([x for r in rows for x in r])  # noqa: E731
    learner, vllm = flat(ours), flat(sampled)
    gap_vllm = (learner - vllm).abs().max().item()
    gap_peft = (learner - flat(peft)).abs().max().item()
    moved = (learner - flat(base)).abs().mean().item()
    print(f"\nadapter: max |learner - vLLM| {gap_vllm:.2e}, max |learner - PEFT| {gap_peft:.2e}, "
          f"mean |adapter - base| {moved:.3f} over {learner.numel()} tokens")
    assert moved > 0.05  # the adapter matters, so agreement below is not the base model agreeing with itself
    assert gap_vllm < 1e-3
    assert gap_peft < 1e-3
