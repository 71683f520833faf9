"""The GPU configuration's numerics, end to end on CPU: a bf16 actor and a bf16 learner at the handoff's
learning rate (5e-6). The served-delta cosine is measured at every sync and reaches metrics.jsonl; by default
(``actor.serve_mode: auto`` -> adapter on bf16) it stays >= 0.99; forced merged serving rounds the small
delta away, and the run stops with one clear line instead of training on."""

from __future__ import annotations

import pytest

from e2e_helpers import Launch, e2e_overrides, train_steps

pytestmark = pytest.mark.slow

BF16 = {"actor.dtype": "bfloat16", "learner.precision": "bf16", "learning_rate": 5e-6, "warmup_ratio": 0.0,
        "lr_scheduler_type": "constant", "num_generations": 4, "prompts_per_step": 2, "max_completion_length": 16,
        "sync.heartbeat_s": 0.5, "learner.checkpoint_every": 100}


def syncs(rows):
    return [r for r in rows if "sync/served_delta_cosine" in r]


def test_bf16_run_serves_the_trained_delta_at_every_sync(tiny_model, tmp_path):
    over = e2e_overrides(tiny_model, tmp_path / "pairs", max_steps=6, **BF16)
    with Launch(tmp_path / "run", over, tmp_path / "launch.log") as la:
        assert la.wait(timeout=600) == 0, la.log()[-4000:]
        log = la.log()
    assert "adapter mode, bfloat16" in log  # auto picked adapter serving for the bf16 engine
    rows = la.metrics()
    assert train_steps(rows) == list(range(1, 7))
    got = syncs(rows)
    assert [r["step"] for r in got] == list(range(0, 7))  # the first publication and every step's
    assert all(r["sync/served_delta_cosine"] >= 0.99 for r in got), [r["sync/served_delta_cosine"] for r in got]
    assert all(r["sync/wire_delta_cosine"] >= 0.99 for r in got)
    trained = [r for r in rows if "train/grad_norm" in r]
    assert all(r["train/grad_norm"] > 0 for r in trained)  # the bf16 learner trained


def test_merged_bf16_rounds_the_delta_away_and_the_run_stops(tiny_model, tmp_path):
    over = e2e_overrides(tiny_model, tmp_path / "pairs", max_steps=6, **BF16, **{"actor.serve_mode": "merged"})
    with Launch(tmp_path / "run", over, tmp_path / "launch.log") as la:
        assert la.wait(timeout=600) == 1, la.log()[-4000:]
        log = la.log()
    lines = [ln for ln in log.splitlines() if "sync failed: actor" in ln and "delta at cosine" in ln]
    assert lines and "use actor.serve_mode: adapter" in lines[0]
    got = syncs(la.metrics())
    assert got[0]["sync/served_delta_cosine"] == 1.0  # v0: a fresh LoRA (B = 0) has no delta to lose
    assert got[-1]["sync/served_delta_cosine"] < 0.99 and got[-1]["step"] == 1  # stopped at the first update
    assert train_steps(la.metrics()) == [1]
