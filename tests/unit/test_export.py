"""``python -m learner.export``: the adapter or a merged model with its model card, the merge's checks, the push to a
FAKE Hub (tests/unit/fake_hub.py), and each bad input as one line and exit 2.

The run directories here are laid out as a run leaves them (``config.yaml``, ``metrics.jsonl``, ``adapter/``, ``best/``,
``checkpoints/step-N/adapter``) around real PEFT adapters on the tiny model; the export of a real run's adapter, loaded
by vLLM and PEFT, is ``tests/integration/test_e2e_adapter.py``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file

from fake_hub import FakeHub

REPO = Path(__file__).resolve().parents[2]
TASKS = ("extraction", "sql_qa", "insights", "push")


def eval_row(step: int, mean: float, best_step: int) -> dict:
    row = {"step": step, "eval/mean_reward": mean, "eval_se/mean_reward": 0.01, "eval/best_mean_reward": mean,
           "eval/best_step": float(best_step)}
    for i, t in enumerate(TASKS):
        row[f"eval/{t}"] = round(mean + 0.01 * i, 4)
        row[f"eval_se/{t}"] = 0.02
    return row


def make_run(root: Path, smoke_config, scale: float = 1.0) -> Path:
    """A finished 8-step run: a random non-zero LoRA (B scaled by ``scale``) saved as the learner saves it, as the
    final, best and step-4 adapter; evals at steps 0, 4 and 8."""
    from configs.loader import dump_config
    from learner.engine import build_peft_model, lora_state_dict

    run = root
    run.mkdir(parents=True)
    (run / "config.yaml").write_text(dump_config(smoke_config))
    model = build_peft_model(str(smoke_config.model_id), lora_r=16, lora_alpha=32, dtype=torch.float32)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.05 * scale)
    for d in (run / "adapter", run / "best", run / "checkpoints" / "step-000004" / "adapter"):
        d.mkdir(parents=True)
        save_file(lora_state_dict(model), str(d / "adapter_model.safetensors"), metadata={"format": "pt"})
        model.peft_config["default"].save_pretrained(str(d))
    (run / "checkpoints" / "step-000004" / "trainer_state.json").write_text(json.dumps({"step": 4}))
    rows = [eval_row(0, 0.20, 0)] + [{"step": s, "train/reward": 0.3, "perf/step_s": 1.0} for s in range(1, 9)]
    rows[4].update(eval_row(4, 0.35, 4))
    rows[8].update(eval_row(8, 0.31, 4))
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return run


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_model, commerce_data):
    from configs import load_config

    root = tmp_path_factory.mktemp("export_runs")
    out = {}
    for name, scale in (("trained", 1.0), ("early", 0.01)):
        cfg = load_config(REPO / "configs" / "smoke_cpu.yaml",
                          [f"model_id={tiny_model}", f"run_dir={root / name}",
                           f"data.db_path={commerce_data / 'commerce.db'}",
                           f"data.train_pairs={commerce_data / 'pairs' / 'train.jsonl'}",
                           f"data.eval_pairs={commerce_data / 'pairs' / 'eval.jsonl'}"])
        out[name] = make_run(root / name, cfg, scale)
    return out


def export(*argv) -> int:
    from learner.export import main

    return main([str(a) for a in argv])


def front_matter(readme: Path) -> dict:
    return yaml.safe_load(readme.read_text().split("---", 2)[1])


def logprobs(model, tokenizer, text_pairs) -> torch.Tensor:
    from learner.loss import model_completion_logps
    from sync.prompts import encode_prompt

    out = []
    with torch.no_grad():
        for q, a in text_pairs:
            p = encode_prompt(tokenizer, [{"role": "user", "content": q}])
            ids = torch.tensor([p + tokenizer(a, add_special_tokens=False)["input_ids"]])
            out.append(model_completion_logps(model, ids, torch.ones_like(ids), len(p))[0].float())
    return torch.cat(out)


PAIRS = [("Resuma: o produto chegou atrasado.", "Cliente insatisfeito com o atraso."),
         ("Escreva uma notificação do pedido.", "Seu pedido chega amanhã!")]


def test_the_adapter_export_is_a_peft_folder_with_tokenizer_and_card(runs, tiny_model, tmp_path, capsys):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from learner.engine import build_peft_model

    run, out = runs["trained"], tmp_path / "out"
    assert export(run, "--out", out) == 0
    assert "export: wrote" in capsys.readouterr().out
    a = load_file(str(run / "adapter" / "adapter_model.safetensors"))
    b = load_file(str(out / "adapter_model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert json.loads((out / "adapter_config.json").read_text())["base_model_name_or_path"] == str(tiny_model)
    meta = front_matter(out / "README.md")
    assert meta["base_model"] == str(tiny_model) and meta["library_name"] == "peft"
    assert meta["pipeline_tag"] == "text-generation" and "grpo" in meta["tags"]
    card = (out / "README.md").read_text()
    assert "the final (step 8) weights" in card
    assert "| **mean** | 0.200 | 0.310 | +0.110 | 0.028 |" in card   # the eval table: start, these weights, noise
    assert "| push | 0.230 | 0.340 | +0.110 | 0.057 |" in card
    assert "No branch of the handoff's tree fits" in card or "Scenario" in card   # learner.decide's conclusion
    assert f"vllm serve {tiny_model} --enable-lora --max-lora-rank 16" in card
    assert "learning_rate" in card and "max_completion_length: 48" in card   # hyperparameters and the config
    assert json.loads((out / "eval.json").read_text())["step"] == 8
    # the folder loads as the learner's policy: PEFT on the exported folder, tokenizer from it
    tok = AutoTokenizer.from_pretrained(out)
    peft = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32), out).eval()
    learner = build_peft_model(str(tiny_model), lora_r=16, lora_alpha=32, dtype=torch.float32,
                               init_adapter=run / "adapter").eval()
    assert torch.equal(logprobs(peft, tok, PAIRS), logprobs(learner, tok, PAIRS))


def test_best_and_a_kept_step_are_exported(runs, tmp_path):
    run = runs["trained"]
    assert export(run, "--out", tmp_path / "best", "--best") == 0
    assert "the best by eval (step 4) weights" in (tmp_path / "best" / "README.md").read_text()
    assert "| **mean** | 0.200 | 0.350 | +0.150 |" in (tmp_path / "best" / "README.md").read_text()
    assert export(run, "--out", tmp_path / "s4", "--step", "4") == 0
    assert "the step 4 weights" in (tmp_path / "s4" / "README.md").read_text()


@pytest.mark.parametrize("case", ["no adapter", "step not kept", "out exists", "base not found", "out is the run"])
def test_bad_input_is_one_line_and_exit_2(runs, tmp_path, capsys, case):
    run = runs["trained"]
    out = tmp_path / "out"
    argv = [run, "--out", out]
    if case == "no adapter":
        bare = tmp_path / "unfinished"
        shutil.copytree(run, bare, ignore=shutil.ignore_patterns("adapter"))
        argv[0], want = bare, "has no adapter (adapter/adapter_model.safetensors): the run has not finished"
    elif case == "step not kept":
        argv += ["--step", "5"]
        want = "--step 5: that step was not kept"
    elif case == "out exists":
        out.mkdir()
        (out / "mine.txt").write_text("keep me")
        want = "exists (--overwrite replaces it)"
    elif case == "base not found":
        argv += ["--base-model", str(tmp_path / "no-such-model")]
        want = "base model: model"
    else:
        argv[2], want = run, "would replace the run's own files"
        argv.append("--overwrite")
    assert export(*argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("export: ") and want in err, err
    assert (out / "mine.txt").read_text() == "keep me" if case == "out exists" else not out.exists()
    assert (run / "adapter" / "adapter_model.safetensors").is_file()


def test_a_float32_merge_is_the_trained_model(runs, tiny_model, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    run, out = runs["trained"], tmp_path / "merged"
    assert export(run, "--out", out, "--merge", "--dtype", "float32", "--check-prompts", "2") == 0
    card = (out / "README.md").read_text()
    assert front_matter(out / "README.md")["library_name"] == "transformers"
    assert "## The merge" in card and "| q_proj | 1.000000 |" in card
    tok = AutoTokenizer.from_pretrained(out)
    merged = AutoModelForCausalLM.from_pretrained(out).eval()
    assert merged.dtype == torch.float32 and not (out / "adapter_config.json").exists()
    peft = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32),
                                     run / "adapter").eval()
    base = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32).eval()
    want, got = logprobs(peft, tok, PAIRS), logprobs(merged, tok, PAIRS)
    assert (want - logprobs(base, tok, PAIRS)).abs().mean() > 0.01   # the adapter matters
    assert (got - want).abs().max() < 1e-4


def test_a_merge_that_does_not_score_as_base_plus_adapter_is_refused(runs, tmp_path, capsys, monkeypatch):
    """The logprob check sees what the cosine cannot: the weights written (here a broken merge that leaves the adapter
    out) against the learner's policy on eval prompts, beyond the dtype's floor (0 in float32)."""
    from peft.tuners.lora import LoraModel

    monkeypatch.setattr(LoraModel, "merge_and_unload", lambda self, *a, **k: self.unload())
    argv = (runs["trained"], "--out", tmp_path / "m", "--merge", "--dtype", "float32", "--check-prompts", "2")
    assert export(*argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("export: refused: the float32 merge's logprobs are ") and "floor 0.00e+00" in err, err
    assert not (tmp_path / "m").exists()


def test_a_bf16_merge_of_an_early_small_adapter_is_refused_unless_forced(runs, tmp_path, capsys):
    out = tmp_path / "merged"
    fast = ("--check-prompts", "2")
    assert export(runs["early"], "--out", out, "--merge", "--dtype", "bfloat16", *fast) == 2
    cap = capsys.readouterr()
    err = cap.err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("export: refused: a bfloat16 merge keeps the trained delta of"), err
    assert "| q_proj | 0." in cap.out and not out.exists()   # the per-module report is printed; nothing written
    assert export(runs["early"], "--out", out, "--merge", "--dtype", "bfloat16", "--force", *fast) == 0
    card = (out / "README.md").read_text()
    assert "Written with --force despite: a bfloat16 merge keeps" in card
    # a late adapter (a delta well above half a bf16 step of the base weights) merges in bf16 and passes both checks
    assert export(runs["trained"], "--out", tmp_path / "late", "--merge", "--dtype", "bfloat16", *fast) == 0


def test_push_to_a_fake_hub_is_private_with_the_token_from_the_environment(runs, tmp_path, monkeypatch, capsys):
    import huggingface_hub.constants as hc

    run, out = runs["trained"], tmp_path / "out"
    with FakeHub() as hub:
        env = {**os.environ, "HF_ENDPOINT": hub.url, "HF_TOKEN": "hf_test_token", "HF_HUB_DISABLE_TELEMETRY": "1",
               "HF_HOME": str(tmp_path / "hf")}
        cmd = [sys.executable, "-m", "learner.export", str(run), "--out", str(out), "--push-to-hub", "me/grpo-tiny"]
        r = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stderr[-2000:]
        assert f"pushed to {hub.url}/me/grpo-tiny (private)" in r.stdout
        repo = hub.repos["me/grpo-tiny"]
        assert repo.private and repo.commits == 1
        assert repo.files == {p.name: p.read_bytes() for p in out.iterdir()}
        assert {s.token for s in hub.requests} == {"hf_test_token"}
        assert hub.validated[-1]["base_model"] == front_matter(out / "README.md")["base_model"]
        # in this process (huggingface_hub read HF_ENDPOINT when imported: its constants are pointed at the fake):
        # --public, to a repository that exists already
        monkeypatch.setattr(hc, "ENDPOINT", hub.url)
        monkeypatch.setattr(hc, "HF_TOKEN_PATH", str(tmp_path / "hf" / "token"))
        monkeypatch.setenv("HF_TOKEN", "hf_other")
        hub.repos["me/open"] = type(repo)(private=False)
        assert export(run, "--out", out, "--overwrite", "--push-to-hub", "me/open", "--public") == 0
        assert not hub.repos["me/open"].private and hub.repos["me/open"].files.keys() == repo.files.keys()
        assert hub.requests[-1].token == "hf_other"
        # no token: one line, exit 2, nothing sent, nothing written
        seen = len(hub.requests)
        monkeypatch.delenv("HF_TOKEN")
        capsys.readouterr()
        assert export(run, "--out", tmp_path / "none", "--push-to-hub", "me/grpo-tiny") == 2
        assert capsys.readouterr().err.strip() == ("export: --push-to-hub: no Hugging Face token (set HF_TOKEN, or run "
                                                   "`hf auth login`)")
        assert len(hub.requests) == seen and not (tmp_path / "none").exists()


def test_help():
    r = subprocess.run([sys.executable, "-m", "learner.export", "--help"], cwd=REPO, capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0 and "--merge" in r.stdout and "--push-to-hub" in r.stdout
