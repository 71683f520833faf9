"""End to end, faults: a killed actor is restarted and the run loses no step, a killed learner
resumes from its last checkpoint, and Ctrl-C on the launcher leaves no process behind (nor vLLM's shared-memory
queues, nor the resource tracker's "leaked shared_memory" warning).

All through ``launch/cpu.sh`` (a real vLLM actor process, a real DeepSpeed learner process) on the
tiny model with the toy reward; ``metrics.jsonl`` must hold each training step exactly once. Actors load versions
in flight (the default ``actor.load_mode``), except the resumed learner's, which drains: the e2e run in drain mode.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import psutil
import pytest

from actor.shm import engine_segments
from e2e_helpers import INFLIGHT_LOAD, INLINE, Launch, e2e_overrides, train_steps
from launch.supervise import engine_chatter
from learner.checkpoint import list_checkpoints
from learner.metrics import read_metrics

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
    """Resume is exact whichever way the actor loads: the first learner's actor loads in flight (the default), the
    resumed one's drains. Completions long enough (8 x 40 tokens a prompt, at most 4 sequences at once) that the actor
    is still generating the next batch when a version arrives: the first run loads with requests running, the
    drained one never does."""
    steps, every = 8, 3
    run = tmp_path / "run"
    over = e2e_overrides(tiny_model, tmp_path / "pairs", max_steps=steps,
                         **{**SMALL, "num_generations": 8, "max_completion_length": 40, "actor.max_num_seqs": 4},
                         **{"learner.checkpoint_every": every})
    # actor and learner on separate cores (the learner is the slower of the two when vLLM's worker threads share its
    # core): each batch then outlasts a learner step, and versions reach an actor that is generating
    pins = ["--actor-cores", "0", "--learner-cores", "1"] if (os.cpu_count() or 1) >= 2 else []
    with Launch(run, over, tmp_path / "first.log", *pins) as la:
        la.wait_until(lambda: list_checkpoints(run) and last_step(la) >= every + 1, 240, "a checkpoint")
        la.processes()
        learner = la.component_pids("learner")
        assert learner
        killpg(learner[0])
        rc = la.wait(timeout=120)
        assert rc != 0, la.log()[-3000:]
        assert la.alive() == [], "the launcher left processes behind"
        if pins:  # one core: actor and learner take turns on it, and where a version lands is up to the scheduler
            assert INFLIGHT_LOAD.search(la.log()), "the first run's actor never loaded with requests running"
    ckpt = list_checkpoints(run)[-1]
    resumed_from = int(ckpt.name.split("-")[1])
    assert resumed_from >= every and resumed_from < steps
    # The resumed run's actor is killed by nothing: its engine runs inline (~15 s sooner). actor.load_mode drain:
    # every running request finishes before a load, and no completion spans two versions.
    with Launch(run, [*over, "actor.inline_engine=True", "actor.load_mode=drain"], tmp_path / "second.log",
                "--resume") as la:
        assert la.wait(timeout=300) == 0, la.log()[-4000:]
        log = la.log()
    assert f"step {resumed_from}/{steps}" in log  # the learner's start line: it resumed there
    # No step lost or repeated: the lines logged after the checkpoint by the killed learner were
    # dropped on resume and logged again.
    assert train_steps(la.metrics()) == list(range(1, steps + 1))
    after = [r for r in la.metrics() if "perf/step_s" in r and r["step"] > resumed_from]
    assert after and all(r["train/mixed_version_frac"] == 0 and r["train/token_staleness_max"] <= 1 for r in after)
    assert "loaded in" in log and not INFLIGHT_LOAD.search(log)


def test_ctrl_c_on_the_launcher_leaves_no_process(tiny_model, tmp_path):
    over = e2e_overrides(tiny_model, tmp_path / "pairs", max_steps=200, **SMALL,
                         **{"learner.checkpoint_every": 100})
    with Launch(tmp_path / "run", over, tmp_path / "launch.log") as la:
        la.wait_until(lambda: last_step(la) >= 2, 240, "step 2")
        procs = la.processes()
        assert la.component_pids("actor-0") and la.component_pids("learner")
        assert len(procs) >= 4  # launcher, actor (+ EngineCore), learner
        actor = [psutil.Process(pid) for pid in la.component_pids("actor-0")]
        engine = {c.pid for p in actor for c in p.children(recursive=True)}  # EngineCore and its worker
        queues = engine_segments(engine)  # vLLM's shared-memory queues between them (actor.shm)
        assert queues, "the actor's engine maps no shared-memory queue: is EngineCore a process of its own?"
        la.interrupt()  # the launcher stops each component's process group: EngineCore gets a SIGTERM of its own
        assert la.wait(timeout=120) == 130, la.log()[-3000:]
        left = la.alive({p.pid for p in procs})
        log = la.log()
    assert left == [], f"processes left after Ctrl-C: {left}"
    assert not [q for q in queues if (Path("/dev/shm") / q).exists()], "vLLM's shared-memory queues outlived the run"
    assert "leaked shared_memory" not in log, log[-3000:]
    # the console: vLLM's INFO records are in the actor's log file only (launch.supervise.engine_chatter)
    kept = (tmp_path / "run" / "logs" / "actor-0.log").read_text().splitlines()
    assert sum(engine_chatter(ln) for ln in kept) >= 5 and not [ln for ln in log.splitlines() if engine_chatter(ln)]


def test_resumed_learner_takes_over_live_actors(tiny_model, tmp_path, actor_kit):
    """SIGKILL the learner while its actor lives on, serving a version newer than the last checkpoint; a
    learner started with --resume takes the actor over (it loads the older version), the dead learner's
    groups are dropped, and the run finishes every step exactly once."""
    import subprocess
    import sys

    from configs import dump_config, load_config

    steps, every = 10, 4  # killed at step >= 5: three steps of slack before the next checkpoint (at 8)
    run = tmp_path / "run"
    over = e2e_overrides(tiny_model, tmp_path / "pairs", max_steps=steps, **SMALL,
                         **{"learner.checkpoint_every": every, "sync.max_staleness": 1, "run_dir": run}, **INLINE)
    cfg_path = tmp_path / "config.yaml"
    cfg_path.write_text(dump_config(load_config("configs/smoke_cpu.yaml", over)))
    actor = actor_kit.ActorProc(cfg_path, [], tmp_path / "actor.log", actor_id="live")
    env = dict(os.environ, TUCANO2_NO_PROGRESS="1", WANDB_MODE="disabled")
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)

    def learner(*extra):
        log = open(tmp_path / f"learner{len(extra)}.log", "w")  # noqa: SIM115 - closed below
        return subprocess.Popen([sys.executable, "-m", "learner", "--config", str(cfg_path), *extra],
                                stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True), log

    try:
        first, log1 = learner()
        deadline = time.monotonic() + 300
        while not (list_checkpoints(run) and last_step_of(run) >= every + 1):
            assert first.poll() is None, (tmp_path / "learner0.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "the first learner made no progress"
            time.sleep(0.2)
        killpg(first.pid)
        first.wait(30)
        log1.close()
        resumed_from = int(list_checkpoints(run)[-1].name.split("-")[1])
        assert resumed_from < last_step_of(run)  # the actor serves a version the checkpoint does not have
        second, log2 = learner("--resume", str(run))
        assert second.wait(timeout=300) == 0, (tmp_path / "learner2.log").read_text()[-4000:]
        log2.close()
        assert actor.proc.poll() is None  # the same actor process served both learners
    finally:
        actor.kill_all()
    rows = read_metrics(run)
    assert train_steps(rows) == list(range(1, steps + 1))
    after = [m for m in rows if "perf/step_s" in m and m["step"] > resumed_from]
    assert all(m["train/completions"] > 0 and m["train/refused_version"] == 0 for m in after)
    assert [m["train/version"] for m in after] == [float(s) for s in range(resumed_from + 1, steps + 1)]
    assert "a new learner" in actor.log()
    assert "sync/dropped_foreign_groups" in after[-1]


def last_step_of(run) -> int:
    steps = train_steps(read_metrics(run))
    return steps[-1] if steps else 0
