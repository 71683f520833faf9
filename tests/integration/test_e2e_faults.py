"""End to end, faults: a killed actor is restarted and the run loses no step, a killed learner
resumes from its last checkpoint, and Ctrl-C on the launcher leaves no process behind.

All through ``launch/cpu.sh`` (a real vLLM actor process, a real DeepSpeed learner process) on the
tiny model with the toy reward; ``metrics.jsonl`` must hold each training step exactly once.
"""

from __future__ import annotations

import os
import signal

import pytest

from learner.checkpoint import list_checkpoints
from e2e_helpers import Launch, e2e_overrides, train_steps

pytestmark = pytest.mark.slow

SMALL = {
    "learning_rate": 1e-3,
    "num_generations": 4,
    "prompts_per_step": 2,
    "max_completion_length": 16,
    "sync.heartbeat_s": 0.5,
}


def last_step(la: Launch) -> int:
    steps = train_steps(la.metrics())
    return steps[-1] if steps else 0


def killpg(pid: int, sig=signal.SIGKILL) -> None:
    try:
        os.killpg(os.getpgid(pid), sig)
    except ProcessLookupError:
        pass


def test_killed_actor_is_restarted_and_no_step_is_lost(tiny_model, tmp_path):
    steps = 10
    over = e2e_overrides(tiny_model, tmp_path / "pairs", max_steps=steps, **SMALL,
                         **{"learner.checkpoint_every": 100})
    with Launch(tmp_path / "run", over, tmp_path / "launch.log", "--restart-actors") as la:
        la.wait_until(lambda: last_step(la) >= 3, 240, "step 3")
        actor = la.component_pids("actor-0")
        assert actor, la.log()[-3000:]
        killed_at = last_step(la)
        killpg(actor[0])  # the actor process and its EngineCore: its own process group
        assert la.wait(timeout=300) == 0, la.log()[-4000:]
        log = la.log()
    assert "actor-0 exited with code -9; restarting it" in log
    assert killed_at < steps
    assert train_steps(la.metrics()) == list(range(1, steps + 1))
    assert la.alive() == []


def test_killed_learner_resumes_from_its_checkpoint(tiny_model, tmp_path):
    steps, every = 8, 3
    run = tmp_path / "run"
    over = e2e_overrides(tiny_model, tmp_path / "pairs", max_steps=steps, **SMALL,
                         **{"learner.checkpoint_every": every})
    with Launch(run, over, tmp_path / "first.log") as la:
        la.wait_until(lambda: list_checkpoints(run) and last_step(la) >= every + 1, 240, "a checkpoint")
        la.processes()
        learner = la.component_pids("learner")
        assert learner
        killpg(learner[0])
        rc = la.wait(timeout=120)
        assert rc != 0, la.log()[-3000:]
        assert la.alive() == [], "the launcher left processes behind"
    ckpt = list_checkpoints(run)[-1]
    resumed_from = int(ckpt.name.split("-")[1])
    assert resumed_from >= every and resumed_from < steps
    with Launch(run, over, tmp_path / "second.log", "--resume") as la:
        assert la.wait(timeout=300) == 0, la.log()[-4000:]
        log = la.log()
    assert f"step {resumed_from}/{steps}" in log  # the learner's start line: it resumed there
    # No step lost or repeated: the lines logged after the checkpoint by the killed learner were
    # dropped on resume and logged again.
    assert train_steps(la.metrics()) == list(range(1, steps + 1))


def test_ctrl_c_on_the_launcher_leaves_no_process(tiny_model, tmp_path):
    over = e2e_overrides(tiny_model, tmp_path / "pairs", max_steps=200, **SMALL,
                         **{"learner.checkpoint_every": 100})
    with Launch(tmp_path / "run", over, tmp_path / "launch.log") as la:
        la.wait_until(lambda: last_step(la) >= 2, 240, "step 2")
        procs = la.processes()
        assert la.component_pids("actor-0") and la.component_pids("learner")
        assert len(procs) >= 4  # launcher, actor (+ EngineCore), learner
        la.interrupt()
        assert la.wait(timeout=120) == 130, la.log()[-3000:]
        left = la.alive({p.pid for p in procs})
    assert left == [], f"processes left after Ctrl-C: {left}"
