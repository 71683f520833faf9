"""The GPU configuration's numerics, end to end on CPU: a bf16 actor and a bf16 learner at the handoff's
learning rate (5e-6). The served-delta cosine is measured at every sync and reaches metrics.jsonl; by default
(``actor.serve_mode: auto`` -> adapter on bf16) it stays >= 0.99; forced merged serving rounds the small
delta away, and the run stops with one clear line instead of training on."""

from __future__ import annotations

import re
import socket

import pytest

from e2e_helpers import INLINE, Launch, e2e_overrides, every_load_checked, train_steps

pytestmark = pytest.mark.slow

BF16 = {"actor.dtype": "bfloat16", "learner.precision": "bf16", "learning_rate": 5e-6, "warmup_ratio": 0.0,
        "lr_scheduler_type": "constant", "num_generations": 4, "prompts_per_step": 2, "max_completion_length": 16,
        "sync.heartbeat_s": 0.5, "learner.checkpoint_every": 100, **INLINE}


def syncs(rows):
    return [r for r in rows if "sync/served_delta_cosine" in r]


def probes(rows):
    return [r for r in rows if "sync/logprob_gap" in r]


def test_bf16_run_serves_the_trained_delta_at_every_sync(tiny_model, tmp_path):
    over = e2e_overrides(tiny_model, tmp_path / "pairs", max_steps=6, **BF16, **{"learner.probe_every": 1})
    with Launch(tmp_path / "run", over, tmp_path / "launch.log") as la:
        assert la.wait(timeout=600) == 0, la.log()[-4000:]
        log = la.log()
    assert "adapter mode, bfloat16" in log  # auto picked adapter serving for the bf16 engine
    rows = la.metrics()
    assert train_steps(rows) == list(range(1, 7))
    got = syncs(rows)
    every_load_checked(rows, la.run_dir, 6)  # the first publication and every version the actor loaded
    assert all(r["sync/served_delta_cosine"] >= 0.99 for r in got), [r["sync/served_delta_cosine"] for r in got]
    # the wire's cosine is measured at each publication (v0-v6); with background acks a version's served cosine
    # can land in a later row, one without a publication, so the two are read from their own rows
    wires = [r["sync/wire_delta_cosine"] for r in rows if "sync/wire_delta_cosine" in r]
    assert len(wires) == 7 and min(wires) >= 0.99, wires
    trained = [r for r in rows if "train/grad_norm" in r]
    assert all(r["train/grad_norm"] > 0 for r in trained)  # the bf16 learner trained
    gaps = [r["sync/logprob_gap"] for r in probes(rows)]
    print("bf16 probe gaps, mean per token:", gaps, "max:", [r["sync/logprob_gap_max"] for r in probes(rows)])
    assert len(gaps) == 6 and max(gaps) < 0.1, gaps  # the bf16 floor, under the gate's bf16 limit


def test_merged_bf16_rounds_the_delta_away_and_the_run_stops(tiny_model, tmp_path):
    over = e2e_overrides(tiny_model, tmp_path / "pairs", max_steps=6, **BF16, **{"actor.serve_mode": "merged"})
    with Launch(tmp_path / "run", over, tmp_path / "launch.log") as la:
        assert la.wait(timeout=600) == 1, la.log()[-4000:]
        log = la.log()
    lines = [ln for ln in log.splitlines() if "sync failed: actor" in ln and "read back from its engine" in ln]
    assert lines and "actor.serve_mode: adapter fixes it" in lines[0]
    got = syncs(la.metrics())
    assert got[0]["sync/served_delta_cosine"] == 1.0  # v0: a fresh LoRA (B = 0) has no delta to lose
    # stopped at the first update's ack, which arrives in the background: at most the next step (on a batch of v0,
    # requested before v1 was published) ran before it
    assert got[-1]["sync/served_delta_cosine"] < 0.99 and got[-1]["step"] in (1, 2)
    assert train_steps(la.metrics()) in ([1], [1, 2])


