"""Learner processes: two gloo ranks (ZeRO-2) against one, SIGTERM checkpoints, the SFT warm-up, the bench."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from e2e_helpers import free_port, toy_overrides

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]


def learner_cmd(overrides: list[str]) -> list[str]:
    cmd = [sys.executable, "-m", "learner", "--config", "configs/smoke_cpu.yaml", "--rollouts", "local"]
    for o in overrides:
        cmd += ["--set", o]
    return cmd


def env_for(rank: int, world: int, port: int) -> dict:
    env = dict(
        os.environ,
        RANK=str(rank),
        WORLD_SIZE=str(world),
        LOCAL_RANK=str(rank),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        OMP_NUM_THREADS="1",
        TUCANO2_NO_PROGRESS="1",
        WANDB_MODE="disabled",
    )
    return env


def test_two_rank_zero2_step_matches_one_rank(tiny_model, tmp_path):
    extra = {
        "max_steps": 2,
        "learner.micro_batch_size": 3,
        "learning_rate": 5e-3,
        "sync.wire_dtype": "fp32",
        "learner.zero_stage": 2,
    }
    one = toy_overrides(tiny_model, tmp_path / "one", tmp_path / "pairs", **extra)
    two = toy_overrides(tiny_model, tmp_path / "two", tmp_path / "pairs", **extra)
    port = free_port()
    procs = [
        subprocess.Popen(
            learner_cmd(two),
            cwd=REPO,
            env=env_for(r, 2, port),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for r in range(2)
    ]
    outs = [p.communicate(timeout=240)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs[0][-2000:] + outs[1][-2000:]
    r = subprocess.run(
        learner_cmd(one),
        cwd=REPO,
        env=env_for(0, 1, free_port()),
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    a = load_file(tmp_path / "one" / "adapter" / "adapter_model.safetensors")
    b = load_file(tmp_path / "two" / "adapter" / "adapter_model.safetensors")
    assert set(a) == set(b)
    moved = max(float(a[k].abs().max()) for k in a if "lora_B" in k)
    assert moved > 1e-4  # it trained
    # Adam divides by sqrt(v): float-rounding differences of near-zero gradient entries are amplified,
    # so the adapters agree to a fraction of the update, while loss and grad norm agree to rounding.
    assert max(float((a[k] - b[k]).abs().max()) for k in a) < 0.02 * moved
    m1, m2 = (
        [
            json.loads(x)
            for x in (tmp_path / d / "metrics.jsonl").read_text().splitlines()
            if "train/loss" in x
        ]
        for d in ("one", "two")
    )
    for x, y in zip(m1, m2, strict=True):
        assert x["train/reward"] == y["train/reward"]  # same rollouts
        assert abs(x["train/grad_norm"] - y["train/grad_norm"]) < 1e-5 * x["train/grad_norm"]
        assert abs(x["train/loss"] - y["train/loss"]) < 1e-6
    # 8 completions over 2 ranks with micro-batches of 3: both ranks ran 2 backward passes; ZeRO-2 wrote
    # one optimizer partition per rank
    ds = tmp_path / "two" / "checkpoints" / "step-000002" / "ds" / "ds"
    assert sorted(p.name for p in ds.glob("*optim_states.pt")) == [
        "zero_pp_rank_0_mp_rank_00_optim_states.pt",
        "zero_pp_rank_1_mp_rank_00_optim_states.pt",
    ]
    lines = [json.loads(x) for x in (tmp_path / "two" / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in lines if "train/loss" in m] == [1, 2]


def test_sigterm_writes_a_checkpoint_and_exits_cleanly(tiny_model, tmp_path):
    over = toy_overrides(
        tiny_model, tmp_path / "run", tmp_path / "pairs", max_steps=500, **{"learner.checkpoint_every": 1000}
    )
    p = subprocess.Popen(
        learner_cmd(over),
        cwd=REPO,
        env=env_for(0, 1, free_port()),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    metrics = tmp_path / "run" / "metrics.jsonl"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and p.poll() is None:
        if metrics.exists() and "train/loss" in metrics.read_text():
            break
        time.sleep(0.2)
    p.send_signal(signal.SIGTERM)
    _, err = p.communicate(timeout=120)
    assert p.returncode == 0, err[-2000:]
    assert "stopped at step" in err and "SIGTERM" in err
    ckpts = list((tmp_path / "run" / "checkpoints").glob("step-*"))
    assert len(ckpts) == 1
    state = json.loads((ckpts[0] / "trainer_state.json").read_text())
    logged = [json.loads(x)["step"] for x in metrics.read_text().splitlines()]
    assert state["step"] == max(logged) and 1 <= state["step"] < 500
    assert (ckpts[0] / "adapter" / "adapter_model.safetensors").exists()


def test_sft_warmup_trains_on_answers_and_grpo_starts_from_it(tiny_model, tmp_path):
    from configs import load_config
    from learner.engine import load_tokenizer
    from learner.sft import encode_pair, run_sft

    tok = load_tokenizer(str(tiny_model))
    msgs = [{"role": "system", "content": "s"}, {"role": "user", "content": "pergunta"}]
    ids, labels = encode_pair(tok, msgs, "resposta certa", 1024)
    prompt_text = tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
    n_prompt = len(tok(prompt_text, add_special_tokens=False)["input_ids"])
    assert labels[:n_prompt] == [-100] * n_prompt and labels[n_prompt:] == ids[n_prompt:]
    assert "resposta certa" in tok.decode(ids[n_prompt:])

    over = toy_overrides(
        tiny_model,
        tmp_path / "run",
        tmp_path / "pairs",
        **{
            "sft.enabled": True,
            "sft.tasks": "[extraction, push]",
            "sft.max_steps": 12,
            "sft.epochs": 5,
            "sft.batch_size": 4,
            "sft.learning_rate": 3e-3,
            "max_steps": 1,
        },
    )
    cfg = load_config(REPO / "configs" / "smoke_cpu.yaml", over)
    out = run_sft(cfg, log=lambda *_: None)
    assert out == tmp_path / "run" / "sft" / "adapter" and (out / "adapter_config.json").exists()
    losses = [json.loads(x)["sft/loss"] for x in (out.parent / "metrics.jsonl").read_text().splitlines()]
    assert len(losses) == 12 and sum(losses[-3:]) / 3 < sum(losses[:3]) / 3
    sft = load_file(out / "adapter_model.safetensors")

    from learner.rollouts_local import HFLocalActor
    from learner.trainer import Trainer

    actor = HFLocalActor(cfg.model_id, lora_r=cfg.lora_r, lora_alpha=cfg.lora_alpha, wire_dtype="fp32")
    tr = Trainer(cfg, actor, actor)
    start = tr.policy.lora_tensors()
    assert set(start) == set(sft) and all(torch.equal(start[k], sft[k]) for k in sft)


def test_bench_tiny_reports_throughput(tmp_path):
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "learner.bench",
            "--shape",
            "tiny",
            "--steps",
            "1",
            "--json",
            str(tmp_path / "b.json"),
        ],
        cwd=REPO,
        env=env_for(0, 1, free_port()),
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    res = json.loads((tmp_path / "b.json").read_text())
    assert res["shape"] == "tiny" and res["fwd_bwd_tokens_per_s"] > 0 and res["tokens_per_step"] > 0
    assert res["completions"] == 8 and res["completion_len"] == 48
    assert "fwd_bwd_tokens_per_s" in r.stdout


def test_bench_compares_zero_advantage_skipping_side_by_side(tmp_path):
    r = subprocess.run([sys.executable, "-m", "learner.bench", "--shape", "tiny", "--steps", "1",
                        "--set", "prompts_per_step=4", "--zero-std-frac", "0,0.5", "--compare-skip",
                        "--json", str(tmp_path / "b.json")],
                       cwd=REPO, env=env_for(0, 1, free_port()), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    rows = json.loads((tmp_path / "b.json").read_text())
    by = {(x["zero_std_frac"], x["skip_zero_advantage"]): x for x in rows}
    assert set(by) == {(0.0, False), (0.0, True), (0.5, False), (0.5, True)}
    assert by[(0.5, True)]["skipped_completions"] == 2 * 4  # 2 of 4 groups flat, G = 4 in smoke_cpu
    assert by[(0.5, True)]["tokens_per_step"] < by[(0.5, False)]["tokens_per_step"]
    assert by[(0.0, True)]["tokens_per_step"] == by[(0.0, False)]["tokens_per_step"]
    assert "saved" in r.stdout
    bad = subprocess.run([sys.executable, "-m", "learner.bench", "--zero-std-frac", "1.5"], cwd=REPO,
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "--zero-std-frac" in bad.stderr


def test_bench_compares_grouped_and_masked_attention_on_the_same_rollouts(tmp_path):
    r = subprocess.run([sys.executable, "-m", "learner.bench", "--shape", "tiny", "--steps", "1", "--rounds", "1",
                        "--set", "learner.share_prompt=true", "--compare-attention",
                        "--json", str(tmp_path / "b.json")],
                       cwd=REPO, env=env_for(0, 1, free_port()), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    rows = json.loads((tmp_path / "b.json").read_text())
    assert [x["attention"] for x in rows] == ["sdpa", "tucano2_grouped"]
    assert rows[0]["tokens_per_step"] == rows[1]["tokens_per_step"] and all(x["step_s"] > 0 for x in rows)
    assert "tucano2_grouped / sdpa:" in r.stdout
    bad = subprocess.run([sys.executable, "-m", "learner.bench", "--set", "learner.share_prompt=false",
                          "--compare-attention"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "learner.share_prompt" in bad.stderr
    bad = subprocess.run([sys.executable, "-m", "learner.bench", "--set", "learner.share_prompt=true",
                          "--compare-attention", "--rounds", "0"], cwd=REPO, capture_output=True, text=True,
                         timeout=120)
    assert bad.returncode == 2 and "--rounds" in bad.stderr and "Traceback" not in bad.stderr, bad.stderr


def test_learner_without_actors_stops_after_its_start_timeout_on_every_rank(tiny_model, tmp_path):
    """The launchers start the learner with the actors; it waits for them to connect, on every rank (rank 0
    broadcasts what it sees), and stops with one line when none came within sync.actor_start_timeout_s."""
    over = toy_overrides(tiny_model, tmp_path / "run", tmp_path / "pairs", **{"sync.actor_start_timeout_s": 3})
    port = free_port()
    cmd = [a if a != "local" else "zmq" for a in learner_cmd(over)]
    procs = [subprocess.Popen(cmd, cwd=REPO, env=env_for(r, 2, port), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for r in range(2)]
    outs = [p.communicate(timeout=240) for p in procs]
    assert [p.returncode for p in procs] == [1, 1], outs
    line = ("learner: 0 of 1 actor(s) connected within 3 s of the learner's start-up (connected: none); not "
            "training. See the actors' logs (RUN_DIR/logs/actor-K.log); a slow engine start needs a longer "
            "--ready-timeout (sync.actor_start_timeout_s)")
    for _, err in outs:
        assert err.strip().splitlines()[-1] == line, err[-2000:]
    assert "learner: waiting for actors: 0 of 1 connected" in outs[0][0]
    assert not (tmp_path / "run" / "metrics.jsonl").exists() or "train/loss" not in (
        tmp_path / "run" / "metrics.jsonl").read_text()


def _faq_rows(n: int, offset: int) -> list[dict]:
    words = ["pix", "boleto", "frete", "cupom", "troca", "prazo"]
    return [{"task": "faq", "keyword": words[(i + offset) % len(words)],
             "prompt": [{"role": "user", "content": f"Responda em uma frase citando a palavra "
                                                    f"{words[(i + offset) % len(words)]} ({i + offset})."}]}
            for i in range(n)]


def test_a_task_of_your_own_trains_and_evaluates_with_your_reward(tiny_model, commerce_data, tmp_path):
    """rewards.custom maps a fifth task to a function in a file of the user's (TRL's reward signature): its rows
    carry their own column, the learner scores them with it beside a built-in task, logs eval/<task> and the
    report lists it; an import or a signature that does not fit is refused in one line before any model loads."""
    pairs = tmp_path / "pairs"
    pairs.mkdir()
    push = [json.loads(x) for x in (commerce_data / "pairs" / "train.jsonl").read_text().splitlines()
            if '"task": "push"' in x]
    for name, rows in (("train", _faq_rows(8, 0) + push[:8]), ("eval", _faq_rows(4, 100) + push[8:12])):
        (pairs / f"{name}.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    log = tmp_path / "calls.jsonl"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(Path(__file__).parent), str(REPO)]),
               CUSTOM_REWARD_LOG=str(log), TUCANO2_NO_PROGRESS="1", WANDB_MODE="disabled")

    def run(spec: str, run_dir: Path):
        over = [f"model_id={tiny_model}", f"run_dir={run_dir}", f"data.db_path={commerce_data / 'commerce.db'}",
                f"data.train_pairs={pairs / 'train.jsonl'}", f"data.eval_pairs={pairs / 'eval.jsonl'}",
                f"rewards.custom={{faq: '{spec}'}}", "data.tasks=[push, faq]", "max_steps=2",
                "eval.at_start=true", "eval.every=2", "eval.subset_size=8", "learner.probe_every=0",
                "max_completion_length=16", "num_generations=4", "prompts_per_step=2", "logging.wandb_mode=disabled"]
        return subprocess.run(learner_cmd(over), cwd=REPO, env=env, capture_output=True, text=True, timeout=600)

    bad = run("custom_reward:needs_a_label", tmp_path / "bad")
    assert bad.returncode == 2
    assert bad.stderr.strip().splitlines()[-1].startswith(
        "learner: rewards.custom.faq: custom_reward:needs_a_label must take TRL's reward arguments")
    missing = run("not_a_module_of_yours:f", tmp_path / "missing")
    assert missing.returncode == 2 and "learner: rewards.custom.faq: cannot import not_a_module_of_yours" in \
        missing.stderr
    assert not (tmp_path / "bad" / "checkpoints").exists() and not log.exists()  # refused before anything ran

    r = run("custom_reward:keyword_reward", tmp_path / "run")
    assert r.returncode == 0, r.stderr[-3000:]
    calls = [json.loads(x) for x in log.read_text().splitlines()]
    assert calls and all(c["task"] == ["faq"] * c["n"] and len(c["keyword"]) == c["n"] == c["prompts"]
                         for c in calls)
    assert {kw for c in calls for kw in c["keyword"]} <= {"pix", "boleto", "frete", "cupom", "troca", "prazo"}
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    evals = [m for m in rows if "eval/mean_reward" in m]
    assert len(evals) == 2 and all("eval/faq" in m and "eval/push" in m for m in evals)
    assert any(k.startswith("eval/push/") for k in evals[-1])  # the built-in reward's components beside it
    assert not any(k.startswith("eval/faq/") for k in evals[-1])
    from launch.report import main as report

    assert report([str(tmp_path / "run")]) == 0
    assert "| faq |" in (tmp_path / "run" / "report.md").read_text()