def test_a_module_the_engine_stops_serving_stops_the_run_naming_actor_and_module(tiny_model, tmp_path, monkeypatch):
    """Float32, merged (the CPU default): v_proj's delta is left out inside the engine from the actor's second load
    on (``actor.readback``'s test fault). The readback sees it at that load (v1, or v2 when the actor took only the
    newest of two waiting updates) and the run stops in one line naming the actor, the version and v_proj; the clean
    runs above and in test_e2e_learning finish with the same check."""
    from actor.readback import FAULT_ENV

    monkeypatch.setenv(FAULT_ENV, "v_proj@2")
    over = e2e_overrides(tiny_model, tmp_path / "pairs", max_steps=4, num_generations=4, prompts_per_step=2,
                         max_completion_length=16, **{"learner.checkpoint_every": 100}, **INLINE)
    with Launch(tmp_path / "run", over, tmp_path / "launch.log") as la:
        assert la.wait(timeout=600) == 1, la.log()[-4000:]
        log = la.log()
        loaded = re.findall(r"serving v(\d+) \(loaded", (la.run_dir / "logs" / "actor-0.log").read_text())
    lines = [ln for ln in log.splitlines() if "sync failed: actor" in ln]
    assert lines and "read back from its engine" in lines[0] and "v_proj served at cosine 0.0000" in lines[0], lines
    # the actor's second load is the first with the fault: v1, or v2 when v1 and v2 were both waiting and the actor
    # took only the newest (latest-wins); the line names the actor and that version
    assert len(loaded) >= 2 and loaded[0] == "0" and loaded[1] in ("1", "2"), loaded
    assert f"actor {socket.gethostname()}-a0 serves v{loaded[1]}" in lines[0], (loaded, lines[0])
    got = syncs(la.metrics())
    assert got[-1]["sync/served_delta_cosine"] < 0.99  # (v0 passed: the line above names a later version)
    assert train_steps(la.metrics()) in ([1], [1, 2])  # v1's ack is checked in the background (see above)


@pytest.mark.parametrize("stale", [False, True])
def test_the_probe_gate_stops_a_run_whose_actor_samples_from_the_previous_version(tiny_model, tmp_path, monkeypatch,
                                                                                 stale):
    """Float32, adapter mode, a probe every step. With ``TUCANO2_FAULT_STALE_ADAPTER=2`` the actor's requests go out
    on the previous version's adapter from its second load (v1) on, while it reports and reads back v1: the weights
    check passes, the probe sees the sampler's logprobs off the learner's and the run stops naming the actor. The same
    run without the fault finishes every step with every gap under the float32 limit (0.01)."""
    from actor.loading import STALE_FAULT_ENV

    if stale:
        monkeypatch.setenv(STALE_FAULT_ENV, "2")
    over = e2e_overrides(tiny_model, tmp_path / "pairs", max_steps=4, num_generations=4, prompts_per_step=2,
                         max_completion_length=16, learning_rate=3e-3, warmup_ratio=0.0,
                         **{"learner.checkpoint_every": 100, "learner.probe_every": 1, "actor.serve_mode": "adapter"},
                         **INLINE)
    with Launch(tmp_path / "run", over, tmp_path / "launch.log") as la:
        assert la.wait(timeout=600) == int(stale), la.log()[-4000:]
        log = la.log()
    rows = la.metrics()
    gaps = [r["sync/logprob_gap"] for r in probes(rows)]
    assert all(r["sync/served_delta_cosine"] > 0.999999 for r in syncs(rows))  # the readback cannot see this fault
    if not stale:
        assert train_steps(rows) == [1, 2, 3, 4] and len(gaps) == 4 and max(gaps) < 0.01, gaps
        return
    lines = [ln for ln in log.splitlines() if "sync failed: actor" in ln]
    assert lines and "on the probe prompt" in lines[0] and "serves v1" in lines[0], lines
    assert f"actor {socket.gethostname()}-a0 serves v1" in lines[0], lines[0]
    assert train_steps(rows) == [1] and gaps[-1] > 0.01, gaps
